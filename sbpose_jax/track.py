"""Track people's poses through a video (the paper's tracker, docs/tracking.md).

  python -m sbpose_jax.track --config posetrack18_res50 --checkpoint models/res50_posetrack18 \
      clip.mp4 --out-dir out/ [--boxes dets.json] [--similarity iou|oks|flow] [--frames] [--eval]

INPUT is a video file (any container FFmpeg reads), a folder of frames (sorted by name) or a
PoseTrack18 annotation file (its frames; `--eval` then scores the result against it). Boxes per
frame: `--boxes` (a COCO detection-results list whose `image_id` is the PoseTrack image id or the
0-based frame number, or a dict {frame number or file name: [[x, y, w, h(, score)], ...]}) plus
boxes propagated from the previous frame's poses by optical flow; without `--boxes`, propagation
alone, starting from the whole first frame. Writes O/<name>.json (PoseTrack18 results: track ids,
joints, scores), O/<name>.mp4 (skeletons coloured by track id) and, with --frames, O/<name>/*.png.
Tracking settings are the config's `track.*` (override with --config.track.KEY=VALUE).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Sequence

import cv2
import numpy as np

from sbpose_jax import cli
from sbpose_jax import config as config_lib
from sbpose_jax import keypoints


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m sbpose_jax.track",
                              description=__doc__.split("\n\n")[0],
                              epilog="Any --config.KEY=VALUE argument overrides a config field.")
  p.add_argument("input", help="video file, folder of frames, or PoseTrack18 annotation json")
  p.add_argument("--config", required=True, help="config name (configs/NAME.py) or path")
  p.add_argument("--checkpoint", required=True, help="saved model directory or training workdir")
  p.add_argument("--out-dir", required=True)
  p.add_argument("--boxes", help="person detections (COCO results list or per-frame dict)")
  p.add_argument("--similarity", choices=("iou", "oks", "flow"),
                 help="matching similarity (default: the config's track.similarity)")
  p.add_argument("--frames", action="store_true", help="also write one PNG per frame")
  p.add_argument("--eval", action="store_true",
                 help="score MOTA and AP against INPUT (a PoseTrack18 annotation file)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
  p.add_argument("--kpt-thr", type=float, default=None,
                 help="joints drawn above this score (default track.kpt_thr)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  return p


# ----------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------

def read_boxes(path: str, source) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """Detections → {frame index: ((N, 4) x1 y1 x2 y2, (N,) scores)}."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--boxes file not found: {path}")
  try:
    data = json.loads(pathlib.Path(path).read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"--boxes {path} is not valid json: {e}") from e
  index_of: dict = {}
  for i in range(source.num_frames):
    index_of[i] = i
  for i, name in enumerate(source.files):
    index_of[name] = index_of[pathlib.Path(name).name] = index_of[pathlib.Path(name).stem] = i
  for i, im in enumerate(source.images_meta):
    index_of[im["id"]] = i
  rows: dict[int, list] = {}
  try:
    if isinstance(data, list):
      for d in data:
        if d.get("category_id", 1) != 1:
          continue
        key = d.get("image_id", d.get("file_name"))
        if key in index_of:
          rows.setdefault(index_of[key], []).append(list(d["bbox"][:4]) + [d.get("score", 1.0)])
    elif isinstance(data, dict):
      for key, boxes in data.items():
        k = int(key) if str(key).isdigit() and int(key) in index_of else key
        if k in index_of:
          for b in boxes:
            rows.setdefault(index_of[k], []).append(list(b[:4]) + [b[4] if len(b) > 4 else 1.0])
    else:
      raise TypeError
  except (KeyError, TypeError, IndexError) as e:
    raise ValueError(f"--boxes {path}: expected a COCO detection-results list or a dict "
                     "{frame: [[x, y, w, h(, score)], ...]}") from e
  out = {}
  for i, r in rows.items():
    a = np.asarray(r, np.float32).reshape(-1, 5)
    out[i] = (np.concatenate([a[:, :2], a[:, :2] + a[:, 2:4]], 1), a[:, 4])
  return out


# ----------------------------------------------------------------------------------------------
# Poses: one jitted batch per frame, the evaluation's numerics
# ----------------------------------------------------------------------------------------------

# Few compilations, little waste: a frame's boxes are padded to the next of these.
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


