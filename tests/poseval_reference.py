"""poseval's tracking path, transcribed for tests: the independent reference of posetrack_mota.

A close transcription of leonid-pishchulin/poseval 4258a15 (`convert.py` Person/Image
from_new + to_old, `eval_helpers.py` load_data_dir's id offsets, cleanupData,
removeIgnoredPoints, assignGTmulti's MOT part, `evaluateTracking.py` computeMetrics without the
file writing), calling motmetrics and shapely as poseval does. poseval is not on PyPI.

Copyright (c) 2018, Leonid Pishchulin. All rights reserved. BSD-2-Clause (poseval license.txt):
redistributions of source code must retain this notice and the disclaimer: THIS SOFTWARE IS
PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR IMPLIED
WARRANTIES ... ARE DISCLAIMED.
"""
from __future__ import annotations

import copy

import motmetrics as mm
import numpy as np
from shapely import geometry

NAMES15 = ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
           "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
           "left_wrist", "head_bottom", "nose", "head_top"]
NJ = 15
MAX_TRACK_ID = 10000


def to_old(data: dict) -> list[dict]:
  """convert_videos(PoseTrack18 dict)[0]["annolist"] for a single-video file."""
  names = data["categories"][0]["keypoints"]
  table = [NAMES15.index(n) if n in NAMES15 else None for n in names]
  annolist = []
  for im in data["images"]:
    elem = {"image": [{"name": im["file_name"]}]}
    if "ignore_regions_x" in im and "ignore_regions_y" in im and (
        im["ignore_regions_x"], im["ignore_regions_y"]):
      irs = [{"point": [{"x": [x], "y": [y]} for x, y in zip(px, py)]}
             for px, py in zip(im["ignore_regions_x"], im["ignore_regions_y"])]
      if irs:
        elem["ignore_regions"] = irs
    elem["annorect"] = []
    for a in data["annotations"]:
      if a["image_id"] != im["id"]:
        continue
      kps = []
      for idx, lm in enumerate(np.array(a["keypoints"]).reshape(len(table), 3)):
        if table[idx] is None:
          continue
        if lm[0] == 0 and lm[1] == 0 and lm[2] == 0:
          continue
        kps.append({"id": [table[idx]], "x": [lm[0]], "y": [lm[1]], "is_visible": [lm[2]]})
      rect = {"track_id": [a["track_id"]], "annopoints": [{"point": kps}]}
      if "bbox_head" in a:
        hb = a["bbox_head"]
        rect.update(x1=[hb[0]], x2=[hb[0] + hb[2]], y1=[hb[1]], y2=[hb[1] + hb[3]])
      elem["annorect"].append(rect)
    annolist.append(elem)
  return annolist


def load(gt_seqs: list[dict], pr_seqs: list[dict]):
  """load_data_dir without the files: sequence i's track ids offset by i * MAX_TRACK_ID."""
  gt_all, pr_all = [], []
  for i, (g, p) in enumerate(zip(gt_seqs, pr_seqs)):
    gt, pr = to_old(g), to_old(p)
    for f in gt:
      f["seq_id"] = i
      f["seq_name"] = f"seq{i}"
      for r in f["annorect"]:
        r["track_id"][0] += i * MAX_TRACK_ID
    assert len(pr) == len(gt)
    for f in pr:
      for r in f["annorect"]:
        r["track_id"][0] += i * MAX_TRACK_ID
    gt_all += gt
    pr_all += pr
  gt_all, pr_all = cleanup(gt_all, pr_all)
  return remove_ignored(gt_all, pr_all)


def _has_points(rect):
  return ("annopoints" in rect and len(rect["annopoints"]) > 0
          and len(rect["annopoints"][0]) > 0 and "point" in rect["annopoints"][0])


def cleanup(gt_all, pr_all):
  keep = [i for i in range(len(gt_all)) if len(gt_all[i]["annorect"]) > 0]
  gt_all = [gt_all[i] for i in keep]
  pr_all = [pr_all[i] for i in keep]
  for i in range(len(gt_all)):
    gt_all[i]["annorect"] = [r for r in gt_all[i]["annorect"] if _has_points(r)]
    pr_all[i]["annorect"] = [r for r in pr_all[i]["annorect"] if _has_points(r)]
  return gt_all, pr_all


