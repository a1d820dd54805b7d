"""PoseTrack18 multi-person pose tracking accuracy: poseval's `evaluateTracking`, in numpy.

Follows poseval as it installs today (leonid-pishchulin/poseval 4258a15 = svenkreiss 3128c5c +
packaging; `convert.py`, `eval_helpers.py`, `evaluateTracking.py`) and the CLEAR-MOT accumulator
of motmetrics 1.4.0 (`mot.py`), which poseval calls. The rules (docs/reference.md §11.2):

1. no score threshold: a predicted joint is absent only when written as x = y = 0 with a 0 third
   value; a GT joint with v = 0 but coordinates counts as annotated;
2. GT frames without people are removed (predictions paired by position in `images`), then in
   every sequence the last remaining frame is never scored;
3. ignore regions (GT frame only): points strictly inside are removed from GT and predictions,
   then people left without points; people without joints survive in frames without regions;
4. a frame with no GT person or no predicted person adds, per joint, one object, one miss and
   one false positive;
5. matching per joint: distance = |p - g| / (0.6 x GT head-box diagonal), pairs > 0.5 forbidden;
   CLEAR-MOT per joint and sequence (previous partners kept first, then a min-cost assignment
   with the most pairs; a switch whenever an object's last partner differs);
6. MOTP = 100 (1 - sumD / (matches + switches)) where sumD is motmetrics' `events['D'].sum()`:
   every pair within 0.5 (matched or not, its RAW event) plus the matched pairs plus the
   TRANSFER / ASCEND / MIGRATE events' distances;
7. counts pooled over sequences per joint; Total = mean of the non-NaN joints.
"""
from __future__ import annotations

import glob
import json
import os
import pathlib
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from sbpose_jax.evaluators import posetrack as pt
from sbpose_jax.evaluators.posetrack import COLUMNS, POSEVAL_JOINTS, drop_ignored

NJ = len(POSEVAL_JOINTS)
DIST_THRESH = 0.5
MAX_TRACK_ID = 10000      # poseval asserts track ids below this (it offsets them per sequence)
# poseval's `Joint().name` (eval_helpers.py): PoseTrack18's head_bottom is its "neck"
POSEVAL_NAMES = tuple("neck" if n == "head_bottom" else n for n in POSEVAL_JOINTS)


# ----------------------------------------------------------------------------------------------
# Reading sequences (poseval convert.py: PoseTrack18 json -> its 15 joints)
# ----------------------------------------------------------------------------------------------

def _load(path: str, what: str) -> dict:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} not found: {path}")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{what} {path} is not valid json: {e}") from e


def parse_sequence(data: dict, where: str = "sequence", predictions: bool = True) -> list[dict]:
  """A PoseTrack18 json (dict) → frames in `images` order.

  As poseval: every track id must be below 10000; predicted ids must be unique per frame.

  Each frame: {"image_id", "people": [{"track_id", "xy" (15, 2), "has" (15,) bool,
  "head" (4,) x1 y1 x2 y2 or None}], "ignore": [(P, 2) polygons]}.
  """
  try:
    names = data["categories"][0]["keypoints"]
    images, anns = data["images"], data.get("annotations", [])
  except (KeyError, IndexError, TypeError) as e:
    raise ValueError(f"{where}: not a PoseTrack18 file (needs images, annotations, "
                     f"categories[0].keypoints)") from e
  missing = [n for n in POSEVAL_JOINTS if n not in names]
  if missing:
    raise ValueError(f"{where}: keypoint names lack {missing}")
  src = np.asarray([names.index(n) for n in POSEVAL_JOINTS])
  by_image: dict = {}
  for a in anns:
    by_image.setdefault(a["image_id"], []).append(a)
  frames = []
  for im in images:
    people, seen = [], set()
    for a in by_image.get(im["id"], []):
      if "track_id" not in a:
        raise ValueError(f"{where}: an annotation of image {im['id']} has no track_id")
      tid = int(a["track_id"])
      if predictions and tid in seen:
        raise ValueError(f"{where}: track id {tid} twice in image {im['id']}")
      if tid >= MAX_TRACK_ID:
        raise ValueError(f"{where}: track id {tid} is not below {MAX_TRACK_ID} (poseval)")
      seen.add(tid)
      k = np.asarray(a["keypoints"], np.float64).reshape(len(names), 3)[src]
      has = ~((k[:, 0] == 0) & (k[:, 1] == 0) & (k[:, 2] == 0))
      hb = a.get("bbox_head")
      head = None if hb is None else np.asarray(
          [hb[0], hb[1], hb[0] + hb[2], hb[1] + hb[3]], np.float64)
      people.append({"track_id": tid, "xy": k[:, :2], "has": has, "head": head})
    rx, ry = im.get("ignore_regions_x") or [], im.get("ignore_regions_y") or []
    polys = [np.stack([np.asarray(x, np.float64), np.asarray(y, np.float64)], 1).reshape(-1, 2)
             for x, y in zip(rx, ry)]
    frames.append({"image_id": im["id"], "people": people, "ignore": polys})
  return frames


