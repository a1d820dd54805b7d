"""Annotation files of the eight datasets -> `Records`, centre/scale by each dataset's convention.

  common.py       JSON loading and field checks (errors name the file and the field)
  coco_style.py   COCO, COCO-WholeBody, OCHuman, AIC, CrowdPose, PoseTrack18; detector boxes
  mpii_style.py   MPII (+ its .mat ground truth), MPII-TRB

`READERS[dataset](ann_file, image_root, **kw)`; `read_split(config.data, "train"|"val")` reads a
config's split.
"""
from __future__ import annotations

import pathlib

from sbpose_jax.data.readers.coco_style import (box_to_center_scale, read_aic, read_coco,
                                                read_coco_wholebody, read_crowdpose,
                                                read_detections, read_ochuman, read_posetrack18)
from sbpose_jax.data.readers.common import load_json
from sbpose_jax.data.readers.mpii_style import read_mpii, read_mpii_gt_mat, read_mpii_trb
from sbpose_jax.data.records import Records
from sbpose_jax.sizes import Sizes

__all__ = ["READERS", "read", "read_split", "load_json", "box_to_center_scale", "read_aic",
           "read_coco", "read_coco_wholebody", "read_crowdpose", "read_detections", "read_ochuman",
           "read_posetrack18", "read_mpii", "read_mpii_gt_mat", "read_mpii_trb"]

READERS = {"coco": read_coco, "coco_wholebody": read_coco_wholebody, "ochuman": read_ochuman,
           "aic": read_aic, "crowdpose": read_crowdpose, "posetrack18": read_posetrack18,
           "mpii": read_mpii, "mpii_trb": read_mpii_trb}


def read(dataset: str, ann_file, image_root, **kw) -> Records:
  """Dispatches to `read_<dataset>`; kw are that reader's keyword arguments."""
  if dataset not in READERS:
    raise ValueError(f"no reader for dataset {dataset!r}; known: {sorted(READERS)}")
  return READERS[dataset](ann_file, image_root, **kw)


def read_split(data_cfg, split: str) -> Records:
  """Reads `split` ('train' or 'val') of a config's `data` section (configs/common.py fields).

  Training always uses GT boxes; 'val' uses `use_gt_bbox`, else `det_file` at `det_score_thr`.
  """
  if split not in ("train", "val"):
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")
  root = pathlib.Path(data_cfg.root)
  use_gt = True if split == "train" else bool(data_cfg.use_gt_bbox)
  kw = dict(input_size=Sizes.of(data_cfg).input_wh, padding=data_cfg.padding)
  if data_cfg.dataset not in ("mpii", "mpii_trb"):
    kw.update(use_gt_bbox=use_gt, det_score_thr=data_cfg.det_score_thr,
              det_file=None if use_gt else root / data_cfg.det_file)
  return read(data_cfg.dataset, root / data_cfg[f"{split}_ann"],
              root / data_cfg[f"{split}_images"], **kw)

