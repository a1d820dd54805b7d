#!/usr/bin/env bash
# The README's test command: installs what the tests need where it is missing, then runs pytest.
#   bash scripts/test.sh [pytest args]
# Works in any Python environment (a fresh venv included); PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

# torch is only for the PyTorch parity tests; the pinned version is the CPU build here.
"$PY" -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"
# The package and its test extra (quick when already satisfied).
pip_install -e ".[test]"
# jax2onnx (ONNX export tests) without its dependencies: it pins orbax-checkpoint<0.11.37; what
# its conversion imports comes with the `export` extra (pyproject.toml).
"$PY" -c "import jax2onnx" 2>/dev/null || pip_install --no-deps "jax2onnx==0.17.1"
# xtcocotools (COCO-WholeBody and CrowdPose metrics): its wheel breaks under numpy 2, so build it
# from source; a venv's setuptools 65 has no bdist_wheel, hence the upgrade first.
if ! "$PY" -c "import xtcocotools.cocoeval" 2>/dev/null; then
  pip_install -U setuptools wheel cython numpy
  pip_install --no-build-isolation --no-binary xtcocotools "xtcocotools==1.14.3"
fi

# Every core (at most 4): pytest-xdist runs the test files in worker processes, one file per
# worker at a time (module fixtures are built once). TEST_WORKERS=0 runs them in this process.
exec "$PY" -m pytest -q -n "${TEST_WORKERS:-auto}" --maxprocesses 4 --dist loadfile "$@"
