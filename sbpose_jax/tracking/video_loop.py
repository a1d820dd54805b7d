"""The tracker over a video: frames in, poses per box, track ids, the annotated video out.

`track_video(cfg, pose_model, source, out_dir, boxes)` is the loop of `python -m
sbpose_jax.track`: frames decoded ahead in a thread (with their optical flow when the matching
uses it), boxes per frame (a detector's or a box file's, plus the flow-propagated ones), the pose
network on every box (`FramePoses`, the evaluation's numerics through `api.PoseEstimator`), the
matching (`tracker.Tracker`), and the results (PoseTrack18 json, mp4, optional PNGs).
"""
from __future__ import annotations

import logging
import pathlib
import shutil
import time

import cv2
import numpy as np

from sbpose_jax import api
from sbpose_jax import boxes as boxes_lib
from sbpose_jax import interrupts
from sbpose_jax import keypoints
from sbpose_jax import outputs
from sbpose_jax import video
from sbpose_jax.tracking import draw
from sbpose_jax.tracking import flow as flow_lib
from sbpose_jax.tracking import results
from sbpose_jax.tracking import tracker

log = logging.getLogger("sbpose_jax")

def read_boxes(path: str, source) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """A box file (boxes.py formats) -> {frame index: ((N, 4) x1 y1 x2 y2, (N,) scores)}.

  A key may be the 0-based frame number, a frame's file name or stem, or a PoseTrack image id.
  Says in a warning how many frames got boxes when not all did (an empty or non-matching file
  leaves the tracker with the flow-propagated boxes alone), and how many entries matched none.
  """
  keys: dict = {i: i for i in range(source.num_frames)}
  for i, name in enumerate(source.files):
    keys[name] = keys[pathlib.Path(name).name] = keys[pathlib.Path(name).stem] = i
  for i, im in enumerate(source.images_meta):
    keys[im["id"]] = i
  if source.kind == "video" and not source.num_frames:   # frame count unknown: any number
    keys = _AnyFrame()
  table, unmatched = boxes_lib.read_box_file(path, keys)
  got = sum(1 for a in table.values() if len(a))
  if unmatched or not source.num_frames or got < source.num_frames:
    of = f" of the {source.num_frames} frames" if source.num_frames else ""
    log.warning("--boxes %s: boxes for %d%s%s; keys are 0-based frame numbers, frame file "
                "names or stems, or PoseTrack image ids; a frame without boxes gets only the "
                "boxes moved by flow from the previous frame's poses", path, got, of,
                f" ({unmatched} box entries match no frame)" if unmatched else "")
  return {i: (boxes_lib.xywh_to_xyxy(a[:, :4]).astype(np.float32), a[:, 4].astype(np.float32))
          for i, a in table.items()}


class _AnyFrame(dict):
  """Keys of a video whose frame count is unknown: any 0-based frame number."""

  def __contains__(self, key) -> bool:
    return isinstance(key, int) and not isinstance(key, bool) and key >= 0

  def __getitem__(self, key):
    return key


def usable_detections(boxes, scores, frame, where: str = "--boxes"):
  """The boxes (x1 y1 x2 y2) of one frame that have pixels in it; each other one is named in
  a warning (the box file, the frame and the box, as x, y, w, h)."""
  h, w = frame.image.shape[:2]
  keep = []
  for j, b in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
    xywh = [b[0], b[1], b[2] - b[0], b[3] - b[1]]
    why = api.box_problem(xywh, w, h)
    if why is None:
      keep.append(j)
    else:
      log.warning("%s: frame %d (%s): skipping box %d [x, y, w, h] = %s: %s", where,
                  frame.index, frame.name, j, api.show_box(xywh), why)
  keep = np.asarray(keep, np.int64)
  return np.asarray(boxes, np.float32).reshape(-1, 4)[keep], np.asarray(scores)[keep]


