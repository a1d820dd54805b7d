"""The README's first command in a brand-new virtual environment: no torch, no extras.

CI's machine keeps what was installed by hand between runs, so only a fresh venv shows a
runtime import that is not a declared dependency (Pillow was one: the demo died at its first
evaluation). This test installs the repository as the README says (`pip install -e .`) into a
new venv without system site packages, then runs a shortened demo through its evaluation, a
prediction and a checkpoint conversion there.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import venv

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(args, cwd, timeout=900):
  # As a new user's shell: none of the test session's cache settings (its size limit wants
  # filelock, which a fresh venv lacks); a compilation cache of its own, empty at first.
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "VIRTUAL_ENV")
         and not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = str(pathlib.Path(cwd) / ".jax_cache")
  proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, f"{' '.join(map(str, args))}\n{proc.stdout[-3000:]}\n" \
                               f"{proc.stderr[-6000:]}"
  return proc


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory) -> pathlib.Path:
  """A new venv with the repository installed as the README says; returns its python."""
  env_dir = tmp_path_factory.mktemp("fresh") / "venv"
  venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
  python = env_dir / "bin" / "python"
  _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", REPO],
       cwd=env_dir)
  return python


def test_fresh_venv_runs_demo_predict_and_convert(fresh_python, tmp_path):
  work = tmp_path / "user"
  work.mkdir()
  # Nothing of the test environment leaks in: no torch, and the package is the repository's.
  probe = _run([fresh_python, "-c", "import importlib.util as u, sbpose_jax; "
                "print(u.find_spec('torch') is None, sbpose_jax.__file__)"], cwd=work)
  no_torch, where = probe.stdout.split()
  assert no_torch == "True"
  assert pathlib.Path(where).resolve().is_relative_to(REPO)

  # 1. The README's first command, shortened: data generation, training, the final evaluation
  #    (which draws the sample picture into TensorBoard: Pillow) and model_last.
  demo = _run([fresh_python, "-m", "sbpose_jax.train", "--config", "demo", "--workdir", "wd",
               "--config.synthetic.num_train=16", "--config.synthetic.num_val=6",
               "--config.max_steps=3", "--no-progress"], cwd=work)
  assert "Traceback" not in demo.stderr and "Warning" not in demo.stderr, demo.stderr[-3000:]
  assert (work / "wd" / "model_last" / "meta.json").is_file()
  assert list((work / "wd" / "samples").glob("*.png"))
  assert list((work / "wd" / "tb").iterdir())
  assert '"kind": "eval/val"' in (work / "wd" / "metrics.jsonl").read_text()

  # 2. predict on the generated images with the trained workdir.
  images = sorted((work / "data" / "synthetic" / "val").glob("*.jpg"))[:2]
  assert images
  _run([fresh_python, "-m", "sbpose_jax.predict", "--config", "demo", "--checkpoint", "wd",
        *images, "--out-dir", "pred"], cwd=work)
  assert (work / "pred" / "predictions.json").is_file()
  assert len(list((work / "pred").glob("*.png"))) == len(images)

  # 3. convert a PyTorch checkpoint (written here, where torch is installed) without torch.
  pytest.importorskip("torch")
  sys.path.insert(0, str(REPO / "tests"))
  import torch_reference as tr  # why: only this test or script needs it
  model = tr.PoseResNet(18, 17, deconv_filters=(32, 32, 32), width=16)
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  tr.randomize(model, x, x)
  tr.save(model, "mm0", "zip", work / "res18_demo.pth")
  out = _run([fresh_python, "-m", "sbpose_jax.convert", "res18_demo.pth", "converted",
              "--config", "demo"], cwd=work)
  assert "ResNet-18" in out.stdout
  assert (work / "converted" / "meta.json").is_file()