def prepare_sequence(gt: list[dict], pr: list[dict], where: str = "sequence"):
  """cleanupData + removeIgnoredPoints for one sequence → [(gt people, pr people)] scored.

  Frames whose GT has no person are dropped, then the last remaining frame (poseval's
  `imgidxs[:-1]`). Raises ValueError where poseval fails (frame counts differ; a sequence with
  a single frame with people, where poseval raises IndexError).
  """
  if len(gt) != len(pr):
    raise ValueError(f"{where}: {len(pr)} prediction frames but {len(gt)} ground-truth frames")
  pairs = []
  for g, p in zip(gt, pr):
    if not g["people"]:
      continue
    gp, pp = g["people"], p["people"]
    if g["ignore"]:
      gp, pp = drop_ignored(gp, g["ignore"]), drop_ignored(pp, g["ignore"])
    pairs.append((gp, pp))
  if len(pairs) == 1:
    raise ValueError(f"{where}: only one frame with people; poseval cannot score it "
                     "(the last frame of a sequence is never used)")
  return pairs[:-1]


# ----------------------------------------------------------------------------------------------
# Per-joint CLEAR-MOT (motmetrics 1.4.0 MOTAccumulator.update, the parts poseval reads)
# ----------------------------------------------------------------------------------------------

def _lsa(costs: np.ndarray):
  """motmetrics' scipy solver: forbidden (NaN) edges priced so that the most pairs win."""
  valid = np.isfinite(costs)
  if not valid.any():
    return []
  finite = costs.copy()
  if not valid.all():
    c = np.abs(costs[valid]).max() + 1
    finite = np.where(valid, costs, 2 * min(costs.shape) * c + 1)
  rows, cols = linear_sum_assignment(finite)
  return [(i, j) for i, j in zip(rows, cols) if valid[i, j]]