def _remove_rects(rects, polys):
  out = []
  for r in rects:
    pts = [p for p in r["annopoints"][0]["point"]
           if not any(poly.contains(geometry.Point(p["x"][0], p["y"][0])) for poly in polys)]
    if pts:
      r["annopoints"][0]["point"] = pts
      out.append(r)
  return out


def remove_ignored(gt_all, pr_all):
  for i in range(len(gt_all)):
    if "ignore_regions" in gt_all[i] and len(gt_all[i]["ignore_regions"]) > 0:
      polys = [geometry.Polygon([[p["x"][0], p["y"][0]] for p in reg["point"]])
               for reg in gt_all[i]["ignore_regions"]]
      pr_all[i]["annorect"] = _remove_rects(pr_all[i]["annorect"], polys)
      gt_all[i]["annorect"] = _remove_rects(gt_all[i]["annorect"], polys)
  return gt_all, pr_all


def _point(points, pidx):
  for p in points:
    if p["id"] is not None and p["id"][0] == pidx:
      return p
  return []


def assign_mot(gt_frames, pr_frames, dist_thresh=0.5):
  mot_all = {}
  for imgidx in range(len(gt_frames)):
    gts, prs = gt_frames[imgidx]["annorect"], pr_frames[imgidx]["annorect"]
    dist = np.full((len(prs), len(gts), NJ), np.inf)
    has_pr = np.zeros((len(prs), NJ), bool)
    has_gt = np.zeros((len(gts), NJ), bool)
    tr_gt = [r["track_id"][0] for r in gts if "track_id" in r]
    tr_pr = [r["track_id"][0] for r in prs if "track_id" in r]
    for g, r in enumerate(gts):
      pts = r["annopoints"][0]["point"] if len(r["annopoints"]) > 0 else []
      for i in range(NJ):
        if len(_point(pts, i)) > 0:
          has_gt[g, i] = True
    for p, r in enumerate(prs):
      for i in range(NJ):
        if len(_point(r["annopoints"][0]["point"], i)) > 0:
          has_pr[p, i] = True
    mot = {i: {} for i in range(NJ)}
    if len(prs) and len(gts):
      for g, rg in enumerate(gts):
        head = 0.6 * np.linalg.norm(np.subtract([rg["x2"][0], rg["y2"][0]],
                                                [rg["x1"][0], rg["y1"][0]]))
        pg = rg["annopoints"][0]["point"] if len(rg["annopoints"]) > 0 else []
        for p, rp in enumerate(prs):
          pp = rp["annopoints"][0]["point"]
          for i in range(NJ):
            if has_pr[p, i] and has_gt[g, i]:
              a, b = _point(pg, i), _point(pp, i)
              with np.errstate(divide="ignore", invalid="ignore"):
                dist[p, g, i] = np.linalg.norm(np.subtract([a["x"][0], a["y"][0]],
                                                           [b["x"][0], b["y"][0]])) / head
      match = dist <= dist_thresh
      for i in range(NJ):
        rg = np.argwhere(has_gt[:, i]).flatten().tolist()
        rp = np.argwhere(has_pr[:, i]).flatten().tolist()
        mot[i]["trackidxGT"] = [tr_gt[k] for k in rg]
        mot[i]["trackidxPr"] = [tr_pr[k] for k in rp]
        mot[i]["dist"] = np.full((len(rg), len(rp)), np.nan)
        for a in range(len(rp)):
          for b in range(len(rg)):
            if match[rp[a], rg[b], i]:
              mot[i]["dist"][b, a] = dist[rp[a], rg[b], i]
    else:
      for i in range(NJ):
        mot[i]["trackidxGT"] = [0]
        mot[i]["trackidxPr"] = [0]
        mot[i]["dist"] = np.full((1, 1), np.nan)
    mot_all[imgidx] = mot
  return mot_all


