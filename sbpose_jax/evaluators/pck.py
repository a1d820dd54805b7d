"""Head-normalised PCK metrics: MPII PCKh and MPII-TRB accuracy (docs/reference.md §6.3).

MPII follows MMPose 0.x `TopDownMpiiDataset.evaluate` (itself MS `mpii.py`): ground truth, head
boxes and missing-joint flags from the official `mpii_gt_val.mat`, predictions in annotation
order, 1-based. "Mean@0.1" in the published table is PCKh at 0.11 (index 11 of
arange(0, 0.51, 0.01)); MMPose >= v0.17 uses 0.10. Both are reported, labelled.
MPII-TRB follows `TopDownMpiiTrbDataset._report_metric`.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from sbpose_jax.data.readers.common import load_json
from sbpose_jax.evaluators import results as results_lib

SC_BIAS = 0.6
PCKH_RANGE = np.arange(0, 0.5 + 0.01, 0.01)
# Names used inside mpii_gt_val.mat's `dataset_joints`.
MAT_JOINTS = ("rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck", "head",
              "rwri", "relb", "rsho", "lsho", "lelb", "lwri")
PCKH_COLUMNS = (("Head", ("head",)), ("Sho", ("lsho", "rsho")), ("Elb", ("lelb", "relb")),
                ("Wri", ("lwri", "rwri")), ("Hip", ("lhip", "rhip")), ("Knee", ("lkne", "rkne")),
                ("Ank", ("lank", "rank")))
TRB_COLUMNS = ("Skeleton_Acc", "Contour_Acc", "Mean_Acc")


def _mat_names(dataset_joints) -> list[str]:
  """`dataset_joints` as loadmat returns it (a 1×16 cell array) → 16 strings."""
  out = []
  for x in np.asarray(dataset_joints, dtype=object).ravel():
    x = np.asarray(x).ravel()
    out.append(str(x[0]) if x.size else "")
  return out


def load_mpii_gt(path: str) -> dict[str, np.ndarray]:
  """Reads the PCKh ground truth.

  Args:
    path: the official `mpii_gt_val.mat` (pos_gt_src (16, 2, N), headboxes_src (2, 2, N),
      jnt_missing (16, N), dataset_joints (1, 16) cell), or a json list in MMPose's MPII format
      whose entries also carry `headbox` [x1, y1, x2, y2] (1-based, like the .mat).
  Returns:
    dict with those four arrays (joint_names as a list of str).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"MPII PCKh ground truth not found: {path} (the official "
                            "mpii_gt_val.mat, placed beside the annotation file)")
  if path.endswith(".json"):
    anns = load_json(path, "MPII ground truth")
    if not anns or any("headbox" not in a for a in anns):
      raise ValueError(f"{path}: every entry needs a 'headbox' [x1, y1, x2, y2] for PCKh")
    joints = np.asarray([a["joints"] for a in anns], np.float64)          # (N, 16, 2)
    boxes = np.asarray([a["headbox"] for a in anns], np.float64).reshape(-1, 2, 2)
    return {"pos_gt_src": joints.transpose(1, 2, 0), "headboxes_src": boxes.transpose(1, 2, 0),
            "jnt_missing": 1 - np.asarray([a["joints_vis"] for a in anns], np.float64).T,
            "joint_names": list(MAT_JOINTS)}
  from scipy.io import loadmat  # why: scipy serves only MPII's .mat files
  try:
    m = loadmat(path)
    return {"pos_gt_src": np.asarray(m["pos_gt_src"], np.float64),
            "headboxes_src": np.asarray(m["headboxes_src"], np.float64),
            "jnt_missing": np.asarray(m["jnt_missing"], np.float64),
            "joint_names": _mat_names(m["dataset_joints"])}
  except KeyError as e:
    raise ValueError(f"{path}: not an MPII ground-truth .mat (lacks {e})") from None


