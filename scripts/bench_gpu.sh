#!/usr/bin/env bash
# One unattended accelerator run (<= 8 min) for the speed claims of issue 12: one JSON line per
# figure on stdout (scripts/bench_gpu.py says which). Works on a bare host that has
# jax/flax/torch: whatever else is missing (grain, array_record, tensorflow-datasets, ...) is
# installed from the wheels in .whl/ (build them with scripts/build_wheels.sh and carry the
# folder: the device tool's `carry: [".whl"]`).
#   scripts/bench_gpu.sh [--smoke] [--budget-s 470] [--config.a.b=v ...]
set -euo pipefail
cd "$(dirname "$0")/.."
budget=470
args=()
while (($#)); do
  case "$1" in
    --budget-s) budget="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
start=$(date +%s)
deadline=$((start + budget))
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# Import name -> wheel name of what the benchmark needs beyond jax/flax/torch.
missing=()
for pair in grain:grain array_record:array_record tensorflow_datasets:tensorflow_datasets \
    etils:etils immutabledict:immutabledict promise:promise tensorflow_metadata:tensorflow_metadata \
    toml:toml tree:dm_tree wrapt:wrapt cloudpickle:cloudpickle portpicker:portpicker \
    ml_collections:ml_collections psutil:psutil tqdm:tqdm cv2:opencv_python_headless \
    absl:absl_py google.protobuf:protobuf simplejpeg:simplejpeg; do
  mod=${pair%%:*}; whl=${pair#*:}
  python -c "import $mod" 2>/dev/null || missing+=("$whl")
done
if ((${#missing[@]})); then
  echo "{\"figure\": \"install\", \"from_wheels\": \"${missing[*]}\"}"
  if [ ! -d .whl ]; then
    echo "error: missing ${missing[*]} and no .whl/ folder (scripts/build_wheels.sh)" >&2
    exit 2
  fi
  pip install -q --no-index --find-links .whl --no-deps "${missing[@]}" >&2
fi

python scripts/bench_gpu.py --part torch --deadline $((start + budget * 2 / 5)) "${args[@]}"
python scripts/bench_gpu.py --part jax --deadline "$deadline" "${args[@]}"
echo "{\"figure\": \"done\", \"wall_s\": $(( $(date +%s) - start ))}"
