"""Poses on image files and videos, written as predictions.json and pictures.

The library half of `python -m sbpose_jax.predict`: `run(cfg, checkpoint, inputs, out_dir)`
reads the images (or videos), takes the person boxes from a box file (boxes.py formats), a
person detector (`detector`: a saved RTMDet, inference/detection.py) or the whole image, runs
`api.PoseEstimator` with the evaluation's numerics, rescoring and OKS-NMS, and writes
out_dir/predictions.json plus one PNG per image (a video: <stem>.mp4 + <stem>.json).
"""
from __future__ import annotations

import json
import logging
import pathlib
from typing import Sequence

import cv2
import numpy as np

from sbpose_jax import api
from sbpose_jax import boxes as boxes_lib
from sbpose_jax import interrupts
from sbpose_jax import keypoints
from sbpose_jax import outputs
from sbpose_jax import video
from sbpose_jax import visualize
from sbpose_jax.data import pipeline
from sbpose_jax.inference import postprocess
from sbpose_jax.training import workdir
from sbpose_jax.weights import saved_model

log = logging.getLogger("sbpose_jax")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")


def list_images(inputs: Sequence[str]) -> list[pathlib.Path]:
  """Files as given, folders expanded (sorted, image suffixes only); errors name the input."""
  out = []
  for item in inputs:
    path = pathlib.Path(item)
    if path.is_dir():
      found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
      if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
      out += found
    elif path.is_file():
      out.append(path)
    else:
      raise FileNotFoundError(f"input not found: {path}")
  stems = [p.stem for p in out]
  dup = sorted({s for s in stems if stems.count(s) > 1})
  if dup:
    raise ValueError(f"several inputs share the file stem {dup[0]!r}; their PNGs would collide")
  return out


def read_boxes(path, images: Sequence[pathlib.Path], score_thr: float
               ) -> dict[str, list[tuple[list[float], float]]]:
  """{image stem: [(xywh, score), ...]} from a box file (boxes.py formats).

  A key may be the image's file name or stem; a COCO `image_id` matches a numeric stem. Says in
  a warning how many images got boxes when not all did (an empty or non-matching box file
  leaves them without a pose), and how many entries named no input image.
  """
  keys: dict = {}
  for p in images:
    keys[p.name] = keys[p.stem] = p.stem
    if p.stem.isdigit():
      keys[int(p.stem)] = p.stem
  table, unmatched = boxes_lib.read_box_file(path, keys)
  out = {p.stem: [(list(map(float, r[:4])), float(r[4])) for r in table.get(p.stem, ())
                  if r[4] >= score_thr] for p in images}
  below = sum(int((a[:, 4] < score_thr).sum()) for a in table.values())
  got = sum(1 for v in out.values() if v)
  if got < len(images) or unmatched:
    log.warning("--boxes %s: boxes for %d of the %d input images%s%s; an image without boxes "
                "gets no pose (without --boxes each image is one whole-image box)", path, got,
                len(images), f"; {unmatched} box entries name no input image" if unmatched
                else "", f"; {below} boxes below --det-score-thr {score_thr:g}" if below else "")
  return out


def usable_boxes(image: pathlib.Path, width: int, height: int,
                 boxes: Sequence[tuple[list[float], float]], source: str = ""
                 ) -> list[tuple[list[float], float]]:
  """The boxes of one image that have pixels inside it; each other one is named in a warning
  (with the box file `source`, the image and the box: a crop of no pixels would still give a
  pose, made up from the padding)."""
  kept = []
  for j, (box, score) in enumerate(boxes):
    why = api.box_problem(box, width, height)
    if why is None:
      kept.append((box, score))
    else:
      log.warning("%s%s: skipping box %d [x, y, w, h] = %s: %s",
                  f"{source}: " if source else "", image.name, j, api.show_box(box), why)
  return kept


