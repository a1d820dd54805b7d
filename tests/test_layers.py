"""The import layers of docs/design.md ([tool.importlinter] in pyproject.toml) and lint (ruff).

`lint-imports` must keep every contract on the code as it is, and must break the contract when
an upward import or an import cycle is added (checked on a copy of the package).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("importlinter")
REPO = pathlib.Path(__file__).resolve().parent.parent


def _lint_imports(root: pathlib.Path) -> subprocess.CompletedProcess:
  """`lint-imports` on the package under `root` with `root`'s pyproject.toml."""
  env = dict(os.environ, PYTHONPATH=str(root))
  code = "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()"
  return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=root, env=env,
                        capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
  proc = _lint_imports(REPO)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert "0 broken" in proc.stdout


@pytest.fixture
def package_copy(tmp_path) -> pathlib.Path:
  shutil.copytree(REPO / "sbpose_jax", tmp_path / "sbpose_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
  return tmp_path


def _append(path: pathlib.Path, line: str) -> None:
  path.write_text(path.read_text() + f"\n{line}\n")


def test_an_upward_import_breaks_the_layers_contract(package_copy):
  _append(package_copy / "sbpose_jax" / "geometry.py", "from sbpose_jax.training import workdir")
  proc = _lint_imports(package_copy)
  assert proc.returncode != 0
  assert "Layers of docs/design.md (nothing imports upwards) BROKEN" in proc.stdout
  assert "sbpose_jax.geometry -> sbpose_jax.training.workdir" in proc.stdout


@pytest.mark.parametrize("line", ["import jax.numpy as jnp", "from sbpose_jax import models",
                                  "from sbpose_jax.weights import saved_model"])
def test_a_config_importing_jax_breaks_a_contract(package_copy, line):
  # Configs are reached through importlib (commands/config.py), which import-linter cannot
  # follow: their own imports are what the contracts check.
  _append(package_copy / "sbpose_jax" / "configs" / "demo.py", line)
  proc = _lint_imports(package_copy)
  assert proc.returncode != 0
  assert "BROKEN" in proc.stdout
  assert "sbpose_jax.configs.demo" in proc.stdout


def test_a_library_module_importing_the_config_loader_breaks_a_contract(package_copy):
  _append(package_copy / "sbpose_jax" / "training" / "loop.py",
          "from sbpose_jax.commands import config")
  proc = _lint_imports(package_copy)
  assert proc.returncode != 0
  assert "Only the commands import the config loader BROKEN" in proc.stdout


def test_every_module_has_a_layer():
  """A new top-level module or package must be placed in the layers contract."""
  import tomllib  # why: only this test reads pyproject.toml
  layers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
      "contracts"][0]["layers"]
  named = {m.strip() for line in layers for m in line.split("|")}
  package = REPO / "sbpose_jax"
  present = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
  present |= {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
  assert present - named == set(), f"modules without a layer: {sorted(present - named)}"


def test_an_import_cycle_breaks_the_acyclic_contract(package_copy):
  # Two sibling readers that no layer orders: only the cycle contract can catch them.
  readers = package_copy / "sbpose_jax" / "data" / "readers"
  _append(readers / "mpii_style.py", "from sbpose_jax.data.readers import coco_style")
  _append(readers / "coco_style.py", "from sbpose_jax.data.readers import mpii_style")
  proc = _lint_imports(package_copy)
  assert proc.returncode != 0
  assert "No import cycles between sibling modules BROKEN" in proc.stdout


def test_ruff_lint_is_clean():
  pytest.importorskip("ruff")
  proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-4000:]
