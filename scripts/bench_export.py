"""Boxes per second of the exported pipeline: ONNX Runtime (CPU) against JAX (CPU).

  python scripts/bench_export.py                        # ResNet-50, 256x192, flip test, batch 8
  python scripts/bench_export.py --depth 18 --width 16 --input-size 48 64   # a quick check

Both run the same function (uint8 crops + centre/scale → keypoints, scores; normalisation,
flip test and 'default' decoding inside) with random weights: JAX jitted on the training form
of the network, ONNX Runtime on the jax2onnx export of `models.export_form`. Prints one JSON
line per runtime (and the largest keypoint difference between them). Needs the `export` extra.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from sbpose_jax import exporting, keypoints, models

from sbpose_jax.inference import pose as inference


def random_variables(model, input_wh):
  """Random float32 variables (no init compile): N(0, 1/fan_in) kernels, mild BN statistics."""
  w, h = input_wh
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, h, w, 3)))
  rng = np.random.default_rng(0)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "var" in name or name.endswith("['scale']"):
      return rng.uniform(0.8, 1.2, s.shape).astype(np.float32)
    if "mean" in name or name.endswith("['bias']"):
      return rng.normal(0, 0.05, s.shape).astype(np.float32)
    return (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _time(fn, args, seconds: float) -> tuple[float, int]:
  fn(*args)                                           # warm-up (compile / session init)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    fn(*args)
    n += 1
  return (time.perf_counter() - t0) / n, n


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--depth", type=int, default=50)
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--input-size", type=int, nargs=2, default=(192, 256), metavar=("W", "H"))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seconds", type=float, default=5.0, help="timing per runtime")
  p.add_argument("--no-flip", action="store_true")
  args = p.parse_args(argv)
  input_wh = tuple(args.input_size)
  model = models.PoseResNet(depth=args.depth, num_joints=17, width=args.width,
                            precision="highest")
  variables = random_variables(model, input_wh)
  w, h = input_wh
  settings = inference.InferenceSettings(
      flip=not args.no_flip, shift=True, decode="default", blur_kernel=11,
      flip_index=tuple(int(i) for i in keypoints.get("coco").flip_index),
      heatmap_wh=(w // 4, h // 4), data_order="rgb", model_order="rgb")
  jax_fn = jax.jit(exporting.keypoints_function(model, variables, settings, input_wh, "image"))
  t0 = time.perf_counter()
  onnx_bytes = exporting.to_onnx(exporting.keypoints_function(models.export_form(model), variables,
                                                        settings, input_wh, "image"),
                              input_wh, "image")
  convert_s = time.perf_counter() - t0
  ort_run = exporting.onnx_runner(onnx_bytes)
  crops = exporting.check_crops(input_wh, args.batch)
  inputs = exporting.check_args(crops, "image")
  rows = []
  base = dict(depth=args.depth, width=args.width, input_wh=list(input_wh), batch=args.batch,
              flip=not args.no_flip, cpu=platform.processor() or platform.machine(),
              cores=os.cpu_count(), jax=jax.__version__)
  for name, fn in (("jax", lambda *a: jax.block_until_ready(jax_fn(*a))), ("onnxruntime",
                                                                         ort_run)):
    sec, n = _time(fn, inputs, args.seconds)
    rows.append(dict(base, runtime=name, batches=n, ms_per_batch=round(sec * 1e3, 1),
                     boxes_per_s=round(args.batch / sec, 2)))
  got, want = ort_run(*inputs), jax_fn(*inputs)
  diff = float(np.max(np.abs(np.asarray(got[0]) - np.asarray(want[0]))))
  for r in rows:
    r.update(onnx_convert_s=round(convert_s, 1), max_keypoint_diff_image_px=diff)
    print(json.dumps(r))
  return rows


if __name__ == "__main__":
  main()
