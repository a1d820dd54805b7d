"""Prediction buffers and results checks: what every metric family accumulates and validates.

`PredictionBuffer` collects the per-batch predictions of an evaluation run; `check_results`
validates a COCO-style results list (errors name the file and entry).
"""
from __future__ import annotations

import numpy as np


# Keys of the per-batch prediction dict (docs/design.md, "Evaluators").
PRED_KEYS = ("index", "keypoints", "center", "scale", "bbox_score")


class PredictionBuffer:
  """Accumulates `process(preds)` batches; `collect()` returns them sorted by record row.

  Duplicated rows (padding, or the same box seen twice) are dropped like MMPose's
  `_sort_and_unique_bboxes`. A `mask` key, if present, removes padded entries.
  """

  def __init__(self, num_joints: int, dataset: str = ""):
    self.num_joints = num_joints
    self.dataset = dataset
    self._parts: list[dict[str, np.ndarray]] = []

  def add(self, preds: dict) -> None:
    """Adds a batch: index (B,), keypoints (B, K, 3), center, scale (B, 2), bbox_score (B,)."""
    missing = [k for k in ("index", "keypoints") if k not in preds]
    if missing:
      raise ValueError(f"predictions lack the fields {missing}; expected {PRED_KEYS}")
    kpts = np.asarray(preds["keypoints"], np.float32)
    if kpts.ndim != 3 or kpts.shape[1:] != (self.num_joints, 3):
      raise ValueError(f"predictions['keypoints'] has shape {kpts.shape}; expected "
                       f"(B, {self.num_joints}, 3) for dataset {self.dataset!r}")
    b = kpts.shape[0]
    part = {"index": np.asarray(preds["index"], np.int64).reshape(b), "keypoints": kpts,
            "center": np.asarray(preds.get("center", np.zeros((b, 2))), np.float32).reshape(b, 2),
            "scale": np.asarray(preds.get("scale", np.zeros((b, 2))), np.float32).reshape(b, 2),
            "bbox_score": np.asarray(preds.get("bbox_score", np.ones(b)), np.float32).reshape(b)}
    if "mask" in preds:
      keep = np.asarray(preds["mask"], bool).reshape(b)
      part = {k: v[keep] for k, v in part.items()}
    if not np.isfinite(part["keypoints"]).all():
      raise ValueError(f"predictions for dataset {self.dataset!r} contain NaN or inf keypoints")
    self._parts.append(part)

  def __len__(self) -> int:
    return sum(len(p["index"]) for p in self._parts)

  def collect(self) -> dict[str, np.ndarray]:
    """All predictions, unique by `index`, sorted by it."""
    if not self._parts:
      k = self.num_joints
      return {"index": np.zeros(0, np.int64), "keypoints": np.zeros((0, k, 3), np.float32),
              "center": np.zeros((0, 2), np.float32), "scale": np.zeros((0, 2), np.float32),
              "bbox_score": np.zeros(0, np.float32)}
    allp = {k: np.concatenate([p[k] for p in self._parts]) for k in self._parts[0]}
    _, first = np.unique(allp["index"], return_index=True)
    return {k: v[first] for k, v in allp.items()}

  def reset(self) -> None:
    self._parts = []


def check_numbers(values, what: str) -> None:
  """Raises one ValueError naming `what` unless `values` is a list of JSON numbers."""
  if not isinstance(values, (list, tuple)):
    raise ValueError(f"{what} must be a list of numbers, got {type(values).__name__}")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
      raise ValueError(f"{what} must hold numbers only, got {v!r} ({type(v).__name__})")


def check_results(results, num_joints: int, image_ids, source: str,
                  keypoint_fields: tuple[str, ...] = ("keypoints",),
                  require_score: bool = True) -> None:
  """Validates a COCO-style results list; raises one ValueError naming `source`.

  Args:
    results: list of dicts with image_id, keypoint_fields (flat [x, y, s] × K), score.
    num_joints: expected K summed over `keypoint_fields`.
    image_ids: the ground truth's image ids.
    source: file name (or description) used in the messages.
    keypoint_fields: fields whose concatenation holds the K joints (WholeBody splits them).
    require_score: every entry needs a numeric `score` (the COCO-style metrics rank by it);
      where optional, a given score must still be a number.
  """
  if not isinstance(results, list):
    raise ValueError(f"{source}: results must be a JSON list of objects, got "
                     f"{type(results).__name__}")
  known = set(image_ids)
  unknown = []
  for i, r in enumerate(results):
    if not isinstance(r, dict) or "image_id" not in r:
      raise ValueError(f"{source}: entry {i} is not an object with an 'image_id'")
    if r["image_id"] not in known:
      unknown.append(r["image_id"])
    missing = [k for k in keypoint_fields + (("score",) if require_score else ()) if k not in r]
    if missing:
      raise ValueError(f"{source}: entry {i} (image {r['image_id']}) lacks {missing}")
    for k in keypoint_fields:
      check_numbers(r[k], f"{source}: entry {i} (image {r['image_id']}) {k!r}")
    score = r.get("score", 0.0)
    check_numbers([score], f"{source}: entry {i} (image {r['image_id']}) 'score'")
    n = sum(len(r[k]) for k in keypoint_fields)
    if n != 3 * num_joints:
      raise ValueError(f"{source}: entry {i} (image {r['image_id']}) has {n} keypoint values "
                       f"= {n / 3:g} joints; the dataset has {num_joints} joints "
                       f"({3 * num_joints} values)")
    values = np.asarray([v for k in keypoint_fields for v in r[k]] + [score], np.float64)
    if not np.isfinite(values).all():
      raise ValueError(f"{source}: entry {i} (image {r['image_id']}) contains NaN or inf")
  if unknown:
    raise ValueError(f"{source}: {len(unknown)} results refer to image ids not in the ground "
                     f"truth, e.g. {sorted(set(unknown), key=str)[:5]}")
