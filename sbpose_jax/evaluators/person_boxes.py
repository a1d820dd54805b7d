"""`evaluate --detector`: a person detector's boxes for a COCO-style validation set, written as
a COCO detection-results file (the `--det-file` format), and their person box AP.

  found = detect_images(detector, ann_file, image_root)     # COCO results: list of dicts
  outputs.write_json(out_dir / "detections.json", found)    # reusable with --det-file
  box_ap(ann_file, found)                                    # {"AP": ..., "AP .5": ..., ...}

Every box the detector keeps (its own score threshold, 0.05 for the person configs) is
written, as MMPose's evaluation reads a detection file with `det_bbox_thr` 0.0. The box AP is
pycocotools' COCOeval with iouType "bbox" against the ground truth's person boxes (category 1,
crowd boxes ignored as COCOeval does), the number MMDetection's CocoMetric prints.
"""
from __future__ import annotations

import json
import pathlib
from typing import Sequence

import numpy as np

from sbpose_jax.data import pipeline
from sbpose_jax.evaluators import coco_bbox

BOX_AP_NAMES = ("AP", "AP .5", "AP .75", "AP (M)", "AP (L)", "AR")
_STATS = ("AP", "AP50", "AP75", "AP(M)", "AP(L)", "AR100")   # coco_bbox.BOX_STATS


def _image_table(ann_file) -> list[tuple[int, str]]:
  try:
    gt = json.loads(pathlib.Path(ann_file).read_text())
    return [(int(im["id"]), str(im["file_name"])) for im in gt["images"]]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"--detector: {ann_file} is not a COCO-style annotation file with an "
                     f"'images' list ({type(e).__name__}: {e})") from None


def detect_images(detector, ann_file, image_root, chunk: int | None = None,
                  progress: bool = False) -> list[dict]:
  """The detector's person boxes on every image of `ann_file` (a COCO-style json), as COCO
  detection results [{"image_id", "category_id": 1, "bbox": [x, y, w, h], "score"}, ...],
  best first per image. An image with nobody in it contributes nothing; an unreadable image
  is an error naming it (the pose evaluation would need it too)."""
  table = _image_table(ann_file)
  chunk = int(chunk or detector.batch_sizes[-1])
  root = pathlib.Path(image_root)
  out: list[dict] = []
  bar = None
  if progress:
    import tqdm  # why: a progress bar only when asked for
    bar = tqdm.tqdm(total=len(table), unit="image", desc="detector")
  for start in range(0, len(table), chunk):
    part = table[start:start + chunk]
    images = [pipeline.decode_image(str(root / name), "bgr") for _, name in part]
    for (image_id, _), found in zip(part, detector(images, colour="bgr")):
      for box, score in zip(np.asarray(found.boxes, np.float64), found.scores):
        out.append({"image_id": image_id, "category_id": 1,
                    "bbox": [round(float(v), 3) for v in (box[0], box[1], box[2] - box[0],
                                                           box[3] - box[1])],
                    "score": round(float(score), 5)})
    if bar is not None:
      bar.update(len(part))
  if bar is not None:
    bar.close()
  return out


def box_ap(ann_file, results: Sequence[dict]) -> dict[str, float]:
  """Person box AP of COCO detection `results` against `ann_file`'s person boxes (coco_bbox:
  pycocotools COCOeval, iouType "bbox", category 1). No detection at all: every number 0."""
  gt = coco_bbox.ground_truth(ann_file)
  stats = coco_bbox.box_stats(gt, results, coco_bbox.person_category(gt, 1))
  return {k: max(stats[s], 0.0) for k, s in zip(BOX_AP_NAMES, _STATS)}


def format_box_ap(metrics: dict[str, float]) -> str:
  """One table row: the person box AP beside the pose AP table."""
  names = [k for k in BOX_AP_NAMES if f"box/{k}" in metrics]
  return ("person boxes (pycocotools bbox): "
          + ", ".join(f"{k} {metrics[f'box/{k}']:.3f}" for k in names))


DETECTIONS_FILE = "detections.json"
COCO_STYLE = ("coco", "crowdpose", "ochuman", "aic", "coco_wholebody")


def detector_boxes_for(cfg, detector_dir, out_dir, progress: bool = False
                       ) -> tuple[pathlib.Path, dict[str, float]]:
  """`evaluate --detector`: runs the saved detector on cfg's validation images, writes
  out_dir/detections.json (COCO detection results, reusable with --det-file), points
  cfg.data.det_file at it (use_gt_bbox False) and returns (its path, {"box/AP": ...})."""
  # why: the detector's JAX program and the atomic writer on use only
  from sbpose_jax import outputs
  from sbpose_jax.inference import detection
  if cfg.data.dataset not in COCO_STYLE:
    raise ValueError(f"--detector: {cfg.data.dataset!r} does not read a COCO detection-results "
                     f"file; --detector works for {', '.join(COCO_STYLE)}")
  root = pathlib.Path(cfg.data.root)
  ann, images = root / cfg.data.val_ann, root / cfg.data.val_images
  if not ann.is_file():
    raise FileNotFoundError(f"annotation file (--ann-file / data.val_ann) not found: {ann}")
  detector = detection.Detector.load(detector_dir)
  found = detect_images(detector, ann, images, progress=progress)
  pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
  path = outputs.write_json(pathlib.Path(out_dir) / DETECTIONS_FILE, found)
  cfg.data.det_file, cfg.data.use_gt_bbox = str(path.resolve()), False
  return path, {f"box/{k}": v for k, v in box_ap(ann, found).items()}