class ClearMot:
  """One joint's accumulator over one sequence; `counts` are motmetrics' mid-level metrics."""

  def __init__(self):
    self.m: dict = {}            # object -> last hypothesis
    self.res_m: dict = {}        # hypothesis -> last object (assignment step only)
    self.hyp_history: set = set()
    self.last_match: set = set()
    self.matches = self.switches = self.misses = self.fps = 0
    self.sum_d = 0.0

  def update(self, oids: Sequence[int], hids: Sequence[int], dists: np.ndarray) -> None:
    """oids (N,), hids (M,), dists (N, M) with NaN = may not pair."""
    oids, hids = list(oids), list(hids)
    d = np.asarray(dists, np.float64).reshape(len(oids), len(hids)).copy()
    self.sum_d += float(d[np.isfinite(d)].sum())          # the RAW events
    o_done, h_done = np.zeros(len(oids), bool), np.zeros(len(hids), bool)
    if oids and hids:
      for i, o in enumerate(oids):                        # 1. keep previous partners
        if o not in self.m:
          continue
        js = [j for j, h in enumerate(hids) if not h_done[j] and h == self.m[o]]
        if js and np.isfinite(d[i, js[0]]):
          j = js[0]
          o_done[i] = h_done[j] = True
          self.matches += 1
          self.sum_d += d[i, j]
          self.last_match.add(o)
          self.hyp_history.add(hids[j])
      d[o_done, :] = np.nan
      d[:, h_done] = np.nan
      for i, j in _lsa(d):                                # 2. min-cost, most pairs
        o, h = oids[i], hids[j]
        if o in self.m and self.m[o] != h:
          self.switches += 1
          if h not in self.hyp_history:
            self.sum_d += d[i, j]                         # ASCEND
        else:
          self.matches += 1
        if h in self.res_m and self.res_m[h] != o:
          if o not in self.last_match:
            self.sum_d += d[i, j]                         # MIGRATE
          self.sum_d += d[i, j]                           # TRANSFER
        self.sum_d += d[i, j]                             # the MATCH / SWITCH event
        self.hyp_history.add(h)
        self.last_match.add(o)
        o_done[i] = h_done[j] = True
        self.m[o] = h
        self.res_m[h] = o
    self.misses += int((~o_done).sum())
    self.fps += int((~h_done).sum())

  @property
  def counts(self) -> dict:
    det = self.matches + self.switches
    return dict(num_misses=self.misses, num_switches=self.switches,
                num_false_positives=self.fps, num_objects=det + self.misses,
                num_detections=det, sumD=self.sum_d)


def frame_joint_events(gt: list[dict], pr: list[dict]):
  """assignGTmulti's MOT part for one frame → 15 × (GT track ids, pred track ids, dists)."""
  if not gt or not pr:
    return [([0], [0], np.full((1, 1), np.nan))] * NJ     # one object, one miss, one FP
  has_gt = np.stack([g["has"] for g in gt])                         # (G, 15)
  has_pr = np.stack([p["has"] for p in pr])                         # (P, 15)
  if any(g["head"] is None for g in gt):
    raise ValueError("a PoseTrack ground-truth person lacks 'bbox_head' (needed for PCKh)")
  heads = np.stack([g["head"] for g in gt])
  head_size = 0.6 * np.linalg.norm(heads[:, 2:] - heads[:, :2], axis=1)
  gxy, pxy = np.stack([g["xy"] for g in gt]), np.stack([p["xy"] for p in pr])
  with np.errstate(divide="ignore", invalid="ignore"):
    d = np.linalg.norm(gxy[:, None] - pxy[None], axis=-1) / head_size[:, None, None]  # (G,P,15)
  ok = has_gt[:, None] & has_pr[None] & (d <= DIST_THRESH)
  d = np.where(ok, d, np.nan)
  out = []
  for j in range(NJ):
    gi, pi = np.nonzero(has_gt[:, j])[0], np.nonzero(has_pr[:, j])[0]
    out.append(([gt[i]["track_id"] for i in gi], [pr[i]["track_id"] for i in pi],
                d[np.ix_(gi, pi, [j])][..., 0]))
  return out


# ----------------------------------------------------------------------------------------------
# Totals and the table
# ----------------------------------------------------------------------------------------------

COUNTS = ("num_misses", "num_switches", "num_false_positives", "num_objects", "num_detections",
          "sumD")
METRICS = (("mota", "MOTA"), ("motp", "MOTP"), ("pre", "Prec"), ("rec", "Rec"))


def sequence_counts(gt: list[dict], pr: list[dict], name: str) -> dict[str, np.ndarray]:
  """One sequence's per-joint counts (motmetrics' mid-level metrics and sumD), each (15,)."""
  accs = [ClearMot() for _ in range(NJ)]
  for gp, pp in prepare_sequence(gt, pr, name):
    for j, (o, h, d) in enumerate(frame_joint_events(gp, pp)):
      accs[j].update(o, h, d)
  return {k: np.asarray([acc.counts[k] for acc in accs], np.float64) for k in COUNTS}


