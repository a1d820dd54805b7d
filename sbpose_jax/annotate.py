"""Poses on image files and videos, written as predictions.json and pictures.

The library half of `python -m sbpose_jax.predict`: `run(cfg, checkpoint, inputs, out_dir)`
reads the images (or videos), takes the person boxes from a box file (boxes.py formats) or the
whole image, runs `api.PoseEstimator` with the evaluation's numerics, rescoring and OKS-NMS,
and writes out_dir/predictions.json plus one PNG per image (a video: <stem>.mp4 + <stem>.json).
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
from sbpose_jax import keypoints
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

  A key may be the image's file name or stem; a COCO `image_id` matches a numeric stem.
  """
  keys: dict = {}
  for p in images:
    keys[p.name] = keys[p.stem] = p.stem
    if p.stem.isdigit():
      keys[int(p.stem)] = p.stem
  table, _ = boxes_lib.read_box_file(path, keys)
  out = {p.stem: [(list(map(float, r[:4])), float(r[4])) for r in table.get(p.stem, ())
                  if r[4] >= score_thr] for p in images}
  if not any(out.values()):
    log.warning("--boxes %s: no box matches any of the %d input images", path, len(images))
  return out


MIN_BOX_SIDE = 1.0  # px: a smaller box has no pixels to crop


def usable_boxes(image: pathlib.Path, width: int, height: int,
                 boxes: Sequence[tuple[list[float], float]]) -> list[tuple[list[float], float]]:
  """The boxes of one image that have pixels inside it; each other one is named in a warning
  (a crop of no pixels would still give a pose, made up from the padding)."""
  kept = []
  for box, score in boxes:
    x, y, w, h = box
    shown = "[" + ", ".join(f"{v:.4g}" for v in box) + "]"
    if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
      log.warning("%s: skipping box [x, y, w, h] = %s: smaller than %g px", image.name,
                  shown, MIN_BOX_SIDE)
    elif x >= width or y >= height or x + w <= 0 or y + h <= 0:
      log.warning("%s: skipping box [x, y, w, h] = %s: outside the %dx%d image", image.name,
                  shown, width, height)
    else:
      kept.append((box, score))
  return kept


def predict_images(est, images, boxes, cfg, use_nms: bool = True):
  """Per image: dict(bboxes (M, 4), scores (M,), box_scores (M,), keypoints (M, K, 3)).

  `est` is the `api.PoseEstimator` (crops, batches, device); then rescoring and OKS-NMS.
  """
  info = keypoints.get(cfg.data.dataset)
  found = est.predict_batch([img for _, img in images],
                            [np.asarray([b for b, _ in bx], np.float64).reshape(-1, 4)
                             for bx in boxes],
                            [np.asarray([s for _, s in bx], np.float64) for bx in boxes])
  index = np.concatenate([np.full(len(r), n, np.int32) for n, r in enumerate(found)])
  kpts = np.concatenate([r.keypoints_xys() for r in found]).reshape(-1, info.num_joints, 3)
  box_scores = np.asarray([s for bx in boxes for _, s in bx], np.float32)
  scale = np.concatenate([r.scale for r in found]).reshape(-1, 2)
  flat_boxes = [b for bx in boxes for b, _ in bx]
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


