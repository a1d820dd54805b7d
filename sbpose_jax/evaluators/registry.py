"""Evaluators: one per metric family, chosen by the dataset type (docs/design.md, "Evaluators").

`EVALUATORS[type](records, config, **overrides)` → object with `process(preds)` and
`compute(out_dir=None) -> dict[str, float]`; each `EvalType` also declares its table columns,
main metric, notes and ground-truth files. `loop.run_evaluation` runs a model over an evaluation
set into an evaluator. `score_results_file` scores an existing results file with no model, and
`format_table` prints the columns.

Labelled variants (docs/reference.md §0): keys ending in `_corrected` use the convention
MMPose adopted after the published table (AIC sigmas ×1, MPII Mean@0.1 at threshold 0.10); the
unsuffixed keys reproduce the table (AIC sigmas ×2, MPII threshold 0.11).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable


from sbpose_jax.evaluators import coco, coco_bbox, pck, posetrack

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
    # A person detector's box AP (the detection task, training/det_task.py).
    "coco_bbox": EvalType(coco_bbox.CocoBoxEvaluator, tuple(
        (c, c) for c in ("AP", "AP50", "AP75", "AP(M)", "AP(L)", "AR100")), "AP"),
}


def main_metric(eval_type: str, metrics: dict[str, float]) -> str:
  """The key of `metrics` that ranks models: the type's main metric (else the first key)."""
  name = EVALUATORS[eval_type].main_metric
  return name if name in metrics else next(iter(metrics))