def _final(c, s):
  """One joint's mota, motp, pre, rec from its mid-level counts `c` (a dict of numbers) and
  summed D `s`: the formulas of both of computeMetrics' branches (per sequence and total)."""
  n_obj = c["num_objects"] if c["num_objects"] > 0 else np.nan
  n_fp = c["num_false_positives"]
  mota = 100 * (1. - (c["num_misses"] + c["num_switches"] + n_fp) / n_obj)
  n_det = c["num_detections"]
  motp = 0.0 if (n_det == 0 or np.isnan(s)) else 100 * (1. - s / n_det)
  tot = n_fp + n_det if n_fp + n_det > 0 else np.nan
  return mota, motp, 100 * (1. * n_det / tot), 100 * (1. * n_det / n_obj)


def _totals(fin):
  for k in fin:
    idxs = np.argwhere(~np.isnan(fin[k][0, :NJ]))
    fin[k][0, NJ] = fin[k][0, idxs].mean()
  return {k: v[0] for k, v in fin.items()}


def compute_metrics(gt_frames, mot_all):
  """computeMetrics → (totals {mota, motp, pre, rec}: (16,), mid-level counts, per-sequence
  metrics as bSaveSeq computes them: [{mota, motp, pre, rec}: (16,)] in sequence order)."""
  names = ["num_misses", "num_switches", "num_false_positives", "num_objects", "num_detections"]
  mid = {n: np.zeros([1, NJ]) for n in names}
  mid["sumD"] = np.zeros([1, NJ])
  fin = {n: np.zeros([1, NJ + 1]) for n in ("mota", "motp", "pre", "rec")}
  per_seq = []
  mh = mm.metrics.create()
  seqidxs = np.array([f["seq_id"] for f in gt_frames])
  for s in np.unique(seqidxs):
    accs = {i: mm.MOTAccumulator(auto_id=True) for i in range(NJ)}
    imgidxs = np.argwhere(seqidxs == s)[:-1].copy()
    _ = gt_frames[imgidxs[0, 0]]["seq_name"]        # poseval's IndexError on 1-frame sequences
    for j in range(len(imgidxs)):
      for i in range(NJ):
        m = mot_all[imgidxs[j, 0]][i]
        accs[i].update(m["trackidxGT"], m["trackidxPr"], m["dist"])
    seq = {n: np.zeros([1, NJ + 1]) for n in fin}
    for i in range(NJ):
      r = mh.compute(accs[i], metrics=names, return_dataframe=False, name="acc")
      for n in names:
        mid[n][0, i] += r[n]
      sd = accs[i].events["D"].sum()
      mid["sumD"][0, i] += 0 if np.isnan(sd) else sd
      # bSaveSeq: the same formulas on this sequence's own counts
      vals = _final(r, sd)
      for n, v in zip(("mota", "motp", "pre", "rec"), vals):
        seq[n][0, i] = v
    per_seq.append(_totals(seq))
  for i in range(NJ):
    vals = _final({n: v[0, i] for n, v in mid.items()}, mid["sumD"][0, i])
    for n, v in zip(("mota", "motp", "pre", "rec"), vals):
      fin[n][0, i] = v
  return _totals(fin), mid, per_seq


def evaluate(gt_seqs: list[dict], pr_seqs: list[dict]):
  """poseval's evaluateTracking on PoseTrack18 dicts → ({mota, motp, pre, rec}: (16,), mid)."""
  gt, pr = load(copy.deepcopy(gt_seqs), copy.deepcopy(pr_seqs))
  return compute_metrics(gt, assign_mot(gt, pr))[:2]


def evaluate_per_sequence(gt_seqs: list[dict], pr_seqs: list[dict]):
  """poseval's per-sequence metrics (`-s`, `<seq>_MOT_metrics.json`): [{mota, ...}: (16,)]."""
  gt, pr = load(copy.deepcopy(gt_seqs), copy.deepcopy(pr_seqs))
  return compute_metrics(gt, assign_mot(gt, pr))[2]
