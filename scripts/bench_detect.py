"""Detector images/s on this CPU: the JAX test time against the PyTorch reference.

  python scripts/bench_detect.py                       # RTMDet-nano at 320 and RTMDet-m at 640
  python scripts/bench_detect.py --sizes nano --batch 4 --threads 2

Both sides run the fixture photos (or random images when ../shared/fixtures is absent) with
the same random weights (converted from the reference's state dict: the same function), twice:
the network alone on the normalised batch, and the whole test time (resize + pad on the host,
normalisation, network, decoding, NMS). JAX: `inference.detection.detect_batch` (float32, the
parity setting, and bfloat16); PyTorch: tests/torch_rtmdet_reference.py's MMDetection pipeline
(float32, eval, no_grad). Threads: torch.set_num_threads(T) and XLA's CPU client limited to
T threads. Prints one JSON line per (size, runtime, network or pipeline).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import cv2
import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent


def _images(n: int):
  paths = sorted((REPO.parent / "shared" / "fixtures" / "coco").glob("*.jpg"))
  if paths:
    images = [cv2.imread(str(p)) for p in paths]
  else:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (480, 640, 3), np.uint8) for _ in range(4)]
  return [images[i % len(images)] for i in range(n)]


def _timed(fn, repeats: int) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", nargs="+", default=["nano", "m"])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  # XLA reads its thread count when the CPU client starts: set before JAX is imported.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                             f"{'true' if args.threads > 1 else 'false'} "
                             f"intra_op_parallelism_threads={args.threads}")
  # why: JAX, torch and the reference are imported after the thread settings above.
  import jax
  import torch

  sys.path.insert(0, str(REPO / "tests"))
  import torch_rtmdet_reference as ref

  from sbpose_jax.inference import detection
  from sbpose_jax.models import rtmdet
  from sbpose_jax.weights import rtmdet_conversion
  torch.set_num_threads(args.threads)
  images = _images(args.batch)
  for size in args.sizes:
    # A low classifier bias: few boxes reach NMS, whose reference is a Python loop (mmcv's is
    # C++), so the numbers are the network and the array work around it.
    model = ref.randomize(ref.build(size), seed=0, cls_bias=-6.0)
    sd = {k: v.numpy() for k, v in model.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    arch = rtmdet_conversion.infer_arch(sd)
    variables = jax.device_put(rtmdet_conversion.to_variables(sd, arch))
    settings = rtmdet.default_settings(arch, 1)
    common = dict(size=size, input=settings.input_size, batch=args.batch, threads=args.threads,
                  machine=platform.processor() or platform.machine(), cpus=os.cpu_count())

    def report(runtime, what, fn):
      seconds = _timed(fn, args.repeats)
      print(json.dumps(dict(common, runtime=runtime, what=what,
                            images_per_s=round(args.batch / seconds, 2))), flush=True)

    x, _ = ref.preprocess(images, settings.input_size)
    with torch.no_grad():
      report("torch float32", "network", lambda: model(x))
    report("torch float32", "pipeline", lambda: ref.detect(model, images, settings.input_size))
    for dtype in ("float32", "bfloat16"):
      spec = detection.DetectSpec(arch, settings, dtype)
      net = jax.jit(rtmdet.build(arch, dtype).apply)
      xj = jax.device_put(x.numpy().transpose(0, 2, 3, 1))
      report(f"jax {dtype}", "network", lambda: jax.block_until_ready(net(variables, xj)))

      def run(spec=spec):
        prepared = [detection.prepare(img, settings) for img in images]
        out = detection.detect_batch(
            variables, np.stack([p.padded for p in prepared]),
            np.stack([p.valid_hw for p in prepared]),
            np.stack([p.scale_factor for p in prepared]), spec)
        return jax.block_until_ready(out)
      report(f"jax {dtype}", "pipeline", run)
  return 0


if __name__ == "__main__":
  sys.exit(main())