def predict_images(est, images, boxes, cfg, use_nms: bool = True):
  """Per image: dict(bboxes (M, 4), scores (M,), box_scores (M,), keypoints (M, K, 3)).

  `est` is the `api.PoseEstimator` (crops, batches, device); then rescoring and OKS-NMS with
  cfg.test.vis_thr / oks_thr (the model's own, `api.apply_model_settings`).
  """
  info = keypoints.get(cfg.data.dataset)
  found = est.predict_batch([img for _, img in images],
                            [np.asarray([b for b, _ in bx], np.float64).reshape(-1, 4)
                             for bx in boxes],
                            [np.asarray([s for _, s in bx], np.float64) for bx in boxes])
  index = np.concatenate([np.full(len(r), n, np.int32) for n, r in enumerate(found)])
  kpts = np.concatenate([r.keypoints_xys() for r in found]).reshape(-1, info.num_joints, 3)
  box_scores = np.asarray([bx[j][1] for bx, r in zip(boxes, found) for j in r.box_index],
                          np.float32)
  scale = np.concatenate([r.scale for r in found]).reshape(-1, 2)
  flat_boxes = [bx[j][0] for bx, r in zip(boxes, found) for j in r.box_index]
  kept, scores = postprocess.rescore_and_nms(
      index, kpts, box_scores, postprocess.crop_areas(scale), info.sigmas_array,
      cfg.test.vis_thr, cfg.test.oks_thr, use_nms)
  result = [dict(bboxes=[], scores=[], box_scores=[], keypoints=[]) for _ in images]
  for i in kept:   # `scores` has a row per instance; `kept` is in NMS order
    r = result[int(index[i])]
    r["bboxes"].append(flat_boxes[i])
    r["scores"].append(float(scores[i]))
    r["box_scores"].append(float(box_scores[i]))
    r["keypoints"].append(kpts[i])
  return result


def _to_rgb(img: np.ndarray, order: str) -> np.ndarray:
  return img if order == "rgb" else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _record(path, img, r, cfg) -> tuple[dict, np.ndarray]:
  kp = np.asarray(r["keypoints"], np.float32).reshape(
      -1, keypoints.get(cfg.data.dataset).num_joints, 3)
  return {"file": str(path), "width": int(img.shape[1]), "height": int(img.shape[0]),
          "instances": [{"bbox": [float(v) for v in b], "box_score": bs, "score": s,
                         "keypoints": np.round(k.astype(np.float64), 3).tolist()}
                        for b, bs, s, k in zip(r["bboxes"], r["box_scores"], r["scores"], kp)]
          }, kp


def write_picture(out_dir, path, img, r, kp, cfg, kpt_thr: float) -> pathlib.Path:
  """out_dir/<stem>.png: the image with `kp` ((N, K, 3), `_record`'s) and r's boxes drawn,
  written atomically."""
  drawn = visualize.draw_poses(_to_rgb(img, cfg.data.colour_order), kp, cfg.data.dataset,
                               boxes=np.asarray(r["bboxes"]).reshape(-1, 4),
                               scores=r["scores"], kpt_thr=kpt_thr)
  return outputs.write_png(pathlib.Path(out_dir) / f"{pathlib.Path(path).stem}.png",
                           cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))


PREDICTIONS = "predictions.json"


def _earlier_pictures(out: pathlib.Path, paths) -> list[str]:
  """The PNGs an earlier run listed in out/predictions.json that this run will not replace."""
  try:
    old = json.loads((out / PREDICTIONS).read_text())["images"]
    names = {f"{pathlib.Path(e['file']).stem}.png" for e in old}
  except (OSError, ValueError, KeyError, TypeError):
    return []
  mine = {f"{p.stem}.png" for p in paths}
  return sorted(n for n in names - mine if (out / n).exists())


