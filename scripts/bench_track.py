"""Frames/s of the tracking loop, split into decode, flow (+ box proposal), pose and matching.

  python scripts/bench_track.py [--depth 18 --width 64] [--synthetic-frames 20]

Two inputs: the PoseTrack fixture clip (../shared/fixtures, 5 frames of 1280x720 mp4; no boxes:
the whole first frame, then flow-propagated boxes) and a synthetic clip of moving stick people
(640x480, 3 people, ground-truth boxes as detections). The pose model has random weights (speed
does not depend on them) at the posetrack18_res50 input size; each frame is one jitted batch with
the flip test. Decoding is timed sequentially here (`track` runs it in a background thread).
Compilation is excluded: every batch size is warmed up first.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import cv2
import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sbpose_jax.commands import config as config_lib  # noqa: E402
from sbpose_jax import keypoints, video  # noqa: E402
from sbpose_jax.weights import saved_model as sm  # noqa: E402
from sbpose_jax.tracking import video_loop  # noqa: E402
from sbpose_jax.data import synthetic  # noqa: E402
from sbpose_jax.tracking import tracker  # noqa: E402


def save_random_model(path, depth, width):
  meta = sm.ModelMeta(depth=depth, width=width, num_joints=17, dataset="posetrack18",
                      colour_order="rgb", source="bench")
  # A positive bias: joint scores above the tracking threshold, so tracks exist and flow runs
  # as it would on real people.
  sm.save_model(path, sm.random_variables(meta, (256, 192), bias=0.5), meta)


def synthetic_clip(path, n, size=(640, 480), people=3, seed=0):
  """A mp4 of `people` stick figures crossing the frame, and their boxes per frame."""
  rng = np.random.default_rng(seed)
  w, h = size
  base = [synthetic.sample_pose(rng, 260.0, (120.0 + 200 * i, 300.0), 0.0)[0]
          for i in range(people)]
  vel = [np.array([rng.uniform(-4, 4), rng.uniform(-1, 1)]) for _ in range(people)]
  boxes, poses = {}, {}
  with video.VideoWriter(str(path), 30.0) as wr:
    for t in range(n):
      img = np.full((h, w, 3), 80, np.uint8)
      bs = []
      for i, (p, v) in enumerate(zip(base, vel)):
        j = p + v * t
        for a, b in keypoints.get("coco").skeleton:
          cv2.line(img, tuple(np.rint(j[a]).astype(int)), tuple(np.rint(j[b]).astype(int)),
                   (60 + 60 * i, 200 - 50 * i, 120), 5)
        lo, hi = j.min(0) - 10, j.max(0) + 10
        bs.append([*lo, *hi])
      wr.write(img)
      boxes[t] = (np.asarray(bs, np.float32), np.full(len(bs), 0.9, np.float32))
      poses[t] = np.stack([p + v * t for p, v in zip(base, vel)])
  return boxes, poses


def gt_like(kp, boxes, gt):
  """The tracker gets each box's nearest ground-truth pose (score 0.9) instead of the random
  network's output, so that the tracking state is that of real people; the network still runs."""
  c = (boxes[:, :2] + boxes[:, 2:]) / 2
  who = np.argmin(np.linalg.norm(c[:, None] - gt.mean(1)[None], axis=-1), axis=1)
  return np.concatenate([gt[who], np.full(gt[who].shape[:2] + (1,), 0.9)], -1)


def run(cfg, pose, src, boxes, similarity, gt=None):
  s = tracker.TrackSettings.from_config(cfg.track)
  trk = tracker.Tracker(tracker.TrackSettings(**{**s.__dict__, "similarity": similarity}),
                        keypoints.get("posetrack18").sigmas_array)
  t = dict(decode=0.0, flow=0.0, pose=0.0, match=0.0)
  n = 0
  it = src.frames()
  while True:
    t0 = time.perf_counter()
    fr = next(it, None)
    if fr is None:
      break
    t1 = time.perf_counter()
    det = boxes.get(fr.index) if boxes is not None else (None, None)
    bx, sc = trk.propose(fr.image, *det)
    t2 = time.perf_counter()
    kp = pose(fr.image, bx, sc)
    t3 = time.perf_counter()
    if gt is not None:
      kp = gt_like(kp, bx, gt[fr.index])
    trk.update(kp, bx, sc)
    t4 = time.perf_counter()
    for k, a, b in (("decode", t0, t1), ("flow", t1, t2), ("pose", t2, t3), ("match", t3, t4)):
      t[k] += b - a
    n += 1
  return n, t


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--depth", type=int, default=18)
  ap.add_argument("--width", type=int, default=64)
  ap.add_argument("--synthetic-frames", type=int, default=20)
  ap.add_argument("--similarity", default="flow")
  args = ap.parse_args()
  cfg, _ = config_lib.eval_config(config_lib.load("posetrack18_res50",
                                                  ["--config.model.dtype='float32'"]))
  tmp = pathlib.Path(tempfile.mkdtemp())
  save_random_model(tmp / "model", args.depth, args.width)
  pose = video_loop.FramePoses(cfg, tmp / "model")
  for b in (1, 2, 4, 8):                                   # compile every bucket first
    img = np.zeros((480, 640, 3), np.uint8)
    pose(img, np.tile([[10, 10, 100, 200]], (b, 1)).astype(np.float32), np.ones(b))
  print(f"device: {jax.devices()[0].device_kind}, model: ResNet-{args.depth} width "
        f"{args.width} at {tuple(cfg.data.input_size)}, flip test, flow preset "
        f"{cfg.track.flow_preset}, similarity {args.similarity}")
  inputs = []
  clip = REPO.parent / "shared/fixtures/posetrack18/videos/000001_mpiinew_test"
  if clip.is_dir():
    inputs.append(("fixture clip 1280x720 (mp4)", video.open_source(
        str(clip / "000001_mpiinew_test.mp4")), None, None))
  syn = tmp / "synthetic.mp4"
  boxes, gt = synthetic_clip(syn, args.synthetic_frames)
  inputs.append((f"synthetic 640x480, 3 people, {args.synthetic_frames} frames",
                 video.open_source(str(syn)), boxes, gt))
  print("| input | frames | frames/s | decode ms | flow ms | pose ms | match ms | "
        "(flow + match) / pose |")
  print("|---|---|---|---|---|---|---|---|")
  for name, src, bx, g in inputs:
    n, t = run(cfg, pose, src, bx, args.similarity, g)
    tot = sum(t.values())
    ms = {k: 1000 * v / n for k, v in t.items()}
    print(f"| {name} | {n} | {n / tot:.1f} | {ms['decode']:.1f} | {ms['flow']:.1f} | "
          f"{ms['pose']:.1f} | {ms['match']:.2f} | "
          f"{100 * (t['flow'] + t['match']) / t['pose']:.1f}% |")


if __name__ == "__main__":
  main()
