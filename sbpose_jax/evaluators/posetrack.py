"""PoseTrack18 per-frame multi-person AP: poseval's `evaluateAP`, re-implemented in numpy.

Follows poseval (leonid-pishchulin/poseval `eval_helpers.py`, `evaluateAP.py`, `convert.py`), the
package MMPose calls (docs/reference.md §6.3):
* each sequence's json is read in the PoseTrack18 format and reduced to poseval's 15 joints by
  name (the ears are dropped); a point stored as x = y = v = 0 is "not annotated";
* ground-truth frames without people are removed; in frames with ignore regions, GT and
  predicted points strictly inside a region are removed, and people left without points too;
* per frame, head size = 0.6 × diagonal of the GT head box; a predicted joint matches when
  distance / head size <= 0.5; each prediction goes to the GT person with the largest fraction
  of matched joints (one-to-one, as poseval resolves it);
* per joint, every predicted joint is ranked by its own score; precision/recall; VOC AP × 100.
Head = mean(head_top, neck, nose); Total = mean of the 15 joint APs.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from sbpose_jax import keypoints as kp
from sbpose_jax.data.readers.common import load_json
from sbpose_jax.evaluators import results as results_lib
from sbpose_jax.inference import postprocess

# poseval's joint ids (eval_helpers.Joint); head_bottom is poseval's "neck".
POSEVAL_JOINTS = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
                  "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
                  "left_wrist", "head_bottom", "nose", "head_top")
COLUMNS = (("Head", (14, 12, 13)), ("Shou", (8, 9)), ("Elb", (7, 10)), ("Wri", (6, 11)),
           ("Hip", (2, 3)), ("Knee", (1, 4)), ("Ankl", (0, 5)))
MIN_SCORE = -9999.0      # poseval's score for a predicted point without one
DIST_THRESH = 0.5
NJ = len(POSEVAL_JOINTS)


def to_15_joints(flat, names, scores=None):
  """Flat [x, y, v] × K in `names` order → (15, 2) xy, (15,) present, (15,) score."""
  k = np.asarray(flat, np.float64).reshape(len(names), 3)
  xy = np.zeros((NJ, 2))
  has = np.zeros(NJ, bool)
  sc = np.full(NJ, MIN_SCORE)
  for src, name in enumerate(names):
    if name not in POSEVAL_JOINTS:
      continue
    j = POSEVAL_JOINTS.index(name)
    x, y, v = k[src]
    if x == 0 and y == 0 and v == 0:
      continue                      # poseval's "unannotated point"
    xy[j], has[j] = (x, y), True
    if scores:
      sc[j] = scores[src]
  return xy, has, sc


def read_gt_sequence(path: str) -> list[dict]:
  """One GT sequence json → frames [{image_id, gt: [person], ignore: [(P, 2) polygons]}]."""
  data = load_json(path, "PoseTrack18 ground-truth sequence")
  names = data["categories"][0]["keypoints"]
  by_image: dict = {}
  for a in data["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a)
  frames = []
  for im in data["images"]:
    people = []
    for a in by_image.get(im["id"], []):
      xy, has, _ = to_15_joints(a["keypoints"], names)
      hb = a.get("bbox_head")
      head = None if hb is None else (hb[0], hb[1], hb[0] + hb[2], hb[1] + hb[3])
      people.append({"xy": xy, "has": has, "head": head})
    polys = [np.stack([np.asarray(px, np.float64), np.asarray(py, np.float64)], axis=1)
             for px, py in zip(im.get("ignore_regions_x") or [], im.get("ignore_regions_y") or [])]
    frames.append({"image_id": im["id"], "gt": people, "ignore": polys})
  return frames


def points_in_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
  """(M, 2) points strictly inside (even-odd rule, boundary excluded) a (P, 2) polygon → (M,)."""
  if len(poly) < 3 or len(pts) == 0:
    return np.zeros(len(pts), bool)
  x, y = pts[:, :1], pts[:, 1:2]
  x1, y1 = poly[:, 0], poly[:, 1]
  x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
  crosses = (y1 > y) != (y2 > y)
  with np.errstate(divide="ignore", invalid="ignore"):
    x_at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
  inside = (crosses & (x < x_at)).sum(axis=1) % 2 == 1
  cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
  on_edge = ((cross == 0) & (x >= np.minimum(x1, x2)) & (x <= np.maximum(x1, x2))
             & (y >= np.minimum(y1, y2)) & (y <= np.maximum(y1, y2))).any(axis=1)
  return inside & ~on_edge


def drop_ignored(people: list[dict], polys: list[np.ndarray]) -> list[dict]:
  """poseval's removeIgnoredPointsRects (AP and MOTA alike): points strictly inside a region
  go, then people without points."""
  out = []
  for p in people:
    inside = np.zeros(NJ, bool)
    for poly in polys:
      inside |= points_in_polygon(p["xy"], poly)
    has = p["has"] & ~inside
    if has.any():
      out.append({**p, "has": has})
  return out


def _assign_frame(gt: list[dict], pr: list[dict]):
  """Per-joint (scores, labels) of one frame's predictions, and (15,) GT joint counts."""
  n_gt = np.sum([g["has"] for g in gt], axis=0) if gt else np.zeros(NJ)
  if not pr:
    return [], n_gt
  has_pr = np.stack([p["has"] for p in pr])                               # (P, 15)
  score = np.stack([p["score"] for p in pr])
  labels = np.zeros_like(has_pr)
  if gt:
    has_gt = np.stack([g["has"] for g in gt])                             # (G, 15)
    if any(g["head"] is None for g in gt):
      raise ValueError("a PoseTrack ground-truth person lacks 'bbox_head'")
    heads = np.asarray([g["head"] for g in gt], np.float64)
    head_size = 0.6 * np.linalg.norm(heads[:, 2:] - heads[:, :2], axis=1)   # (G,)
    d = np.linalg.norm(np.stack([p["xy"] for p in pr])[:, None] - np.stack(
        [g["xy"] for g in gt])[None], axis=-1) / head_size[None, :, None]
    d = np.where(has_pr[:, None] & has_gt[None], d, np.inf)               # (P, G, 15)
    match = d <= DIST_THRESH
    n_gtp = has_gt.sum(axis=1)
    pck = match.sum(axis=2).astype(np.float64)
    pck = np.where(n_gtp[None] > 0, pck / np.maximum(n_gtp, 1)[None], pck)
    best = np.argmax(pck, axis=1)
    pck = np.where(np.arange(len(gt))[None] == best[:, None], pck, 0.0)   # best GT per pred
    pr_to_gt = np.argmax(pck, axis=0)
    pr_to_gt[np.max(pck, axis=0) == 0] = -1
    for g, r in enumerate(pr_to_gt):
      if r >= 0:
        labels[r] = match[r, g]
  out = [(score[r][has_pr[r]], labels[r][has_pr[r]], np.nonzero(has_pr[r])[0])
         for r in range(len(pr))]
  return out, n_gt


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
  """poseval VOCap: area under the monotone precision envelope (all points)."""
  mpre = np.concatenate([[0.0], prec, [0.0]])
  mrec = np.concatenate([[0.0], rec, [1.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]
  i = np.nonzero(~np.equal(mrec[1:], mrec[:-1]))[0] + 1
  return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def evaluate_ap(frames: list[dict]) -> np.ndarray:
  """AP per poseval joint (15,) and Total, in percent → (16,) array.

  Args:
    frames: [{gt: [person], pr: [person with 'score' (15,)], ignore: [polygons]}], GT-file order.
  """
  scores = [[] for _ in range(NJ)]
  labels = [[] for _ in range(NJ)]
  n_gt = np.zeros(NJ)
  for f in frames:
    if not f["gt"]:
      continue                    # cleanupData: frames without GT people are not scored
    gt, pr = f["gt"], f["pr"]
    if f["ignore"]:
      gt, pr = drop_ignored(gt, f["ignore"]), drop_ignored(pr, f["ignore"])
    per_pred, counts = _assign_frame(gt, pr)
    n_gt += counts
    for s, lab, joints in per_pred:
      for sj, lj, j in zip(s, lab, joints):
        scores[j].append(sj)
        labels[j].append(lj)
  ap = np.zeros(NJ + 1)
  for j in range(NJ):
    if not scores[j]:
      continue
    order = np.asarray(scores[j], np.float64).argsort()[::-1]
    tp = np.cumsum(np.asarray(labels[j])[order] == 1)
    with np.errstate(divide="ignore", invalid="ignore"):
      rec = tp / n_gt[j]
    prec = tp / np.arange(1, len(order) + 1)
    ap[j] = voc_ap(rec, prec) * 100
  ap[NJ] = np.mean(ap[:NJ][~np.isnan(ap[:NJ])])
  return ap


def table(ap: np.ndarray) -> dict[str, float]:
  """poseval's getCum: Head, Shou, Elb, Wri, Hip, Knee, Ankl, Total (percent)."""
  out = {name: float(np.mean(ap[list(ids)])) for name, ids in COLUMNS}
  out["Total"] = float(ap[NJ])
  out.update({f"AP_{n}": float(ap[j]) for j, n in enumerate(POSEVAL_JOINTS)})
  return out


def gt_sequence_files(gt_folder: str) -> list[str]:
  files = sorted(glob.glob(os.path.join(gt_folder, "*.json")))
  if not files:
    raise FileNotFoundError(f"no PoseTrack18 ground-truth sequence files (*.json) in {gt_folder}")
  return files


def gt_folder_for(ann_file: str) -> str:
  """MMPose's rule: annotations/posetrack18_val.json → annotations/val/."""
  return os.path.join(os.path.dirname(ann_file),
                      os.path.splitext(os.path.basename(ann_file).split("_")[-1])[0])


def score_predictions(gt_folder: str, preds: dict[int, list[dict]]) -> dict[str, float]:
  """Table for predictions {image_id: [{keypoints (17, 3), scores (17,)}]} in ranking order."""
  names = kp.POSETRACK18.joint_names
  frames = []
  for path in gt_sequence_files(gt_folder):
    for f in read_gt_sequence(path):
      pr = []
      for p in preds.get(f["image_id"], []):
        xy, has, sc = to_15_joints(np.asarray(p["keypoints"]).reshape(-1), names, list(p["scores"]))
        pr.append({"xy": xy, "has": has, "score": sc})
      frames.append({**f, "pr": pr})
  return table(evaluate_ap(frames))


def write_sequences(gt_folder: str, preds: dict[int, list[dict]], pred_folder: str) -> None:
  """One prediction json per GT sequence, as MMPose writes them for poseval."""
  os.makedirs(pred_folder, exist_ok=True)
  cat = {"supercategory": "person", "id": 1, "name": "person",
         "keypoints": list(kp.POSETRACK18.joint_names)}
  for path in gt_sequence_files(gt_folder):
    gt = load_json(path, "PoseTrack18 ground-truth sequence")
    images, anns = [], []
    for im in gt["images"]:
      images.append({"id": im["id"], "file_name": im["file_name"]})
      for track_id, p in enumerate(preds.get(im["id"], [])):
        anns.append({"image_id": im["id"], "keypoints": np.asarray(p["keypoints"]).reshape(-1)
                     .tolist(), "scores": list(map(float, p["scores"])),
                     "score": float(p["score"]), "track_id": track_id})
    with open(os.path.join(pred_folder, os.path.basename(path)), "w") as f:
      json.dump({"images": images, "categories": [cat], "annotations": anns}, f)


def load_results(results: str, gt_folder: str) -> dict[int, list[dict]]:
  """A folder of per-sequence prediction jsons, or a COCO-style results list → preds by image."""
  image_ids = [im["id"] for p in gt_sequence_files(gt_folder)
               for im in load_json(p, "PoseTrack18 sequence")["images"]]
  if os.path.isdir(results):
    entries = [a for p in sorted(glob.glob(os.path.join(results, "*.json")))
               for a in load_json(p, "PoseTrack18 prediction")["annotations"]]
    source = results
  else:
    entries, source = load_json(results, "results file"), results
  results_lib.check_results(entries, 17, image_ids, source, require_score=False)
  out: dict[int, list[dict]] = {}
  for r in entries:
    k = np.asarray(r["keypoints"], np.float64).reshape(17, 3)
    # MMPose writes scores = the keypoint maxvals; a plain results list carries them there too.
    sc = r.get("scores") or k[:, 2].tolist()
    out.setdefault(r["image_id"], []).append({"keypoints": k, "scores": sc,
                                              "score": r.get("score", 1.0)})
  return out


class PoseTrackEvaluator:
  """PoseTrack18 evaluator: rescoring + OKS-NMS (COCO sigmas), per-sequence files, poseval AP.

  GT folder: `gt_folder=`, else config.data.val_gt_dir (under data.root), else MMPose's rule
  from the annotation file (annotations/posetrack18_val.json → annotations/val).
  """

  def __init__(self, records, config=None, *, ann_file: str | None = None,
               gt_folder: str | None = None, vis_thr: float | None = None,
               oks_thr: float | None = None, use_nms: bool = True, **_):
    self.records = records
    if gt_folder is None and config is not None and config.data.val_gt_dir:
      gt_folder = os.path.join(config.data.root, config.data.val_gt_dir)
    if gt_folder is None:
      ann_file = ann_file or os.path.join(config.data.root, config.data.val_ann)
      gt_folder = gt_folder_for(ann_file)
    self.gt_folder = gt_folder
    test = getattr(config, "test", None)
    self.vis_thr = vis_thr if vis_thr is not None else (test.vis_thr if test else 0.2)
    self.oks_thr = oks_thr if oks_thr is not None else (test.oks_thr if test else 0.9)
    self.use_nms = use_nms
    self.buffer = results_lib.PredictionBuffer(17, "posetrack18")

  def process(self, preds: dict) -> None:
    self.buffer.add(preds)

  def reset(self) -> None:
    self.buffer.reset()

  def predictions(self) -> dict[int, list[dict]]:
    p = self.buffer.collect()
    rows = np.asarray(self.records.image_index)[p["index"]]
    ids = np.asarray(self.records.image_ids)[rows]
    kept, scores = postprocess.rescore_and_nms(
        rows, p["keypoints"], p["bbox_score"], postprocess.crop_areas(p["scale"]),
        kp.POSETRACK18.sigmas_array, self.vis_thr, self.oks_thr, self.use_nms)
    out: dict[int, list[dict]] = {}
    for i in kept:
      out.setdefault(int(ids[i]), []).append(
          {"keypoints": p["keypoints"][i], "scores": p["keypoints"][i][:, 2].tolist(),
           "score": float(scores[i])})
    return out

  def compute(self, out_dir: str | None = None) -> dict[str, float]:
    preds = self.predictions()
    if out_dir:
      write_sequences(self.gt_folder, preds, os.path.join(out_dir, "posetrack18_preds"))
      flat = [{"image_id": i, "category_id": 1, "keypoints": np.asarray(p["keypoints"])
               .reshape(-1).tolist(), "scores": p["scores"], "score": p["score"],
               "track_id": t} for i, ps in preds.items() for t, p in enumerate(ps)]
      with open(os.path.join(out_dir, "keypoints.json"), "w") as f:
        json.dump(flat, f)
    return score_predictions(self.gt_folder, preds)