def predict_files(est, paths, boxes_for, cfg, out_dir, kpt_thr: float, use_nms: bool
                  ) -> tuple[list[pathlib.Path], int]:
  """Poses on image files, a chunk of test.batch_size images at a time: a PNG per image and
  out_dir/predictions.json, written when the run ends however it ends (an interruption or an
  error keeps the images done, with "complete": false). Returns (PNGs, unreadable count).

  `boxes_for(path, image) -> [(xywh, score), ...]` gives each image's person boxes (a box
  file's, or the whole image); with `est.detector` set and `boxes_for` None, the detector
  finds them (one batched call per chunk; an image with nobody in it gets no pose).
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  stale = _earlier_pictures(out, paths)
  if stale:
    log.warning("%s holds %d pictures of an earlier run that this run does not replace (%s%s); "
                "%s is replaced", out, len(stale), ", ".join(stale[:3]),
                ", ..." if len(stale) > 3 else "", PREDICTIONS)
  records, pngs, unreadable = [], [], 0
  chunk = max(1, int(cfg.test.batch_size))
  done = False
  try:
    for start in range(0, len(paths), chunk):
      images = []
      for p in paths[start:start + chunk]:
        try:
          images.append((p, pipeline.decode_image(str(p), cfg.data.colour_order)))
        except pipeline.BadImageError as e:
          unreadable += 1
          log.warning("skipping an unreadable image: %s", e)
      if not images:
        continue
      results = predict_images(est, images, chunk_boxes(est, images, boxes_for), cfg,
                               use_nms)
      for (p, img), r in zip(images, results):
        record, kp = _record(p, img, r, cfg)
        with interrupts.deferred():     # an image's PNG and its record, or neither
          pngs.append(write_picture(out, p, img, r, kp, cfg, kpt_thr))
          records.append(record)
    done = True
  except BaseException as e:
    interrupts.reraise_with(e, f"interrupted after {len(records)} of {len(paths)} images: their "
                            f"poses were written to {out / PREDICTIONS} and {len(pngs)} pictures "
                            f"to {out}")
    raise
  finally:
    if records or done:
      outputs.write_json(out / PREDICTIONS, {
          "dataset": cfg.data.dataset,
          "joint_names": list(keypoints.get(cfg.data.dataset).joint_names),
          "complete": done, "test": _test_of(cfg), "images": records})
  if paths and not records and unreadable == len(paths):
    raise ValueError(f"none of the {len(paths)} input images can be read")
  return pngs, unreadable


def chunk_boxes(est, images, boxes_for=None) -> list[list[tuple[list[float], float]]]:
  """[(xywh, score), ...] per (path, image): `boxes_for`'s, else the detector's (all the
  images in one call), else the whole image."""
  if boxes_for is not None:
    return [boxes_for(p, img) for p, img in images]
  if est.detector is not None:
    return [[(list(map(float, b)), float(s)) for b, s in zip(*found)]
            for found in est.detect([img for _, img in images])]
  return [[([0.0, 0.0, float(img.shape[1]), float(img.shape[0])], 1.0)] for _, img in images]


def _test_of(cfg) -> dict:
  """The test settings the poses were predicted with (written into the json)."""
  from sbpose_jax.weights.meta import TestSettings  # why: kept next to its one use
  return TestSettings.from_config(cfg).to_dict()


def predict_video(est, path: pathlib.Path, cfg, out_dir, batch_size: int, kpt_thr: float,
                  use_nms: bool) -> pathlib.Path:
  """Poses of every frame of a video → out_dir/<stem>.mp4 and <stem>.json: one whole-frame
  box per frame, or with `est.detector` a pose per person it finds (the boxes drawn).

  Both are written to temporary names and renamed when the run ends, however it ends: a
  broken video or an interruption keeps the frames done ("complete": false in the json).
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  src, frames = video.open_source(str(path)), []
  done = False
  writer = video.VideoWriter(str(out / f"{path.stem}.mp4"), src.fps)
  try:
    def flush(chunk):
      # Frames come BGR; the model gets the config's colour order, as decode_image gives it.
      imgs = [(pathlib.Path(f.name), _to_rgb(f.image, "bgr") if cfg.data.colour_order == "rgb"
               else f.image) for f in chunk]
      boxes = chunk_boxes(est, imgs)
      for (_, img), r in zip(imgs, predict_images(est, imgs, boxes, cfg, use_nms)):
        kp = np.asarray(r["keypoints"], np.float32).reshape(
            -1, keypoints.get(cfg.data.dataset).num_joints, 3)
        drawn = visualize.draw_poses(
            _to_rgb(img, cfg.data.colour_order), kp, cfg.data.dataset, kpt_thr=kpt_thr,
            boxes=np.asarray(r["bboxes"]).reshape(-1, 4) if est.detector is not None else None)
        with interrupts.deferred():     # a frame in the video and in the json, or neither
          writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
          frames.append([{"score": s, "keypoints": np.round(k.astype(np.float64), 3).tolist()}
                         | ({"bbox": [float(v) for v in b], "box_score": bs}
                            if est.detector is not None else {})
                         for s, k, b, bs in zip(r["scores"], kp, r["bboxes"],
                                                r["box_scores"])])
    chunk = []
    for f in video.prefetch(src.frames()):
      chunk.append(f)
      if len(chunk) == batch_size:
        flush(chunk)
        chunk = []
    if chunk:
      flush(chunk)
    done = True
  except video.VideoError as e:
    raise video.VideoError(f"{e} — the {len(frames)} frames before it were written to "
                           f"{out / path.stem}.mp4 and .json", e.frame) from e
  except BaseException as e:
    interrupts.reraise_with(e, f"interrupted at frame {len(frames)} of {path}: the "
                            f"{len(frames)} frames done were written to {out / path.stem}.mp4 "
                            "and .json")
    raise
  finally:     # a broken or interrupted video keeps what came before it
    writer.close()
    if frames or done:   # no frame: an earlier run's pair stays as it was
      outputs.write_json(out / f"{path.stem}.json", {
          "dataset": cfg.data.dataset, "video": str(path), "fps": src.fps, "complete": done,
          "test": _test_of(cfg), "frames": frames})
  return out / f"{path.stem}.mp4"