def write_outputs(out_dir, images, results, cfg, kpt_thr: float) -> list[pathlib.Path]:
  """predictions.json and one PNG per image; returns the PNG paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  records, pngs = [], []
  for (path, img), r in zip(images, results):
    kp = np.asarray(r["keypoints"], np.float32).reshape(-1, keypoints.get(
        cfg.data.dataset).num_joints, 3)
    drawn = visualize.draw_poses(_to_rgb(img, cfg.data.colour_order), kp, cfg.data.dataset,
                                 boxes=np.asarray(r["bboxes"]).reshape(-1, 4),
                                 scores=r["scores"], kpt_thr=kpt_thr)
    png = out_dir / f"{path.stem}.png"
    cv2.imwrite(str(png), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    pngs.append(png)
    records.append({
        "file": str(path), "width": int(img.shape[1]), "height": int(img.shape[0]),
        "instances": [{"bbox": [float(v) for v in b], "box_score": bs, "score": s,
                       "keypoints": np.round(k.astype(np.float64), 3).tolist()}
                      for b, bs, s, k in zip(r["bboxes"], r["box_scores"], r["scores"], kp)]})
  meta = {"dataset": cfg.data.dataset, "joint_names": list(keypoints.get(
      cfg.data.dataset).joint_names), "images": records}
  (out_dir / "predictions.json").write_text(json.dumps(meta))
  return pngs


def predict_video(est, path: pathlib.Path, cfg, out_dir, batch_size: int, kpt_thr: float,
                  use_nms: bool) -> pathlib.Path:
  """Whole-frame poses of every frame of a video → out_dir/<stem>.mp4 and <stem>.json."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  src, frames = video.open_source(str(path)), []
  with video.VideoWriter(str(out / f"{path.stem}.mp4"), src.fps) as writer:
    def flush(chunk):
      # Frames come BGR; the model gets the config's colour order, as decode_image gives it.
      imgs = [(pathlib.Path(f.name), _to_rgb(f.image, "bgr") if cfg.data.colour_order == "rgb"
               else f.image) for f in chunk]
      boxes = [[([0.0, 0.0, float(i.shape[1]), float(i.shape[0])], 1.0)] for _, i in imgs]
      for (_, img), r in zip(imgs, predict_images(est, imgs, boxes, cfg, use_nms)):
        kp = np.asarray(r["keypoints"], np.float32).reshape(
            -1, keypoints.get(cfg.data.dataset).num_joints, 3)
        drawn = visualize.draw_poses(_to_rgb(img, cfg.data.colour_order), kp, cfg.data.dataset,
                                     kpt_thr=kpt_thr)
        writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        frames.append([{"score": s, "keypoints": np.round(k.astype(np.float64), 3).tolist()}
                       for s, k in zip(r["scores"], kp)])
    try:
      chunk = []
      for f in video.prefetch(src.frames()):
        chunk.append(f)
        if len(chunk) == batch_size:
          flush(chunk)
          chunk = []
      if chunk:
        flush(chunk)
    finally:     # a broken video keeps what came before it
      (out / f"{path.stem}.json").write_text(json.dumps(
          {"dataset": cfg.data.dataset, "video": str(path), "fps": src.fps, "frames": frames}))
  return out / f"{path.stem}.mp4"


def run(cfg, checkpoint_path, inputs, out_dir, boxes_file=None, batch_size=None,
        det_score_thr=None, kpt_thr=0.05, use_nms=True) -> list[pathlib.Path]:
  """The command without argument parsing; returns the written PNG paths."""
  meta = workdir.read_meta(checkpoint_path)
  saved_model.check_fits(meta, cfg.data.dataset, checkpoint_path)
  videos = [pathlib.Path(i) for i in inputs if pathlib.Path(i).suffix.lower() in VIDEO_SUFFIXES]
  inputs = [i for i in inputs if pathlib.Path(i).suffix.lower() not in VIDEO_SUFFIXES]
  paths = list_images(inputs) if inputs else []
  thr = cfg.data.det_score_thr if det_score_thr is None else det_score_thr
  box_table = read_boxes(boxes_file, paths, thr) if boxes_file else None
  images = []
  for p in paths:
    try:
      images.append((p, pipeline.decode_image(str(p), cfg.data.colour_order)))
    except pipeline.BadImageError as e:
      log.warning("skipping an unreadable image: %s", e)
  if paths and not images:
    raise ValueError(f"none of the {len(paths)} input images can be read")
  boxes = [usable_boxes(p, img.shape[1], img.shape[0], box_table[p.stem])
           if box_table is not None
           else [([0.0, 0.0, float(img.shape[1]), float(img.shape[0])], 1.0)]
           for p, img in images]
  if batch_size:
    cfg.test.batch_size = int(batch_size)
  est = api.PoseEstimator.from_config(cfg, checkpoint_path)
  written = (write_outputs(out_dir, images, predict_images(est, images, boxes, cfg, use_nms),
                           cfg, kpt_thr) if images else [])
  return written + [predict_video(est, v, cfg, out_dir, int(cfg.test.batch_size), kpt_thr,
                                  use_nms) for v in videos]