def pckh(preds_1based: np.ndarray, gt: dict[str, np.ndarray]) -> dict[str, float]:
  """MPII PCKh table (fractions, not percent).

  Args:
    preds_1based: (N, 16, 2) predictions in MATLAB (1-based) pixel coordinates, GT order.
    gt: `load_mpii_gt` output.
  Returns:
    Head, Sho, Elb, Wri, Hip, Knee, Ank, Mean (PCKh@0.5), 'Mean@0.1' (as published: threshold
    0.11), 'Mean@0.1_corrected' (threshold 0.10), and 'PCKh_<joint>' per joint.
  """
  pos_gt = gt["pos_gt_src"]
  n = pos_gt.shape[2]
  if preds_1based.shape != (n, 16, 2):
    raise ValueError(f"PCKh needs predictions of shape ({n}, 16, 2) in ground-truth order; "
                     f"got {preds_1based.shape}")
  visible = 1 - gt["jnt_missing"]                                         # (16, N)
  err = np.linalg.norm(np.transpose(preds_1based, [1, 2, 0]) - pos_gt, axis=1)
  heads = gt["headboxes_src"]
  head_size = np.linalg.norm(heads[1] - heads[0], axis=0) * SC_BIAS      # (N,)
  scaled = err / head_size[None, :] * visible
  count = visible.sum(axis=1)     # (16,); a joint never visible scores 0 (the reference: NaN)
  # pckAll of the reference: every threshold of PCKH_RANGE, float32 like the reference.
  hits = np.stack([((scaled <= t) * visible).sum(axis=1) for t in PCKH_RANGE])
  pck_all = (100.0 * hits / np.maximum(count, 1)).astype(np.float32)      # (51, 16)
  pck_half = 100.0 * ((scaled <= 0.5) * visible).sum(axis=1) / np.maximum(count, 1)
  # Pelvis and thorax (rows 6, 7) are left out of the means; the others are instance-weighted.
  weight = count.astype(np.float64).copy()
  weight[6:8] = 0
  ratio = weight / weight.sum()
  names = list(gt["joint_names"])
  if set(MAT_JOINTS) - set(names):
    raise ValueError(f"MPII ground truth: dataset_joints {names} lacks "
                     f"{sorted(set(MAT_JOINTS) - set(names))}")
  idx = {name: names.index(name) for name in MAT_JOINTS}
  out = {col: float(np.mean([pck_half[idx[j]] for j in joints])) / 100
         for col, joints in PCKH_COLUMNS}
  out["Mean"] = float(np.sum(pck_half * ratio)) / 100
  out["Mean@0.1"] = float(np.sum(pck_all[11] * ratio)) / 100
  out["Mean@0.1_corrected"] = float(np.sum(pck_all[10] * ratio)) / 100
  out.update({f"PCKh_{name}": float(pck_half[i]) / 100 for i, name in enumerate(names)})
  return out


def trb_accuracy(preds: dict[int, np.ndarray], ann_file: str) -> dict[str, float]:
  """MPII-TRB Skeleton / Contour / Mean accuracy (micro averages, strict `<`).

  Args:
    preds: annotation id → (40, 2+) predicted image coordinates.
    ann_file: MPII-TRB json; each scored annotation needs `headbox` [x1, y1, x2, y2].
  """
  gt = load_json(ann_file, "MPII-TRB annotation file")
  hit = np.zeros(40)
  exist = np.zeros(40)
  missing = 0
  for a in gt.get("annotations", []):
    if max(a["keypoints"]) == 0:
      continue           # the reference drops these from its database
    if "headbox" not in a:
      raise ValueError(f"{ann_file}: annotation {a.get('id')} has no 'headbox', which the "
                       "TRB metric needs")
    k = np.asarray(a["keypoints"], np.float32).reshape(40, 3)
    vis = np.minimum(k[:, 2], 1) > 0
    box = np.asarray(a["headbox"], np.float64)
    thr = np.linalg.norm(box[:2] - box[2:]) * 0.3
    exist += vis
    if a["id"] not in preds:
      missing += 1
      continue
    dist = np.linalg.norm(np.asarray(preds[a["id"]])[:, :2] - k[:, :2], axis=1)
    hit += vis & (dist < thr)
  if missing and preds:
    logging.warning("MPII-TRB: %d annotations have no prediction; counted as misses", missing)
  ratio = lambda h, e: float(h.sum() / e.sum()) if e.sum() else 0.0
  return {"Skeleton_Acc": ratio(hit[:14], exist[:14]), "Contour_Acc": ratio(hit[14:], exist[14:]),
          "Mean_Acc": ratio(hit, exist)}