def run(cfg, checkpoint_path, inputs, out_dir, boxes_file=None, batch_size=None,
        det_score_thr=None, kpt_thr=0.05, use_nms=True, explicit=(), detector=None
        ) -> list[pathlib.Path]:
  """The command without argument parsing; returns the written PNG and mp4 paths.

  `detector`: a saved person detector directory; it finds the people in every image and
  video frame (boxes scored below `det_score_thr`, default api.DETECTOR_SCORE_THR, dropped).
  Not with `boxes_file`.

  The model's own test settings replace cfg's (`api.apply_model_settings`; `explicit`: the
  fields the command line set, {field: flag}, which override them with a note).
  """
  checkpoint_path = pathlib.Path(checkpoint_path)
  for note in api.apply_model_settings(cfg, checkpoint_path, explicit):
    log.info(note)
  if not checkpoint_path.is_file():      # an exported file is checked by from_config
    saved_model.check_fits(workdir.read_meta(checkpoint_path), cfg.data.dataset,
                           checkpoint_path)
  videos = [pathlib.Path(i) for i in inputs if pathlib.Path(i).suffix.lower() in VIDEO_SUFFIXES]
  inputs = [i for i in inputs if pathlib.Path(i).suffix.lower() not in VIDEO_SUFFIXES]
  for v in videos:
    if not v.is_file():
      raise FileNotFoundError(f"input not found: {v}")
  paths = list_images(inputs) if inputs else []
  if detector is not None and boxes_file:
    raise ValueError("give --boxes or --detector, not both")
  thr = cfg.data.det_score_thr if det_score_thr is None else det_score_thr
  box_table = read_boxes(boxes_file, paths, thr) if boxes_file else None

  def boxes_for(p: pathlib.Path, img: np.ndarray):
    if box_table is None:   # the whole image is one person box
      return [([0.0, 0.0, float(img.shape[1]), float(img.shape[0])], 1.0)]
    return usable_boxes(p, img.shape[1], img.shape[0], box_table[p.stem], f"--boxes {boxes_file}")

  if batch_size:
    cfg.test.batch_size = int(batch_size)
  est = api.PoseEstimator.from_config(cfg, checkpoint_path)
  if detector is not None:
    est.with_detector(detector, det_score_thr)
  written = []
  if paths:
    written += predict_files(est, paths, None if detector is not None else boxes_for, cfg,
                             out_dir, kpt_thr, use_nms)[0]
  return written + [predict_video(est, v, cfg, out_dir, int(cfg.test.batch_size), kpt_thr,
                                  use_nms) for v in videos]
