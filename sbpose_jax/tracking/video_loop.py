"""The tracker over a video: frames in, poses per box, track ids, the annotated video out.

`track_video(cfg, pose_model, source, out_dir, boxes)` is the loop of `python -m
sbpose_jax.track`: frames decoded ahead in a thread (with their optical flow when the matching
uses it), boxes per frame (a detector's or a box file's, plus the flow-propagated ones), the pose
network on every box (`FramePoses`, the evaluation's numerics through `api.PoseEstimator`), the
matching (`tracker.Tracker`), and the results (PoseTrack18 json, mp4, optional PNGs).
"""
from __future__ import annotations

import json
import pathlib
import time

import cv2
import numpy as np

from sbpose_jax import api
from sbpose_jax import boxes as boxes_lib
from sbpose_jax import keypoints
from sbpose_jax import video
from sbpose_jax.tracking import draw
from sbpose_jax.tracking import flow as flow_lib
from sbpose_jax.tracking import results
from sbpose_jax.tracking import tracker


def read_boxes(path: str, source) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """A box file (boxes.py formats) -> {frame index: ((N, 4) x1 y1 x2 y2, (N,) scores)}.

  A key may be the 0-based frame number, a frame's file name or stem, or a PoseTrack image id.
  """
  keys: dict = {i: i for i in range(source.num_frames)}
  for i, name in enumerate(source.files):
    keys[name] = keys[pathlib.Path(name).name] = keys[pathlib.Path(name).stem] = i
  for i, im in enumerate(source.images_meta):
    keys[im["id"]] = i
  table, _ = boxes_lib.read_box_file(path, keys)
  return {i: (boxes_lib.xywh_to_xyxy(a[:, :4]).astype(np.float32), a[:, 4].astype(np.float32))
          for i, a in table.items()}


# Few compilations, little waste: a frame's boxes are padded to the next of these.
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


class FramePoses:
  """`FramePoses(cfg, checkpoint)(frame_bgr, boxes_xyxy, scores)` → (N, K, 3) image x, y, score.

  Through `api.PoseEstimator`: the crops, batches and test-time numerics of `evaluate`.
  """

  def __init__(self, cfg, checkpoint_path):
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
    self.png_dir = out / source.name if write_frames else None
    if self.png_dir is not None:
      self.png_dir.mkdir(exist_ok=True)
    self.writer = video.VideoWriter(str(out / f"{source.name}.mp4"), source.fps)
    self.skeleton, self.kpt_thr = skeleton, kpt_thr
    self.bar, self.start, self.count = None, time.perf_counter(), 0
    if progress:
      import tqdm  # why: a progress bar only when asked for
      self.bar = tqdm.tqdm(total=source.num_frames or None, unit="frame", desc=source.name)

  def add(self, fr, people) -> None:
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
  path.write_text(json.dumps(results.results_json(src, info, frames_out)))
  if error is not None:
    raise type(error)(f"{error} — the {len(frames_out)} frames before it were tracked and "
                      f"written to {out}", error.frame) from error
  return path, dict(frames=len(frames_out), seconds=time.perf_counter() - start, **t)