class DetectorBoxes:
  """`DetectorBoxes(detector, every)(frame)` -> ((N, 4) x1 y1 x2 y2, (N,) scores): the person
  detector (inference/detection.py) on every `every`-th frame handed to it (the first
  included); on the frames between, empty arrays, so that the tracker's flow-propagated boxes
  fill the gap (the paper's tracker runs its detector on every frame; fewer is faster)."""

  def __init__(self, detector, every: int = 1):
    if int(every) < 1:
      raise ValueError(f"--det-every must be at least 1, got {every}")
    self.detector, self.every, self.count, self.runs = detector, int(every), 0, 0

  def __call__(self, frame):
    run = self.count % self.every == 0
    self.count += 1
    if not run:
      return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    self.runs += 1
    found = self.detector([frame.image], colour="bgr")[0]
    return np.asarray(found.boxes, np.float32), np.asarray(found.scores, np.float32)


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
  """The annotated video, the optional PNGs and the progress bar of one input.

  The mp4 is written under a temporary name and the PNGs into a temporary folder; `close`
  renames both into place (replacing an earlier run's), so the out-dir never holds a
  half-written file nor one run's video beside another run's frames.
  """

  def __init__(self, out: pathlib.Path, source, skeleton, kpt_thr, write_frames, progress):
    self.png_final = out / source.name if write_frames else None
    self.png_dir = out / f".{source.name}.part" if write_frames else None
    if self.png_dir is not None:
      shutil.rmtree(self.png_dir, ignore_errors=True)
      self.png_dir.mkdir()
    self.video_path = out / f"{source.name}.mp4"
    self.writer = video.VideoWriter(str(self.video_path), source.fps)
    self.skeleton, self.kpt_thr = skeleton, kpt_thr
    self.bar, self.start, self.count = None, time.perf_counter(), 0
    if progress:
      import tqdm  # why: a progress bar only when asked for
      self.bar = tqdm.tqdm(total=source.num_frames or None, unit="frame", desc=source.name)

  def add(self, fr, people) -> None:
    drawn = draw.draw_tracks(fr.image, people, self.skeleton, self.kpt_thr)
    # The PNG first: a frame the video holds then always has its PNG (an interruption between
    # the two leaves an extra PNG, which `_finish` removes).
    # Signals held: an interrupt inside the encoder's write could leave a frame in the mp4 that
    # the writer's count (and so the json, trimmed to it) lacks.
    with interrupts.deferred():
      if self.png_dir is not None:
        outputs.write_png(self.png_dir / f"{pathlib.Path(fr.name).stem}.png", drawn)
      self.writer.write(drawn)
    self.count += 1
    if self.bar is not None:
      self.bar.update(1)
      self.bar.set_postfix(fps=f"{self.count / (time.perf_counter() - self.start):.1f}")

  def abandon(self) -> None:
    """Removes the temporary files (a run that tracked no frame replaces nothing)."""
    if self.bar is not None:
      self.bar.close()
    self.writer.close()            # no frame: removes its part file
    if self.png_dir is not None:
      shutil.rmtree(self.png_dir, ignore_errors=True)

  def close(self) -> list[pathlib.Path]:
    """Finishes the files; returns those written (the mp4 and the PNG folder, if any)."""
    if self.bar is not None:
      self.bar.close()
    self.writer.close()
    written = [self.video_path] if self.writer.frames else []
    if self.png_dir is not None:
      shutil.rmtree(self.png_final, ignore_errors=True)
      self.png_dir.rename(self.png_final)
      written.append(self.png_final)
    return written


def _detections(boxes, fr):
  """This frame's detector boxes: (None, None) without a detector (the whole-frame fallback),
  else ((N, 4) x1 y1 x2 y2, (N,)). `boxes` is a box file's {frame: ...} or a callable of the
  frame (a detector)."""
  if boxes is None:
    return None, None
  if callable(boxes):
    return boxes(fr)
  return boxes.get(fr.index, (np.zeros((0, 4), np.float32), np.zeros(0, np.float32)))


