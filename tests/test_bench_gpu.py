"""scripts/bench_gpu.sh runs end to end (on the CPU, with --smoke) and prints every figure."""
import json
import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_bench_gpu_smoke():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([str(REPO / "scripts" / "bench_gpu.sh"), "--smoke", "--budget-s", "900"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
  figures = [l["figure"] for l in lines]
  assert "skipped" not in " ".join(map(str, lines))
  assert figures.count("train_step") == 2 and figures.count("torch_step") == 3
  paths = {(l["path"], l["workers"]) for l in lines if l["figure"] == "end_to_end"}
  assert paths == {(p, w) for p in ("full", "device_planes", "device", "packed") for w in (0, 1)}
  assert all(l["img_per_s"] > 0 for l in lines if "img_per_s" in l)
  assert figures[-4:] == ["eval", "detect", "pipeline", "done"]
  pipeline = next(l for l in lines if l["figure"] == "pipeline")
  assert pipeline["people"] == 5 and pipeline["ms_per_frame"] > 0