def accumulate(sequences) -> dict[str, np.ndarray]:
  """[(gt frames, pr frames, name)] → pooled per-joint counts, each (15,)."""
  tot = {k: np.zeros(NJ) for k in COUNTS}
  for gt, pr, name in sequences:
    for k, v in sequence_counts(gt, pr, name).items():
      tot[k] += v
  return tot


def finalize(tot: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """computeMetrics' last part → mota, motp, pre, rec: (16,) each, [15] = Total.

  The same formulas serve poseval's totals (counts pooled over sequences) and its per-sequence
  files (`bSaveSeq`, one sequence's counts): per joint, then Total = mean of the non-NaN joints.
  """
  with np.errstate(divide="ignore", invalid="ignore"):
    n_obj = np.where(tot["num_objects"] > 0, tot["num_objects"], np.nan)
    n_det, n_fp = tot["num_detections"], tot["num_false_positives"]
    mota = 100 * (1 - (tot["num_misses"] + tot["num_switches"] + n_fp) / n_obj)
    motp = np.where(n_det == 0, 0.0, 100 * (1 - tot["sumD"] / n_det))
    pre = 100 * n_det / np.where(n_fp + n_det > 0, n_fp + n_det, np.nan)
    rec = 100 * n_det / n_obj
  out = {}
  for k, v in dict(mota=mota, motp=motp, pre=pre, rec=rec).items():
    total = np.nanmean(v) if np.isfinite(v).any() else np.nan
    out[k] = np.append(v, total)
  return out


def evaluate_sequences(sequences) -> dict[str, float]:
  """[(gt frames, pr frames, name)] → the flat table (see `table`)."""
  return table(finalize(accumulate(sequences)))


def evaluate_per_sequence(sequences) -> dict[str, dict[str, np.ndarray]]:
  """[(gt frames, pr frames, name)] → {name: finalize(that sequence's counts)} (poseval's
  `<seq>_MOT_metrics.json`, written with `-s`)."""
  return {name: finalize(sequence_counts(gt, pr, name)) for gt, pr, name in sequences}


def _group_mean(v: np.ndarray, ids) -> float:
  # why: a plain mean as poseval's getCum: one NaN joint makes its group NaN
  return float(np.mean(v[list(ids)]))


def table(m: dict[str, np.ndarray]) -> dict[str, float]:
  """Every figure of poseval's `evaluateTracking`, flat.

  For each metric X in MOTA, MOTP, Prec, Rec: `X` (Total: the mean of the non-NaN joints, what
  poseval prints), `X_<group>` (Head, Shou, ... as poseval's getCum groups the joints) and
  `X_<joint>` for the 15 poseval joints (what it writes to `total_MOT_metrics.json`).
  """
  out = {}
  for key, label in METRICS:
    v = m[key]
    out[label] = float(v[NJ])
    out.update({f"{label}_{name}": _group_mean(v, ids) for name, ids in COLUMNS})
    out.update({f"{label}_{n}": float(v[j]) for j, n in enumerate(POSEVAL_JOINTS)})
  return out


def poseval_json(m: dict[str, np.ndarray]) -> dict:
  """`finalize`'s arrays in the layout of poseval's `total_MOT_metrics.json` and of its
  per-sequence `<seq>_MOT_metrics.json` (evaluateTracking.py): {mota, motp, pre, rec: 16 floats
  (NaN where poseval has NaN), names: {"0": "right_ankle", ..., "14": "head_top", "15":
  "total"}}."""
  out = {k: [float(x) for x in m[k]] for k, _ in METRICS}
  out["names"] = {str(j): n for j, n in enumerate(POSEVAL_NAMES)} | {str(NJ): "total"}
  return out


def format_table(t: dict[str, float]) -> str:
  """poseval's printed MOT row (MOTA per joint group, Total MOTA, MOTP, Prec, Rec), then the
  four metrics per joint group and in total, one line each."""
  cols = [f"MOTA_{name}" for name, _ in COLUMNS] + ["MOTA", "MOTP", "Prec", "Rec"]
  head = " | ".join(f"{c.replace('MOTA_', ''):>6}" for c in cols)
  row = " | ".join(f"{t[c]:6.1f}" for c in cols)
  lines = [head, row]
  if all(f"{label}_{name}" in t for _, label in METRICS for name, _ in COLUMNS):
    groups = [name for name, _ in COLUMNS] + ["Total"]
    lines.append(f"{'':>6} | " + " | ".join(f"{g:>6}" for g in groups))
    for _, label in METRICS:
      vals = [t[f"{label}_{g}"] for g in groups[:-1]] + [t[label]]
      lines.append(f"{label:>6} | " + " | ".join(f"{v:6.1f}" for v in vals))
  return "\n".join(lines)


def read_folders(gt_folder: str, pred_folder: str) -> list[tuple[list, list, str]]:
  """Every GT sequence json in `gt_folder` and the file of the same name in `pred_folder` →
  [(gt frames, pr frames, file name)], sorted by name (poseval's load_data_dir)."""
  gt_files = sorted(glob.glob(os.path.join(gt_folder, "*.json")))
  if not gt_files:
    raise FileNotFoundError(f"no PoseTrack18 ground-truth sequence files (*.json) in {gt_folder}")
  seqs = []
  for path in gt_files:
    name = os.path.basename(path)
    pred_path = os.path.join(pred_folder, name)
    if not os.path.exists(pred_path):
      raise FileNotFoundError(f"prediction file {pred_path} does not exist (one per GT "
                              f"sequence, same name)")
    gt = parse_sequence(_load(path, "ground-truth sequence"), path, predictions=False)
    pr = parse_sequence(_load(pred_path, "prediction sequence"), pred_path)
    seqs.append((gt, pr, name))
  return seqs


def score_folders(gt_folder: str, pred_folder: str) -> dict[str, float]:
  """Every GT sequence json in `gt_folder` against the file of the same name in `pred_folder`."""
  return evaluate_sequences(read_folders(gt_folder, pred_folder))


def score_sequence(gt_path: str, results_path) -> dict[str, float]:
  """MOTA (poseval evaluateTracking) and per-joint AP of one tracked sequence vs its GT."""
  gt_d = json.loads(pathlib.Path(gt_path).read_text())
  pr_d = json.loads(pathlib.Path(results_path).read_text())
  out = evaluate_sequences([(parse_sequence(gt_d, gt_path, predictions=False),
                             parse_sequence(pr_d, str(results_path)), gt_path)])
  names = pr_d["categories"][0]["keypoints"]
  by_image: dict = {}
  for a in pr_d["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a)
  frames = []
  for f in pt.read_gt_sequence(gt_path):
    pr = []
    for a in by_image.get(f["image_id"], []):
      xy, has, sc = pt.to_15_joints(a["keypoints"], names, a["scores"])
      pr.append({"xy": xy, "has": has, "score": sc})
    frames.append({**f, "pr": pr})
  out.update({f"AP_{k}": v for k, v in pt.table(pt.evaluate_ap(frames)).items()
              if not k.startswith("AP_")})
  return out


def format_scores(m: dict[str, float]) -> str:
  """`score_sequence`'s metrics as printed: the AP groups, then poseval's MOTA table."""
  ap = " | ".join(f"{k[3:]:>6}" for k in m if k.startswith("AP_"))
  ap_v = " | ".join(f"{v:6.1f}" for k, v in m.items() if k.startswith("AP_"))
  return f"AP (per joint group)\n{ap}\n{ap_v}\nMOTA\n{format_table(m)}"
