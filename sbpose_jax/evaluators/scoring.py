"""Scoring an existing results file with no model: our own and the reference tools' formats."""
from __future__ import annotations

import numpy as np

from sbpose_jax.data.readers.common import load_json
from sbpose_jax.evaluators import coco, pck, posetrack
from sbpose_jax.evaluators.registry import EVALUATORS
from sbpose_jax.evaluators.results import check_numbers


def score_results_file(eval_type: str, ann_file: str, results_file: str, **kw
                       ) -> dict[str, float]:
  """Scores an existing results file with no model.

  Args:
    eval_type: a key of EVALUATORS.
    ann_file: the ground-truth annotation file (PoseTrack18: the combined val json or the
      folder of per-sequence files; MPII: the val json, whose folder holds mpii_gt_val.mat,
      or pass gt_file=).
    results_file: coco-style types: a results list; mpii: our keypoints.json (entries with
      'index') or MMPose's pred.mat; mpii_trb: entries with 'ann_id' (or 'bbox_id');
      posetrack18: a results list or a folder of per-sequence prediction files.
    **kw: backend=, crowd_ignore= (coco-style), gt_file= (mpii), gt_folder= (posetrack18).
  Returns:
    The metric dict of `EVALUATORS[eval_type](...).compute()`.
  Raises:
    ValueError: wrong joint count, unknown image ids, NaN values, malformed file.
  """
  if eval_type not in EVALUATORS:
    raise ValueError(f"unknown evaluation type {eval_type!r}; known: {sorted(EVALUATORS)}")
  kw = {**EVALUATORS[eval_type].find_gt(ann_file, ""), **kw}
  if eval_type in coco.SETTINGS:
    gt = load_json(ann_file, "annotation file")
    results = coco.load_results(eval_type, gt, results_file)
    return coco.score_results(eval_type, gt, results, gt_path=ann_file,
                              backend=kw.get("backend", "auto"),
                              crowd_ignore=kw.get("crowd_ignore", "labelled"))
  if eval_type == "mpii":
    n = pck.load_mpii_gt(kw["gt_file"])["pos_gt_src"].shape[2]
    return pck.score_mpii(_mpii_results(results_file, n), kw["gt_file"])
  if eval_type == "mpii_trb":
    return pck.trb_accuracy(_trb_results(results_file, ann_file), ann_file)
  gt_folder = kw["gt_folder"]
  return posetrack.score_predictions(gt_folder, posetrack.load_results(results_file, gt_folder))


def _mpii_results(path: str, n: int) -> np.ndarray:
  """(n, 16, 2) 0-based predictions from our keypoints.json or MMPose's pred.mat (1-based)."""
  if path.endswith(".mat"):
    from scipy.io import loadmat  # why: scipy serves only MPII's .mat files
    preds = np.asarray(loadmat(path).get("preds", np.zeros(0)), np.float64)
    if preds.ndim != 3 or preds.shape[1:] != (16, 2) or len(preds) != n:
      raise ValueError(f"{path}: 'preds' must have shape ({n}, 16, 2), got {preds.shape}")
    if not np.isfinite(preds).all():
      raise ValueError(f"{path}: 'preds' contains NaN or inf")
    return preds - 1.0
  res = load_json(path, "results file")
  if not isinstance(res, list):
    raise ValueError(f"{path}: results must be a JSON list")
  out = np.full((n, 16, 2), np.nan)
  for i, r in enumerate(res):
    index = r.get("index") if isinstance(r, dict) else None
    if not _is_int(index) or not 0 <= index < n:
      raise ValueError(f"{path}: entry {i} needs an integer 'index' in [0, {n}) (the annotation "
                       "row)")
    kpts = _entry_keypoints(path, i, r, 16, "MPII")[:, :2]
    if np.isnan(out[index]).all():   # an instance listed twice: the first copy counts (MMPose)
      out[index] = kpts
  return out


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _entry_keypoints(path: str, i: int, entry: dict, num_joints: int, name: str) -> np.ndarray:
  """(K, 3) keypoints of results entry i, checked for the joint count and finite values.

  Flat [x, y, s] * K (COCO-style), or K lists [x, y, s] as MMPose's TopDownMpiiTrbDataset and
  TopDownMpiiDataset write them (`keypoints[i].tolist()` of a (K, 3) array).
  """
  values = entry.get("keypoints")
  what = f"{path}: entry {i} 'keypoints'"
  if isinstance(values, list) and values and all(isinstance(v, list) for v in values):
    for j, v in enumerate(values):
      check_numbers(v, f"{what}[{j}]")
      if len(v) not in (2, 3):
        raise ValueError(f"{what}[{j}] must be [x, y] or [x, y, score], got {len(v)} numbers")
    values = [x for v in values for x in (v if len(v) == 3 else v + [1.0])]
  else:
    check_numbers(values, what)
  k = np.asarray(values, np.float64)
  if k.size != 3 * num_joints:
    raise ValueError(f"{path}: entry {i} has {k.size / 3:g} joints; {name} has {num_joints}")
  if not np.isfinite(k).all():
    raise ValueError(f"{path}: entry {i} contains NaN or inf")
  return k.reshape(num_joints, 3)


def _trb_results(path: str, ann_file: str) -> dict[int, np.ndarray]:
  res = load_json(path, "results file")
  gt = load_json(ann_file, "MPII-TRB annotation file")
  known = {a["id"] for a in gt.get("annotations", [])}
  if not isinstance(res, list):
    raise ValueError(f"{path}: results must be a JSON list")
  out = {}
  for i, r in enumerate(res):
    if not isinstance(r, dict):
      raise ValueError(f"{path}: entry {i} is not an object")
    key = r.get("ann_id", r.get("bbox_id"))
    if not _is_int(key) or key not in known:
      raise ValueError(f"{path}: entry {i} refers to annotation id {key!r}, not in {ann_file}")
    kpts = _entry_keypoints(path, i, r, 40, "MPII-TRB")
    out.setdefault(key, kpts)   # an annotation listed twice: the first copy counts (MMPose)
  return out
