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

  python scripts/bench_detect.py --track [--sizes nano m] [--det-every 1 5]

`--track`: frames/s of the `track` loop with the detector (tracking/video_loop.py's
`track_video` + `DetectorBoxes`, what `python -m sbpose_jax.track --detector DIR` runs) on the
PoseTrack fixture clip (5 frames, 1280x720 mp4), the pose model of scripts/bench_track.py
(random ResNet-18 width 64 at 256x192, flip test). The detector has random weights saved with
score_thr 0 and max_per_img 5: five boxes every frame it runs, as five people would give. The
clip is tracked once to compile every shape, then timed (median of --repeats runs).
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
  parser.add_argument("--track", action="store_true",
                      help="frames/s of the track loop with the detector on the fixture clip")
  parser.add_argument("--det-every", type=int, nargs="+", default=[1, 5],
                      help="--track: run the detector every N frames (each N timed)")
  args = parser.parse_args(argv)
  # XLA reads its thread count when the CPU client starts: set before JAX is imported.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                             f"{'true' if args.threads > 1 else 'false'} "
                             f"intra_op_parallelism_threads={args.threads}")
  if args.track:
    return bench_track(args)
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


def bench_track(args) -> int:
  """frames/s of `track_video` with `DetectorBoxes` on the fixture clip (see the docstring)."""
  # why: JAX and the tracker are imported after the thread settings in main
  import dataclasses
  import logging
  import tempfile

  import jax

  sys.path.insert(0, str(REPO))
  from sbpose_jax import video
  from sbpose_jax.commands import config as config_lib
  from sbpose_jax.inference import detection
  from sbpose_jax.models import rtmdet
  from sbpose_jax.tracking import video_loop
  from sbpose_jax.weights import rtmdet_conversion, saved_model
  logging.getLogger("sbpose_jax").setLevel(logging.ERROR)
  clip = REPO.parent / "shared/fixtures/posetrack18/videos/000001_mpiinew_test"
  if not clip.is_dir():
    print("the fixture clip (../shared/fixtures/posetrack18) is absent", file=sys.stderr)
    return 1
  tmp = pathlib.Path(tempfile.mkdtemp())
  meta = saved_model.ModelMeta(depth=18, width=64, num_joints=17, dataset="posetrack18",
                               colour_order="rgb", source="bench")
  saved_model.save_model(tmp / "pose", saved_model.random_variables(meta, (256, 192), 0.5), meta)
  cfg, _ = config_lib.eval_config(config_lib.load("posetrack18_res50",
                                                  ["--config.model.dtype='float32'"]))
  cfg.track.det_score_thr = 0.0
  pose = video_loop.FramePoses(cfg, tmp / "pose")
  for size in args.sizes:
    arch = rtmdet.SIZES[size]
    shapes = rtmdet_conversion.abstract_variables(arch)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: (rng.normal(0, 0.02, s.shape) + (1.0 if len(s.shape) == 1 else 0.0)
                   ).astype(np.float32), shapes)
    settings = dataclasses.replace(rtmdet.default_settings(arch, 1), score_thr=0.0,
                                   max_per_img=5)
    det_dir = tmp / f"det_{size}"
    saved_model.save_model(det_dir, variables, rtmdet_conversion.DetectorMeta(
        arch=arch, settings=settings, source="bench"))
    det = detection.Detector.load(det_dir, batch_sizes=(1,))
    for every in args.det_every:
      def once(every=every, det=det):
        src = video.open_source(str(clip / "000001_mpiinew_test.mp4"))
        _, stats = video_loop.track_video(cfg, pose, src, tmp / "out", video_loop.DetectorBoxes(
            det, every), progress=False)
        return stats
      once()  # compile every shape
      runs = sorted((once() for _ in range(args.repeats)), key=lambda st: st["seconds"])
      st = runs[len(runs) // 2]
      n = st["frames"]
      print(json.dumps(dict(
          what="track --detector", detector=f"RTMDet-{size} random (5 boxes/run)",
          input=settings.input_size, det_every=every, pose="ResNet-18 w64 256x192 flip",
          clip="posetrack18 fixture 1280x720, 5 frames", threads=args.threads,
          machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
          frames_per_s=round(n / st["seconds"], 2),
          ms_per_frame={k: round(1000 * st[k] / n, 1)
                        for k in ("wait", "detect", "propose", "pose", "match", "write")})),
            flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
