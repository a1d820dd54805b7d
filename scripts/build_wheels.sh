#!/usr/bin/env bash
# Downloads into .whl/ (gitignored) the wheels scripts/bench_gpu.sh installs on a bare GPU host
# that has jax/flax/torch but nothing else of ours. Carry the folder with the device tool
# (`carry: [".whl"]`, 64 MiB in all: opencv is left out unless WITH_CV2=1, as GPU images
# usually have it). Target Python defaults to 3.12 (the H100 host's); PY=3.11 to change it.
#   scripts/build_wheels.sh && du -sh .whl
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-3.12}
mkdir -p .whl
binary=(grain array_record dm-tree wrapt protobuf psutil simplejpeg)
[ "${WITH_CV2:-0}" = 1 ] && binary+=(opencv-python-headless)
pip download -q -d .whl --no-deps --only-binary=:all: --implementation cp --python-version "$py" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 "${binary[@]}"
# Pure-Python packages (promise ships only an sdist: build it into a wheel here).
pip download -q -d .whl --no-deps tensorflow-datasets etils immutabledict tensorflow-metadata \
  toml cloudpickle portpicker ml_collections tqdm absl-py
pip wheel -q -w .whl --no-deps promise
rm -f .whl/*.tar.gz .whl/*.zip
ls .whl
