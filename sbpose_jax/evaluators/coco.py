"""COCO-style OKS AP/AR: COCO, OCHuman, AIC, CrowdPose, COCO-WholeBody (docs/reference.md §6.3).

The metric libraries do the scoring (pycocotools, faster-coco-eval, xtcocotools). MMPose scored
with xtcocotools; its two differences from pycocotools (a ground truth is ignored when it has no
joint with v > 0, whatever `num_keypoints` says; a result whose K scores are all <= 0 is
dropped) are applied here before any backend runs, so all three backends give the
xtcocotools numbers. `use_area=False` (AIC, CrowdPose) becomes a ground-truth area of
0.53·w·h, which is exactly what xtcocotools computes in that mode.

A metric with nothing to measure is -1, as the libraries report it: an area range or a
CrowdPose subset without ground truth. With no scoreable result at all the libraries still run
(with an empty detection list): 0 where there is ground truth, -1 where there is none.

CrowdPose's rule for ignoring a person (`crowd_ignore`): "labelled" (default) is the 2020
xtcocotools rule the published numbers were made with (ignore if no joint has v > 0);
"num_keypoints" is xtcocotools' rule since 2021-05 (>= 1.9, e.g. 1.14.3 under a current
MMPose): ignore if the file's `num_keypoints` is 0, which CrowdPose counts over v = 2 only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import warnings

import numpy as np

from sbpose_jax import keypoints as kp
from sbpose_jax.data.readers.common import load_json
from sbpose_jax.evaluators import results as results_lib
from sbpose_jax.inference import postprocess

KP_STATS = ("AP", "AP50", "AP75", "AP(M)", "AP(L)", "AR", "AR50", "AR75", "AR(M)", "AR(L)")
CROWD_STATS = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP(E)", "AP(M)", "AP(H)")
# WholeBody part -> (xtcocotools iouType, results/GT field).
WHOLEBODY_PARTS = {"body": ("keypoints_body", "keypoints"), "foot": ("keypoints_foot", "foot_kpts"),
                   "face": ("keypoints_face", "face_kpts"),
                   "lefthand": ("keypoints_lefthand", "lefthand_kpts"),
                   "righthand": ("keypoints_righthand", "righthand_kpts")}
BACKENDS = ("faster_coco_eval", "xtcocotools", "pycocotools")


@dataclasses.dataclass(frozen=True)
class CocoSetting:
  """How one dataset is scored."""
  kind: str                          # "keypoints", "keypoints_crowd" or "wholebody"
  use_area: bool                     # False: OKS area = 0.53·w·h of the GT box
  sigmas: tuple[float, ...]          # as used for the published table
  corrected_sigmas: tuple[float, ...] | None = None   # later-corrected convention (AIC)


SETTINGS = {
    "coco": CocoSetting("keypoints", True, kp.COCO.sigmas),
    "ochuman": CocoSetting("keypoints", True, kp.OCHUMAN.sigmas),
    # Published AIC numbers used the sigmas doubled; MMPose >= 2021-01 uses them as is (§0).
    "aic": CocoSetting("keypoints", False, kp.AIC.sigmas, kp.AIC_SIGMAS_CORRECTED),
    "crowdpose": CocoSetting("keypoints_crowd", False, kp.CROWDPOSE.sigmas),
    "coco_wholebody": CocoSetting("wholebody", True, kp.COCO_WHOLEBODY.sigmas),
}


def prepare_gt(gt: dict, use_area: bool, crowd_ignore: str = "labelled") -> dict:
  """Ground truth as xtcocotools sees it, for any backend (returns a new dict).

  Args:
    gt: COCO-format annotation dict.
    use_area: False replaces `area` by 0.53·w·h of the box.
    crowd_ignore: "labelled" sets `num_keypoints` to the count of joints with v > 0 (what
      xtcocotools did for CrowdPose in 2020 and always does for COCO-style data);
      "num_keypoints" keeps the file's field (xtcocotools' CrowdPose rule since 2021-05).
  """
  anns = []
  for a in gt.get("annotations", []):
    a = dict(a)
    a.setdefault("iscrowd", 0)   # AIC has none; xtcocotools reads a missing one as 0
    if crowd_ignore == "labelled" and "keypoints" in a:
      a["num_keypoints"] = int(np.count_nonzero(np.asarray(a["keypoints"])[2::3] > 0))
    if not use_area:
      b = a["bbox"]
      a["area"] = b[3] * b[2] * 0.53
    anns.append(a)
  return {**gt, "annotations": anns}


def _keep_scored(results: list[dict], field: str = "keypoints") -> list[dict]:
  """Drops results whose joint scores are all <= 0 (xtcocotools does; pycocotools does not)."""
  return [dict(r) for r in results if np.count_nonzero(np.asarray(r[field])[2::3] > 0) > 0]


def pick_backend(backend: str = "auto") -> str:
  """'auto' → faster-coco-eval if importable, else xtcocotools, else pycocotools."""
  if backend != "auto":
    if backend not in BACKENDS:
      raise ValueError(f"unknown COCO backend {backend!r}; choose from {BACKENDS} or 'auto'")
    return backend
  for name in BACKENDS:
    try:
      __import__(name)
      return name
    except ImportError:
      continue
  raise ImportError("no COCO evaluation library: pip install faster-coco-eval or pycocotools")


CROWD_IGNORE = {"2020": "labelled", "current": "num_keypoints"}   # command-line names


def crowd_ignore_rule(name: str) -> str:
  """'2020' / 'current' (or the rule names themselves) → 'labelled' / 'num_keypoints'."""
  rule = CROWD_IGNORE.get(str(name), str(name))
  if rule not in CROWD_IGNORE.values():
    raise ValueError(f"CrowdPose ignore rule must be one of {sorted(CROWD_IGNORE)}, got {name!r}")
  return rule


def _run_cocoeval(gt: dict, results: list[dict], sigmas, iou_type: str, backend: str,
                  gt_path: str | None = None) -> np.ndarray:
  """Runs one library's COCOeval and returns its `stats` (10 values, 9 for keypoints_crowd).

  `gt` must already hold the OKS areas (`prepare_gt`), so every backend runs with use_area.
  An empty `results` is scored as no detections (0 where there is ground truth, else -1).
  """
  sigmas = np.asarray(sigmas, np.float64)
  quiet = contextlib.redirect_stdout(io.StringIO())
  with quiet, warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if backend == "faster_coco_eval":
      # why (here and below): optional metric backends, the one chosen is imported
      from faster_coco_eval import COCO, COCOeval_faster
      coco_gt = COCO(gt)
      coco_dt = coco_gt.loadRes(results)
      ev = COCOeval_faster(coco_gt, coco_dt, iou_type, kpt_oks_sigmas=sigmas, use_area=True,
                           print_function=lambda *a, **k: None)
    elif backend == "xtcocotools":
      from xtcocotools.coco import COCO
      from xtcocotools.cocoeval import COCOeval
      # The crowd split re-reads the file named here; only its `images` are used.
      coco_gt = COCO(gt_path or "in-memory", ann_data=gt)
      coco_dt = coco_gt.loadRes(results)
      ev = COCOeval(coco_gt, coco_dt, iou_type, sigmas, use_area=True)
      ev.params.useSegm = None
    else:
      if iou_type != "keypoints":
        raise ValueError(f"pycocotools cannot score {iou_type!r}; use faster_coco_eval or "
                         "xtcocotools")
      from pycocotools.coco import COCO
      from pycocotools.cocoeval import COCOeval
      coco_gt = COCO()
      coco_gt.dataset = gt
      coco_gt.createIndex()
      if results:
        coco_dt = coco_gt.loadRes(results)
      else:   # pycocotools' loadRes cannot read an empty list; no detections is what it means
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(gt.get("images", [])), "annotations": [],
                           "categories": list(gt.get("categories", []))}
        coco_dt.createIndex()
      ev = COCOeval(coco_gt, coco_dt, iou_type)
      ev.params.kpt_oks_sigmas = sigmas
      ev.params.useSegm = None
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return np.asarray(ev.stats, np.float64)


def score_keypoints(gt: dict, results: list[dict], sigmas, *, crowd: bool = False,
                    use_area: bool = True, backend: str = "auto",
                    crowd_ignore: str = "labelled", gt_path: str | None = None
                    ) -> dict[str, float]:
  """OKS AP/AR of a results list against a COCO-format ground truth.

  Args:
    gt: annotation dict (not modified).
    results: [{image_id, category_id, keypoints [x, y, s] × K, score}] (not modified).
    sigmas: (K,) OKS sigmas.
    crowd: CrowdPose metric ('keypoints_crowd', with AP(E/M/H) from the images' crowdIndex).
    use_area: False → OKS area 0.53·w·h.
    backend: 'auto', 'faster_coco_eval', 'xtcocotools' or 'pycocotools'.
    crowd_ignore: see `prepare_gt` (CrowdPose only; COCO-style data always uses "labelled");
      '2020' and 'current' are accepted too (`crowd_ignore_rule`).
    gt_path: the annotation file (xtcocotools re-reads it for the crowd split).
  Returns:
    {'AP', 'AP50', ...}: KP_STATS, or CROWD_STATS when crowd.
  """
  names = CROWD_STATS if crowd else KP_STATS
  crowd_ignore = crowd_ignore_rule(crowd_ignore)
  results = _keep_scored(results)
  backend = pick_backend(backend)
  gt = prepare_gt(gt, use_area, crowd_ignore if crowd else "labelled")
  if crowd and backend == "xtcocotools":
    if not gt_path or not os.path.isfile(gt_path):
      raise ValueError("xtcocotools' CrowdPose split needs the annotation file path (gt_path)")
  stats = _run_cocoeval(gt, results, sigmas, "keypoints_crowd" if crowd else "keypoints",
                        backend, gt_path)
  return {n: float(v) for n, v in zip(names, stats)}


def split_wholebody(keypoints_flat: list[float]) -> dict[str, list[float]]:
  """Flat 133×3 list → the result fields keypoints, foot/face/lefthand/righthand_kpts."""
  out = {}
  for part, (_, field) in WHOLEBODY_PARTS.items():
    a, b = kp.WHOLEBODY_PARTS[part]
    out[field] = list(keypoints_flat[3 * a:3 * b])
  return out


def score_wholebody(gt: dict, results: list[dict], gt_path: str | None = None
                    ) -> dict[str, float]:
  """COCO-WholeBody AP/AR per part with xtcocotools (the only library with these iouTypes).

  Returns keys '<part>_<stat>' for part in body, foot, face, lefthand, righthand, whole, plus
  'hand_AP'/'hand_AR' = mean of left and right hand (how the table's "Hand" column was made is
  an open question, docs/reference.md §10.1; a hand whose value is -1, undefined, is left
  out of the mean, and both undefined give -1).
  """
  sig = np.asarray(kp.COCO_WHOLEBODY.sigmas, np.float64)
  parts = {**{p: (t, sig[slice(*kp.WHOLEBODY_PARTS[p])]) for p, (t, _) in WHOLEBODY_PARTS.items()},
           "whole": ("keypoints_wholebody", sig)}
  out = {}
  fields = [f for _, f in WHOLEBODY_PARTS.values()]
  for a in gt.get("annotations", [])[:1]:
    missing = [f for f in fields if f not in a]
    if missing:
      raise ValueError(f"{gt_path or 'ground truth'}: not a COCO-WholeBody file (lacks {missing})")
  whole = [r for r in results
           if np.count_nonzero(np.concatenate([np.asarray(r[f])[2::3] for f in fields]) > 0)]
  for part, (iou_type, sigmas) in parts.items():
    # xtcocotools adds part scores to the result dicts, so each part gets fresh copies.
    stats = _run_cocoeval(gt, [dict(r) for r in whole], sigmas, iou_type, "xtcocotools")
    out.update({f"{part}_{n}": float(v) for n, v in zip(KP_STATS, stats)})
  for stat in KP_STATS:
    hands = [out[f"{side}_{stat}"] for side in ("lefthand", "righthand")]
    defined = [v for v in hands if v != -1]
    out[f"hand_{stat}"] = float(np.mean(defined)) if defined else -1.0
  return out


def score_results(eval_type: str, gt: dict, results: list[dict], *, gt_path: str | None = None,
                  backend: str = "auto", crowd_ignore: str = "labelled") -> dict[str, float]:
  """The dataset's full metric dict for an already post-processed results list."""
  s = SETTINGS[eval_type]
  if s.kind == "wholebody":
    return score_wholebody(gt, results, gt_path)
  out = score_keypoints(gt, results, s.sigmas, crowd=s.kind == "keypoints_crowd",
                        use_area=s.use_area, backend=backend, crowd_ignore=crowd_ignore,
                        gt_path=gt_path)
  if s.corrected_sigmas is not None:
    fixed = score_keypoints(gt, results, s.corrected_sigmas, use_area=s.use_area, backend=backend)
    out.update({f"{k}_corrected": v for k, v in fixed.items()})
  return out


def load_results(eval_type: str, gt: dict, results_file: str) -> list[dict]:
  """Reads and validates a results file (joint count, image ids, NaNs)."""
  results = load_json(results_file, "results file")
  num_joints = len(SETTINGS[eval_type].sigmas)
  image_ids = [im["id"] for im in gt.get("images", [])]
  if eval_type == "coco_wholebody" and results and "foot_kpts" not in results[0]:
    results_lib.check_results(results, num_joints, image_ids, results_file)
    return [{**r, **split_wholebody(r["keypoints"])} for r in results]
  fields = (tuple(f for _, f in WHOLEBODY_PARTS.values()) if eval_type == "coco_wholebody"
            else ("keypoints",))
  results_lib.check_results(results, num_joints, image_ids, results_file, fields)
  return results


class CocoEvaluator:
  """Evaluator of docs/design.md for the COCO-style datasets.

  `process(preds)` per batch, then `compute(out_dir)`: rescoring + OKS-NMS (§5.3), the
  results json, and the metric. Types: coco, ochuman, aic, crowdpose, coco_wholebody.
  """

  def __init__(self, records, config=None, *, eval_type: str | None = None,
               ann_file: str | None = None, vis_thr: float | None = None,
               oks_thr: float | None = None, use_nms: bool = True, backend: str = "auto",
               crowd_ignore: str | None = None):
    self.eval_type = eval_type or config.data.dataset
    if self.eval_type not in SETTINGS:
      raise ValueError(f"CocoEvaluator cannot score {self.eval_type!r}; known: {sorted(SETTINGS)}")
    self.setting = SETTINGS[self.eval_type]
    self.records = records
    self.ann_file = ann_file or _config_ann_file(config)
    test = getattr(config, "test", None)
    self.vis_thr = vis_thr if vis_thr is not None else (test.vis_thr if test else 0.2)
    self.oks_thr = oks_thr if oks_thr is not None else (test.oks_thr if test else 0.9)
    if crowd_ignore is None:   # config test.crowdpose_ignore, else the 2020 rule
      crowd_ignore = test.get("crowdpose_ignore", "2020") if test else "2020"
    self.use_nms, self.backend = use_nms, backend
    self.crowd_ignore = crowd_ignore_rule(crowd_ignore)
    self.buffer = results_lib.PredictionBuffer(len(self.setting.sigmas), self.eval_type)

  def process(self, preds: dict) -> None:
    self.buffer.add(preds)

  def reset(self) -> None:
    self.buffer.reset()

  def results(self, sigmas=None) -> list[dict]:
    """Rescored, OKS-NMS'd results in the dataset's results format."""
    p = self.buffer.collect()
    img_rows = np.asarray(self.records.image_index)[p["index"]]
    image_ids = np.asarray(self.records.image_ids)[img_rows]
    kept, scores = postprocess.rescore_and_nms(
        img_rows, p["keypoints"], p["bbox_score"], postprocess.crop_areas(p["scale"]),
        np.asarray(sigmas if sigmas is not None else self.setting.sigmas), self.vis_thr,
        self.oks_thr, self.use_nms)
    out = []
    flat_kpts = p["keypoints"][kept].reshape(len(kept), 3 * self.buffer.num_joints)
    columns = zip(image_ids[kept].tolist(), flat_kpts.tolist(), scores[kept].tolist(),
                  p["center"][kept].tolist(), p["scale"][kept].tolist())
    for image_id, flat, score, center, scale in columns:
      r = {"image_id": image_id, "category_id": 1, "keypoints": flat, "score": score,
           "center": center, "scale": scale}
      if self.setting.kind == "wholebody":
        r.update(split_wholebody(flat))
      out.append(r)
    return out

  def compute(self, out_dir: str | None = None) -> dict[str, float]:
    gt = load_json(self.ann_file, "annotation file")
    results = self.results()
    if out_dir:
      os.makedirs(out_dir, exist_ok=True)
      with open(os.path.join(out_dir, "keypoints.json"), "w") as f:
        json.dump(results, f)
    s = self.setting
    if s.kind == "wholebody":
      return score_wholebody(gt, results, self.ann_file)
    metrics = score_keypoints(gt, results, s.sigmas, crowd=s.kind == "keypoints_crowd",
                              use_area=s.use_area, backend=self.backend,
                              crowd_ignore=self.crowd_ignore, gt_path=self.ann_file)
    if s.corrected_sigmas is not None:
      # The corrected convention changes the sigmas of OKS-NMS as well as of the metric.
      fixed = score_keypoints(gt, self.results(s.corrected_sigmas), s.corrected_sigmas,
                              use_area=s.use_area, backend=self.backend)
      metrics.update({f"{k}_corrected": v for k, v in fixed.items()})
    return metrics


def _config_ann_file(config) -> str:
  if config is None:
    raise ValueError("pass ann_file= or a config with data.root and data.val_ann")
  return os.path.join(config.data.root, config.data.val_ann)