class PoseModel:
  """`PoseModel(cfg, checkpoint)(frame_bgr, boxes_xyxy, scores)` → (N, K, 3) image x, y, score.

  Through `api.PoseEstimator`: the crops, batches and test-time numerics of `evaluate`.
  """

  def __init__(self, cfg, checkpoint_path):
    from sbpose_jax import api  # pylint: disable=import-outside-toplevel  # JAX: not for --help
    self.est = api.PoseEstimator.from_config(cfg, checkpoint_path, batch_sizes=BATCH_SIZES)
    self.colour_order = cfg.data.colour_order
    self.num_joints = keypoints.get(cfg.data.dataset).num_joints

  def __call__(self, frame_bgr: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    del scores  # the tracker rescoring uses them; the poses do not
    if len(boxes) == 0:
      return np.zeros((0, self.num_joints, 3), np.float32)
    img = frame_bgr if self.colour_order == "bgr" else cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    xyxy = np.asarray(boxes, np.float64).reshape(-1, 4)
    crops, center, scale = self.est.crops(img, np.concatenate([xyxy[:, :2],
                                                              xyxy[:, 2:] - xyxy[:, :2]], 1))
    return self.est.predict_crops(crops, center, scale)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

def results_json(source, info, frames_out: list[list[dict]]) -> dict:
  """PoseTrack18 results: the input's images (ids, file names) and one annotation per person."""
  cat = {"supercategory": "person", "id": 1, "name": "person",
         "keypoints": list(info.joint_names), "skeleton": [[a + 1, b + 1] for a, b in
                                                           info.skeleton]}
  images, anns = [], []
  for i, people in enumerate(frames_out):
    if source.images_meta:
      im = source.images_meta[i]
      images.append({k: im[k] for k in ("id", "file_name", "frame_id", "vid_id") if k in im})
    else:
      images.append({"id": i, "file_name": source.files[i] if source.files
                     else f"frame_{i:06d}.jpg", "frame_id": i})
    for p in people:
      k = np.asarray(p["keypoints"], np.float64)
      b = np.asarray(p["box"], np.float64)
      anns.append({"image_id": images[-1]["id"], "category_id": 1, "track_id": p["track_id"],
                   "keypoints": np.round(k, 2).reshape(-1).tolist(),
                   "scores": np.round(k[:, 2], 4).tolist(), "score": round(p["score"], 4),
                   "bbox": np.round([b[0], b[1], b[2] - b[0], b[3] - b[1]], 2).tolist()})
  return {"images": images, "annotations": anns, "categories": [cat]}


def with_flow(frames, flow_fn):
  """Frames paired with the flow from the previous frame (None for the first): run inside the
  decoding thread, so the flow of frame k+1 is computed while the model works on frame k."""
  prev = None
  for fr in frames:
    yield fr, (None if prev is None else flow_fn(prev, fr.image))
    prev = fr.image


class _Outputs:
  """The annotated video, the optional PNGs and the progress bar of one input."""

  def __init__(self, out: pathlib.Path, source, skeleton, kpt_thr, write_frames, progress):
    from sbpose_jax import video  # pylint: disable=import-outside-toplevel
    self.png_dir = out / source.name if write_frames else None
    if self.png_dir is not None:
      self.png_dir.mkdir(exist_ok=True)
    self.writer = video.VideoWriter(str(out / f"{source.name}.mp4"), source.fps)
    self.skeleton, self.kpt_thr = skeleton, kpt_thr
    self.bar, self.start, self.count = None, time.perf_counter(), 0
    if progress:
      import tqdm  # pylint: disable=import-outside-toplevel
      self.bar = tqdm.tqdm(total=source.num_frames or None, unit="frame", desc=source.name)

  def add(self, fr, people) -> None:
    from sbpose_jax.tracking import draw  # pylint: disable=import-outside-toplevel
    drawn = draw.draw_tracks(fr.image, people, self.skeleton, self.kpt_thr)
    self.writer.write(drawn)
    if self.png_dir is not None:
      cv2.imwrite(str(self.png_dir / f"{pathlib.Path(fr.name).stem}.png"), drawn)
    self.count += 1
    if self.bar is not None:
      self.bar.update(1)
      self.bar.set_postfix(fps=f"{self.count / (time.perf_counter() - self.start):.1f}")

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    self.writer.close()


def track_video(cfg, pose_model, source, out_dir, boxes=None, write_frames=False,
                kpt_thr=None, progress=True):
  """Runs the tracker over `source`; returns (results json path, stats dict).

  stats: frames, seconds, and the seconds spent waiting for frames (decoding + flow run ahead
  in a thread), proposing boxes, in the pose model, matching, and drawing/writing. On a broken
  video the outputs of the frames before it are written, then VideoError is raised.
  """
  from sbpose_jax import video  # pylint: disable=import-outside-toplevel
  from sbpose_jax.tracking import flow as flow_lib  # pylint: disable=import-outside-toplevel
  from sbpose_jax.tracking import tracker  # pylint: disable=import-outside-toplevel
  info = keypoints.get(cfg.data.dataset)
  settings = tracker.TrackSettings.from_config(cfg.track)
  settings = tracker.TrackSettings(**{**settings.__dict__, "fps": source.fps})
  trk = tracker.Tracker(settings, info.sigmas_array)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  outputs = _Outputs(out, source, info.skeleton, settings.kpt_thr if kpt_thr is None else kpt_thr,
                     write_frames, progress)
  frames = source.frames()
  if trk.needs_flow:     # its own DIS instance: it runs in the decoding thread
    frames = with_flow(frames, flow_lib.DisFlow(settings.flow_preset, settings.flow_max_side))
  else:
    frames = ((f, None) for f in frames)
  frames_out: list[list[dict]] = []
  t = dict(wait=0.0, propose=0.0, pose=0.0, match=0.0, write=0.0)
  error, start, no_det = None, time.perf_counter(), (np.zeros((0, 4)), np.zeros(0))
  try:
    stamp = time.perf_counter()
    for fr, fl in video.prefetch(frames):
      lap = {"wait": time.perf_counter()}
      det = boxes.get(fr.index, no_det) if boxes is not None else (None, None)
      bx, sc = trk.propose(fr.image, *det, flow=fl)
      lap["propose"] = time.perf_counter()
      kp = pose_model(fr.image, bx, sc)
      lap["pose"] = time.perf_counter()
      frames_out.append(trk.update(kp, bx, sc))
      lap["match"] = time.perf_counter()
      outputs.add(fr, frames_out[-1])
      lap["write"] = time.perf_counter()
      for k, v in lap.items():
        t[k], stamp = t[k] + v - stamp, v
  except video.VideoError as e:
    error = e
  finally:
    outputs.close()
  src = source
  if error is not None and source.images_meta:      # keep the json consistent: frames done
    src = type(source)(**{**source.__dict__, "images_meta": source.images_meta[:len(frames_out)]})
  path = out / f"{source.name}.json"
  path.write_text(json.dumps(results_json(src, info, frames_out)))
  if error is not None:
    raise type(error)(f"{error} — the {len(frames_out)} frames before it were tracked and "
                      f"written to {out}", error.frame) from error
  return path, dict(frames=len(frames_out), seconds=time.perf_counter() - start, **t)


def score_sequence(gt_path: str, results_path) -> dict[str, float]:
  """MOTA (poseval evaluateTracking) and per-joint AP of one tracked sequence vs its GT."""
  from sbpose_jax.evaluators import posetrack as pt  # pylint: disable=import-outside-toplevel
  from sbpose_jax.evaluators import posetrack_mota as pm  # pylint: disable=import-outside-toplevel
  gt_d = json.loads(pathlib.Path(gt_path).read_text())
  pr_d = json.loads(pathlib.Path(results_path).read_text())
  out = pm.evaluate_sequences([(pm.parse_sequence(gt_d, gt_path, predictions=False),
                                pm.parse_sequence(pr_d, str(results_path)), gt_path)])
  names = pr_d["categories"][0]["keypoints"]
  by_image: dict = {}
  for a in pr_d["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a)
  frames = []
  for f in pt.read_gt_sequence(gt_path):
    pr = []
    for a in by_image.get(f["image_id"], []):
      # pylint: disable-next=protected-access
      xy, has, sc = pt._to_15(a["keypoints"], names, a["scores"])
      pr.append({"xy": xy, "has": has, "score": sc})
    frames.append({**f, "pr": pr})
  out.update({f"AP_{k}": v for k, v in pt.table(pt.evaluate_ap(frames)).items()
              if not k.startswith("AP_")})
  return out


def format_scores(m: dict[str, float]) -> str:
  from sbpose_jax.evaluators import posetrack_mota as pm  # pylint: disable=import-outside-toplevel
  ap = " | ".join(f"{k[3:]:>6}" for k in m if k.startswith("AP_"))
  ap_v = " | ".join(f"{v:6.1f}" for k, v in m.items() if k.startswith("AP_"))
  return f"AP (per joint group)\n{ap}\n{ap_v}\nMOTA\n{pm.format_table(m)}"


def _command(args, rest, out: list) -> int:
  from sbpose_jax import video  # pylint: disable=import-outside-toplevel  # PyAV: not for --help
  cfg, _ = config_lib.eval_config(config_lib.load(args.config, rest))
  cfg.model.dtype = args.dtype
  if args.similarity:
    cfg.track.similarity = args.similarity
  source = video.open_source(args.input)
  if args.eval and source.kind != "posetrack":
    raise ValueError("--eval needs INPUT to be a PoseTrack18 annotation file")
  boxes = read_boxes(args.boxes, source) if args.boxes else None
  pose_model = PoseModel(cfg, args.checkpoint)
  path, stats = track_video(cfg, pose_model, source, args.out_dir, boxes, args.frames,
                            args.kpt_thr, not args.quiet)
  n = max(stats["frames"], 1)
  per = ", ".join(f"{k} {1000 * stats[k] / n:.1f}" for k in ("wait", "propose", "pose",
                                                            "match", "write"))
  print(f"tracked {stats['frames']} frames at {stats['frames'] / stats['seconds']:.1f} "
        f"frames/s (ms per frame: {per}); wrote {path} and {path.with_suffix('.mp4')}",
        file=sys.stderr)
  scores = None
  if args.eval:
    scores = score_sequence(args.input, path)
    print(format_scores(scores))
  out.extend([path, scores])
  return 0


def main(argv: Sequence[str] | None = None):
  """The command line: returns (results json path, scores or None); an error is one line
  (cli.py) and SystemExit with a non-zero status."""
  out = []
  status = cli.run(lambda args, rest: _command(args, rest, out), build_parser(), argv)
  if status:
    raise SystemExit(status)
  return tuple(out)


if __name__ == "__main__":
  main()
