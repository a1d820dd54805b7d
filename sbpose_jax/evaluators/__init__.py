"""Evaluators: one per metric family, chosen by the dataset type (docs/design.md, "Evaluators").

`EVALUATORS[type](records, config, **overrides)` → object with `process(preds)` and
`compute(out_dir=None) -> dict[str, float]`; each `EvalType` also declares its table columns,
main metric, notes and ground-truth files. `loop.run_evaluation` runs a model over an evaluation
set into an evaluator. `score_results_file` scores an existing results file with no model, and
`format_table` prints the columns.

Labelled variants (reference-conventions §0): keys ending in `_corrected` use the convention
MMPose adopted after the published table (AIC sigmas ×1, MPII Mean@0.1 at threshold 0.10); the
unsuffixed keys reproduce the table (AIC sigmas ×2, MPII threshold 0.11).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import numpy as np

from sbpose_jax.evaluators import coco, pck, posetrack, postprocess

# Table columns: (label, metric key).
_COCO_COLS = (("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("AR", "AR"), ("AR50", "AR50"))


def _beside_ann(ann_file: str, configured: str) -> dict:
  del configured
  return {"ann_file": ann_file}


def _mpii_gt(ann_file: str, configured: str) -> dict:
  """PCKh reads `mpii_gt_val.mat`: the configured file, else the one beside the json (MMPose)."""
  return {"ann_file": ann_file, "gt_file": configured or os.path.join(os.path.dirname(ann_file),
                                                                        "mpii_gt_val.mat")}


def _posetrack_gt(ann_file: str, configured: str) -> dict:
  """poseval reads one json per sequence: the configured folder, else MMPose's rule
  (annotations/posetrack18_val.json -> annotations/val/; a folder of sequences is itself)."""
  found = ann_file if os.path.isdir(ann_file) else posetrack.gt_folder_for(ann_file)
  return {"ann_file": ann_file, "gt_folder": configured or found}


@dataclasses.dataclass(frozen=True)
class EvalType:
  """One evaluation type: how to make its evaluator and what its published table says.

  Calling it makes the evaluator: `EVALUATORS[type](records, config, **overrides)`, with the
  ground-truth files found from `config.data` unless `overrides` name them.

  Attributes:
    make: the evaluator class (or a partial of it).
    columns: the table's (label, metric key) pairs, as `format_table` prints them.
    published: how many leading `columns` the published (2020 MMPose) table has.
    main_metric: the headline number; training keeps the model that maximises it (model_best).
    gt_field: the `config.data` field naming extra ground truth ("" if none), under data.root.
    find_gt: (annotation file, configured gt path or "") -> the evaluator's file kwargs.
    notes: printed under the table.
    percent: the table is published in percent (PoseTrack18).
  """
  make: Callable[..., Any]
  columns: tuple[tuple[str, str], ...]
  main_metric: str
  published: int = 0
  gt_field: str = ""
  find_gt: Callable[[str, str], dict] = _beside_ann
  notes: str = ""
  percent: bool = False

  def __call__(self, records, config=None, **overrides):
    files = self.ground_truth(config.data) if config is not None else {}
    return self.make(records, config, **{**files, **overrides})

  def ground_truth(self, data) -> dict:
    """The evaluator's file kwargs for a config's `data` section (paths under data.root)."""
    configured = data[self.gt_field] if self.gt_field else ""
    return self.find_gt(os.path.join(data.root, data.val_ann),
                        os.path.join(data.root, configured) if configured else "")

  @property
  def published_columns(self) -> tuple[tuple[str, str], ...]:
    return self.columns[:self.published or len(self.columns)]


def _coco(eval_type: str, columns=_COCO_COLS, main_metric: str = "AP", **kw) -> EvalType:
  return EvalType(functools.partial(coco.CocoEvaluator, eval_type=eval_type), columns,
                  main_metric, **kw)


EVALUATORS = {
    "coco": _coco("coco"),
    "ochuman": _coco("ochuman"),
    "aic": _coco("aic", _COCO_COLS + tuple((f"{label} (sigmas x1)", f"{key}_corrected")
                                           for label, key in _COCO_COLS), published=5,
                 notes="AP..AR50: OKS with AIC sigmas x2 as in the published table; "
                       "'(sigmas x1)': the corrected sigmas (MMPose >= 2021-01)."),
    "crowdpose": _coco("crowdpose", (("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"),
                                     ("AP(E)", "AP(E)"), ("AP(M)", "AP(M)"), ("AP(H)", "AP(H)")),
                       notes="AP(E/M/H): images with crowdIndex < 0.2 / [0.2, 0.8) / >= 0.8; "
                             "-1 if none."),
    "coco_wholebody": _coco(
        "coco_wholebody", tuple((f"{p.capitalize()} {s}", f"{p}_{s}")
                                for p in ("body", "foot", "face", "hand", "whole")
                                for s in ("AP", "AR")), "whole_AP",
        notes="Hand = mean of left and right hand AP/AR (how the table combined them is not "
              "documented). The res50 256x192 row's Whole AP/AR 0.457/0.578 is probably a typo "
              "for 0.520/0.633 (later README)."),
    "mpii": EvalType(pck.MpiiEvaluator, (("Mean", "Mean"), ("Mean@0.1", "Mean@0.1"),
                                         ("Mean@0.1 (PCKh@0.10)", "Mean@0.1_corrected")),
                     "Mean", published=2, gt_field="gt_mat_file", find_gt=_mpii_gt,
                     notes="Mean@0.1 as published is PCKh at threshold 0.11; MMPose >= v0.17 "
                           "uses 0.10."),
    "mpii_trb": EvalType(pck.MpiiTrbEvaluator, (("Skeleton Acc", "Skeleton_Acc"),
                                                ("Contour Acc", "Contour_Acc"),
                                                ("Mean Acc", "Mean_Acc")), "Mean_Acc"),
    "posetrack18": EvalType(posetrack.PoseTrackEvaluator, tuple(
        (c, c) for c in ("Head", "Shou", "Elb", "Wri", "Hip", "Knee", "Ankl", "Total")),
                            "Total", gt_field="val_gt_dir", find_gt=_posetrack_gt, percent=True),
}


def main_metric(eval_type: str, metrics: dict[str, float]) -> str:
  """The key of `metrics` that ranks models: the type's main metric (else the first key)."""
  name = EVALUATORS[eval_type].main_metric
  return name if name in metrics else next(iter(metrics))


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
    gt = postprocess.load_json(ann_file, "annotation file")
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
  res = postprocess.load_json(path, "results file")
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
  """(K, 3) keypoints of results entry i, checked for the joint count and finite values."""
  postprocess.check_numbers(entry.get("keypoints"), f"{path}: entry {i} 'keypoints'")
  k = np.asarray(entry["keypoints"], np.float64)
  if k.size != 3 * num_joints:
    raise ValueError(f"{path}: entry {i} has {k.size / 3:g} joints; {name} has {num_joints}")
  if not np.isfinite(k).all():
    raise ValueError(f"{path}: entry {i} contains NaN or inf")
  return k.reshape(num_joints, 3)


def _trb_results(path: str, ann_file: str) -> dict[int, np.ndarray]:
  res = postprocess.load_json(path, "results file")
  gt = postprocess.load_json(ann_file, "MPII-TRB annotation file")
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


def format_table(metrics: dict[str, float], columns=None) -> str:
  """Two aligned lines (header, values) for `columns`.

  Args:
    metrics: output of `compute()`.
    columns: an evaluation type (its columns), a list of keys, or (label, key) pairs;
      None prints every metric.
  """
  note, percent = "", False
  if isinstance(columns, str):
    kind = EVALUATORS[columns]
    note, percent, columns = kind.notes, kind.percent, kind.columns
  columns = [(c, c) if isinstance(c, str) else tuple(c) for c in (columns or metrics)]
  cells = []
  for label, key in columns:
    v = metrics.get(key, float("nan"))
    text = f"{v:.1f}" if percent else f"{v:.3f}"
    width = max(len(label), len(text))
    cells.append((label.rjust(width), text.rjust(width)))
  lines = [" | ".join(c[0] for c in cells), " | ".join(c[1] for c in cells)]
  return "\n".join(lines + ([f"note: {note}"] if note else []))