def track_video(cfg, pose_model, source, out_dir, boxes=None, write_frames=False,
                kpt_thr=None, progress=True, boxes_name: str = "--boxes"):
  """Runs the tracker over `source`; returns (results json path, stats dict).

  `boxes`: None (no detector: the whole first frame, then flow), {frame index: (x1 y1 x2 y2,
  scores)} from `read_boxes`, or fr -> (boxes, scores) (`DetectorBoxes`: a person detector; an
  empty array: nobody found, the flow-propagated boxes alone). A box with no pixels in its frame
  is skipped with a warning naming it. stats: frames, skipped (undecodable frames skipped), the
  files written, seconds, and the seconds spent waiting for frames (decoding + flow run ahead in
  a thread), in the detector, proposing boxes, in the pose model, matching, and drawing/writing.
  However the run ends (a broken video: VideoError; Ctrl-C or SIGTERM: KeyboardInterrupt), the
  frames tracked so far are written (json, mp4, PNGs), each file complete, and the error says
  so.
  """
  info = keypoints.get(cfg.data.dataset)
  settings = tracker.TrackSettings.from_config(cfg.track)
  settings = tracker.TrackSettings(**{**settings.__dict__, "fps": source.fps})
  trk = tracker.Tracker(settings, info.sigmas_array)
  write_kpt_thr = float(cfg.track.get("write_kpt_thr", 0.0))
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  outputs_ = _Outputs(out, source, info.skeleton,
                      settings.kpt_thr if kpt_thr is None else kpt_thr, write_frames, progress)
  frames = source.frames()
  if trk.needs_flow:     # its own DIS instance: it runs in the decoding thread
    frames = with_flow(frames, flow_lib.DisFlow(settings.flow_preset, settings.flow_max_side))
  else:
    frames = ((f, None) for f in frames)
  frames_out: list[list[dict]] = []
  indices: list[int] = []
  t = dict(wait=0.0, detect=0.0, propose=0.0, pose=0.0, match=0.0, write=0.0)
  start = time.perf_counter()
  path = out / f"{source.name}.json"
  written = []
  try:
    stamp = time.perf_counter()
    for fr, fl in video.prefetch(frames):
      lap = {"wait": time.perf_counter()}
      det = _detections(boxes, fr)
      if det[0] is not None:
        det = usable_detections(*det, fr, boxes_name)
      lap["detect"] = time.perf_counter()
      bx, sc = trk.propose(fr.image, *det, flow=fl)
      lap["propose"] = time.perf_counter()
      kp = pose_model(fr.image, bx, sc)
      lap["pose"] = time.perf_counter()
      people = trk.update(kp, bx, sc)
      lap["match"] = time.perf_counter()
      frames_out.append(people)     # before the files: _finish trims to the video's frames
      indices.append(fr.index)
      outputs_.add(fr, people)
      lap["write"] = time.perf_counter()
      for k, v in lap.items():
        t[k], stamp = t[k] + v - stamp, v
  except BaseException as e:
    written = _finish(outputs_, path, source, info, frames_out, indices, write_kpt_thr)
    if interrupts.interrupt_of(e) is None and not isinstance(e, video.VideoError):
      raise
    done = (f"the {len(frames_out)} frames before it were tracked and written to "
            f"{', '.join(str(p) for p in written)}" if written else
            f"no frame was tracked: nothing was written ({out} is as it was)")
    interrupts.reraise_with(e, f"interrupted at frame {len(frames_out)} of {source.path}: {done}")
    raise type(e)(f"{e} — {done}", e.frame) from e
  written = _finish(outputs_, path, source, info, frames_out, indices, write_kpt_thr)
  if source.skipped:
    log.warning("%s: skipped %d undecodable frames (%s%s)", source.path, len(source.skipped),
                ", ".join(source.skipped[:3]), ", ..." if len(source.skipped) > 3 else "")
  return path, dict(frames=len(frames_out), skipped=len(source.skipped), written=written,
                    seconds=time.perf_counter() - start, **t)


def _finish(outputs_, path, source, info, frames_out, indices, write_kpt_thr: float = 0.0
            ) -> list[pathlib.Path]:
  """Closes the video and PNGs and writes the json of the frames tracked (each atomically).

  Nothing tracked (stopped before the first frame): nothing is replaced, the out-dir keeps an
  earlier run's files as they were."""
  # An interruption inside `add` may leave the last frame in the json only, or its PNG without
  # its video frame: the json and the PNGs keep exactly the frames the video holds.
  done = outputs_.writer.frames
  del frames_out[done:], indices[done:]
  if outputs_.png_dir is not None:
    keep = {f"{pathlib.Path(source.files[i]).stem if source.files else f'frame_{i:06d}'}.png"
            for i in indices}
    for png in outputs_.png_dir.glob("*.png"):
      if png.name not in keep:
        png.unlink()
  if not frames_out:
    outputs_.abandon()
    return []
  written = outputs_.close()
  outputs.write_json(path, results.results_json(source, info, frames_out, indices,
                                                 write_kpt_thr))
  return [path] + written
