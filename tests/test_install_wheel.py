"""A non-editable install used from another folder: the named configs ship with the package.

Builds a wheel of the package, installs it (no dependencies) into a new venv that sees the site
packages of the interpreter running the tests (so jax & co. need no download), and loads
`--config coco_res50` from a folder outside the repository, checking that `sbpose_jax` is the
venv's copy.

"The interpreter running the tests" may itself be a venv's (the README's `bash scripts/test.sh`
in a brand-new venv): `system_site_packages=True` would show the inner venv the *base*
interpreter's packages instead, which a venv user does not have. So the inner venv gets a `.pth`
file naming the running interpreter's site-packages folders, after its own: plain folder lines,
so the `.pth` files inside them (an editable install of this repository among them) stay
unprocessed and `sbpose_jax` can only come from the wheel.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import site
import subprocess
import sys
import sysconfig
import venv

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(args, cwd, check=True):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600)
  if check:
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc


def _site_packages_of_this_interpreter() -> list[str]:
  """The site-packages folders on this interpreter's path (a venv's, or the system's)."""
  candidates = [*site.getsitepackages(), sysconfig.get_path("purelib"),
                sysconfig.get_path("platlib")]
  if site.ENABLE_USER_SITE:
    candidates.append(site.getusersitepackages())
  on_path = {os.path.realpath(p) for p in sys.path if p}
  out = []
  for p in candidates:
    real = os.path.realpath(p)
    if real in on_path and os.path.isdir(real) and real not in out:
      out.append(real)
  return out


def test_wheel_install_loads_named_configs_from_any_folder(tmp_path):
  # Build from a copy, so that the repository gets no build/ or egg-info.
  src = tmp_path / "src"
  shutil.copytree(REPO / "sbpose_jax", src / "sbpose_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, src / name)
  _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "--disable-pip-version-check", "-w", tmp_path / "dist", src], cwd=tmp_path)
  wheel, = (tmp_path / "dist").glob("sbpose_jax-*.whl")
  env_dir = tmp_path / "venv"
  # No pip of its own: the running interpreter's pip (seen through the .pth) installs into it.
  venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
  python = env_dir / "bin" / "python"
  outer = _site_packages_of_this_interpreter()
  assert outer, sys.path
  purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
  inner = pathlib.Path(_run([python, "-c", purelib], cwd=tmp_path).stdout.strip())
  assert inner.resolve().is_relative_to(env_dir.resolve()), inner
  (inner / "_outer_site_packages.pth").write_text("".join(f"{p}\n" for p in outer))
  _run([python, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
        wheel], cwd=tmp_path)

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  probe = _run([python, "-c", "import sbpose_jax; from sbpose_jax.commands import config; "
                "c = config.load('coco_res50'); print(sbpose_jax.__file__); "
                "print(c.name, c.model.depth, len(config.names()))"], cwd=elsewhere)
  where, loaded = probe.stdout.strip().splitlines()
  assert pathlib.Path(where).resolve().is_relative_to(env_dir.resolve())
  assert not pathlib.Path(where).resolve().is_relative_to(REPO)
  name, depth, count = loaded.split()
  assert (name, depth) == ("coco_res50", "50") and int(count) >= 30

  # A command with --config NAME: gets past the config to the missing results file.
  cmd = _run([python, "-m", "sbpose_jax.evaluate", "--config", "coco_res50", "--results",
              "missing.json", "--out-dir", "out"], cwd=elsewhere, check=False)
  assert cmd.returncode == 2 and "--results file not found" in cmd.stderr, cmd.stderr

  # The same through the installed console script ([project.scripts]): same message and status.
  script = _run([env_dir / "bin" / "sbpose-evaluate", "--config", "coco_res50", "--results",
                 "missing.json", "--out-dir", "out"], cwd=elsewhere, check=False)
  assert script.returncode == 2 and "--results file not found" in script.stderr, script.stderr
