"""COCO box AP of a person detector (pycocotools, iouType "bbox"): what MMDetection's CocoMetric
reports for `metric='bbox'` (mmdet/evaluation/metrics/coco_metric.py), person class only.

`process(preds)` takes one batch of detections: `image_id` (B,), `boxes` (B, M, 4) xyxy image
pixels, `scores` (B, M), `count` (B,) (image b's detections are the first count[b] rows), `mask`
(B,) (False on padding). `compute(out_dir)` writes `bbox_results.json` (COCO detection results,
the box-file format `predict`/`track --boxes` read) and returns AP, AP50, AP75, AP(S/M/L), AR1,
AR10, AR100, AR(S/M/L). With no detection at all the metrics are 0 (-1 where there is no GT).
"""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np

BOX_STATS = ("AP", "AP50", "AP75", "AP(S)", "AP(M)", "AP(L)", "AR1", "AR10", "AR100", "AR(S)",
             "AR(M)", "AR(L)")
RESULTS_FILE = "bbox_results.json"


class CocoBoxEvaluator:
  """Box AP against the person boxes of a COCO annotation file."""

  def __init__(self, records=None, config=None, *, ann_file: str, category_id: int | None = None):
    del records, config   # the ground truth is the annotation file's
    self.ann_file = ann_file
    self.category_id = category_id
    self.results: list[dict] = []
    self.seen: set[int] = set()

  def process(self, preds) -> None:
    ids = np.asarray(preds["image_id"])
    boxes, scores = np.asarray(preds["boxes"], np.float64), np.asarray(preds["scores"])
    count = np.asarray(preds["count"])
    mask = np.asarray(preds.get("mask", np.ones(len(ids), bool)))
    for b in range(len(ids)):
      if not mask[b] or int(ids[b]) in self.seen:
        continue
      self.seen.add(int(ids[b]))
      for box, score in zip(boxes[b, :int(count[b])], scores[b, :int(count[b])]):
        x1, y1, x2, y2 = (float(v) for v in box)
        self.results.append({"image_id": int(ids[b]), "category_id": 0,
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})

  def compute(self, out_dir: str | None = None) -> dict[str, float]:
    gt = ground_truth(self.ann_file)
    cat = person_category(gt, self.category_id)
    results = [dict(r, category_id=cat) for r in self.results]
    if out_dir:
      os.makedirs(out_dir, exist_ok=True)
      with open(os.path.join(out_dir, RESULTS_FILE), "w") as f:
        json.dump(results, f)
    return box_stats(gt, results, cat)


def ground_truth(ann_file):
  """pycocotools' COCO of `ann_file`; a keypoint file's annotations without a category are the
  person's (id 1), as are its missing categories."""
  # why: pycocotools only where a detector is scored
  from pycocotools.coco import COCO
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(str(ann_file))
  if "categories" not in gt.dataset or any(
      "category_id" not in a for a in gt.dataset.get("annotations", [])):
    for ann in gt.dataset.get("annotations", []):
      ann.setdefault("category_id", 1)
    gt.dataset.setdefault("categories", [{"id": 1, "name": "person"}])
    with contextlib.redirect_stdout(io.StringIO()):
      gt.createIndex()
  return gt


def person_category(gt, category_id: int | None = None) -> int:
  """`category_id`, else the category named "person", else the first."""
  if category_id is not None:
    return int(category_id)
  named = [c["id"] for c in gt.loadCats(gt.getCatIds()) if c.get("name") == "person"]
  return named[0] if named else gt.getCatIds()[0]


def box_stats(gt, results, category_id: int) -> dict[str, float]:
  """COCOeval(iouType "bbox") of COCO detection `results` (theirs under `category_id`) on
  `gt`'s `category_id` boxes (crowd boxes ignored as COCOeval does): BOX_STATS. No detection: 0
  (-1 where there is no GT)."""
  # why: pycocotools only where a detector is scored
  from pycocotools.cocoeval import COCOeval
  image_ids = sorted(gt.getImgIds())
  if not results:
    has_gt = bool(gt.getAnnIds(imgIds=image_ids, catIds=[category_id], iscrowd=False))
    return {k: (0.0 if has_gt else -1.0) for k in BOX_STATS}
  with contextlib.redirect_stdout(io.StringIO()):
    dt = gt.loadRes(results)
    ev = COCOeval(gt, dt, "bbox")
    ev.params.imgIds = image_ids
    ev.params.catIds = [category_id]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return {k: float(v) for k, v in zip(BOX_STATS, ev.stats)}