def _ordered(buffer: results_lib.PredictionBuffer, n: int, name: str) -> np.ndarray:
  """(n, K, 3) predictions by record row; rows without a prediction are NaN."""
  p = buffer.collect()
  out = np.full((n, buffer.num_joints, 3), np.nan, np.float32)
  if len(p["index"]) and (p["index"].min() < 0 or p["index"].max() >= n):
    raise ValueError(f"{name}: prediction index outside the {n} evaluation records")
  out[p["index"]] = p["keypoints"]
  if 0 < len(p["index"]) < n:
    logging.warning("%s: %d of %d instances have no prediction; counted as misses", name,
                    n - len(p["index"]), n)
  return out


def _write(out_dir, records, preds: np.ndarray, key: str, keys) -> None:
  os.makedirs(out_dir, exist_ok=True)
  image_ids = np.asarray(records.image_ids)[np.asarray(records.image_index)]
  res = [{key: int(keys[i]), "image_id": int(image_ids[i]),
          "keypoints": preds[i].reshape(-1).tolist()}
         for i in range(len(preds)) if np.isfinite(preds[i]).all()]
  with open(os.path.join(out_dir, "keypoints.json"), "w") as f:
    json.dump(res, f)


class MpiiEvaluator:
  """PCKh on MPII val. GT: `gt_file=`, else config.data.gt_mat_file (under data.root), else
  `mpii_gt_val.mat` beside the annotation file (where MMPose looks)."""

  def __init__(self, records, config=None, *, ann_file: str | None = None,
               gt_file: str | None = None, **_):
    self.records = records
    if gt_file is None and config is not None and config.data.gt_mat_file:
      gt_file = os.path.join(config.data.root, config.data.gt_mat_file)
    if gt_file is None:
      if ann_file is None:
        ann_file = os.path.join(config.data.root, config.data.val_ann)
      gt_file = os.path.join(os.path.dirname(ann_file), "mpii_gt_val.mat")
    self.gt_file = gt_file
    self.buffer = results_lib.PredictionBuffer(16, "mpii")

  def process(self, preds: dict) -> None:
    self.buffer.add(preds)

  def reset(self) -> None:
    self.buffer.reset()

  def compute(self, out_dir: str | None = None) -> dict[str, float]:
    n = len(self.records.image_index)
    preds = _ordered(self.buffer, n, "MPII")
    if out_dir:
      _write(out_dir, self.records, preds, "index", np.arange(n))
    return score_mpii(preds[..., :2], self.gt_file)


def score_mpii(preds_0based: np.ndarray, gt_file: str) -> dict[str, float]:
  """PCKh of (N, 16, 2) 0-based predictions; NaN rows (no prediction) count as misses."""
  gt = load_mpii_gt(gt_file)
  preds = np.where(np.isfinite(preds_0based), preds_0based, 1e9).astype(np.float32)
  return pckh(preds + np.float32(1.0), gt)


class MpiiTrbEvaluator:
  """MPII-TRB accuracy; predictions are matched to annotations by `records.ann_ids`."""

  def __init__(self, records, config=None, *, ann_file: str | None = None, **_):
    self.records = records
    self.ann_file = ann_file or os.path.join(config.data.root, config.data.val_ann)
    self.buffer = results_lib.PredictionBuffer(40, "mpii_trb")

  def process(self, preds: dict) -> None:
    self.buffer.add(preds)

  def reset(self) -> None:
    self.buffer.reset()

  def compute(self, out_dir: str | None = None) -> dict[str, float]:
    n = len(self.records.image_index)
    preds = _ordered(self.buffer, n, "MPII-TRB")
    ann_ids = np.asarray(self.records.ann_ids)
    if out_dir:
      _write(out_dir, self.records, preds, "ann_id", ann_ids)
    by_id = {int(ann_ids[i]): preds[i] for i in range(n) if np.isfinite(preds[i]).all()}
    return trb_accuracy(by_id, self.ann_file)
