"""Every dataset's metric on the real fixture samples, against its own library or formula."""
import contextlib
import io
import json
import os

import ml_collections
import numpy as np
import pytest
import scipy.io

from sbpose_jax import keypoints as kp
from sbpose_jax.data import readers
from sbpose_jax.evaluators import (EVALUATORS, coco, format_table, pck, posetrack,
                                   score_results_file)

COCO_STYLE = {"coco": "coco/test_coco.json", "ochuman": "ochuman/test_ochuman.json",
              "aic": "aic/test_aic.json", "crowdpose": "crowdpose/test_crowdpose.json",
              "coco_wholebody": "coco/test_coco_wholebody.json"}
PT_ANN = "posetrack18/annotations/test_posetrack18_val.json"


def _gt_preds(records):
  """Ground truth as a prediction batch: joints, maxval = visibility."""
  k = np.concatenate([records.joints_xy, records.joints_vis[..., None]], -1)
  return dict(index=np.arange(len(records)), keypoints=k, center=records.center_xy,
              scale=records.scale_wh, bbox_score=records.bbox_score)


def _gt_results(gt, rng=None, noise=6.0):
  """GT annotations as a COCO results list (score = visibility), optionally perturbed."""
  out = []
  for a in gt["annotations"]:
    fields = ["keypoints"] + [f for f in ("foot_kpts", "face_kpts", "lefthand_kpts",
                                          "righthand_kpts") if f in a]
    r = {"image_id": a["image_id"], "category_id": 1,
         "score": 1.0 if rng is None else float(rng.uniform(0.1, 1))}
    for f in fields:
      k = np.asarray(a[f], np.float64).reshape(-1, 3).copy()
      k[:, 2] = k[:, 2] > 0
      if rng is not None:
        k[:, :2] += rng.normal(0, noise, k[:, :2].shape)
        k[:, 2] = rng.uniform(0.05, 1, len(k))
      r[f] = k.ravel().tolist()
    out.append(r)
  return out


def _quiet():
  return contextlib.redirect_stdout(io.StringIO())


# ------------------------------------------------------------------------- COCO-style datasets

@pytest.mark.parametrize("eval_type", sorted(COCO_STYLE))
def test_ground_truth_as_prediction_is_perfect(fixtures_dir, eval_type, tmp_path):
  ann = str(fixtures_dir / COCO_STYLE[eval_type])
  records = readers.read(eval_type, ann, fixtures_dir)
  ev = EVALUATORS[eval_type](records, None, ann_file=ann)
  ev.process(_gt_preds(records))
  metrics = ev.compute(str(tmp_path))
  keys = ["body_AP", "foot_AP", "face_AP", "hand_AP", "whole_AP", "whole_AR"] \
      if eval_type == "coco_wholebody" else ["AP", "AP50", "AP75", "AR", "AR50"]
  assert all(metrics[k] == pytest.approx(1.0) for k in keys), metrics
  written = json.load(open(tmp_path / "keypoints.json"))
  assert len(written) == len(records)
  assert {"image_id", "category_id", "keypoints", "score"} <= set(written[0])
  # The written file scores the same through the --results path.
  again = score_results_file(eval_type, ann, str(tmp_path / "keypoints.json"))
  assert again == pytest.approx(metrics)


def _pycocotools(gt_file, results, sigmas):
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  with _quiet():
    g = COCO(gt_file)
    e = COCOeval(g, g.loadRes(results), "keypoints")
    e.params.kpt_oks_sigmas = np.asarray(sigmas)
    e.evaluate(), e.accumulate(), e.summarize()
  return e.stats


def _xtcocotools(gt_file, results, sigmas, iou_type, use_area):
  from xtcocotools.coco import COCO
  from xtcocotools.cocoeval import COCOeval
  with _quiet():
    g = COCO(gt_file)
    e = COCOeval(g, g.loadRes(results), iou_type, np.asarray(sigmas), use_area=use_area)
    e.params.useSegm = None
    e.evaluate(), e.accumulate(), e.summarize()
  return e.stats


@pytest.mark.parametrize("eval_type, noise", [("coco", 6.0), ("ochuman", 30.0)])
def test_perturbed_coco_matches_pycocotools(fixtures_dir, eval_type, noise, tmp_path):
  ann = str(fixtures_dir / COCO_STYLE[eval_type])
  gt = json.load(open(ann))
  results = _gt_results(gt, np.random.default_rng(1), noise)
  path = tmp_path / "res.json"
  path.write_text(json.dumps(results))
  ours = score_results_file(eval_type, ann, str(path))
  ref = _pycocotools(ann, json.loads(path.read_text()), kp.COCO.sigmas)
  assert [ours[k] for k in coco.KP_STATS] == pytest.approx(list(ref), abs=1e-12)
  assert 0.05 < ours["AP"] < 0.99          # a real, non-trivial value


def test_faster_coco_eval_equals_pycocotools_and_xtcocotools(fixtures_dir):
  ann = str(fixtures_dir / COCO_STYLE["coco"])
  gt = json.load(open(ann))
  results = _gt_results(gt, np.random.default_rng(2), noise=4.0)
  stats = {b: coco.score_results("coco", gt, results, gt_path=ann, backend=b)
           for b in coco.BACKENDS}
  assert stats["faster_coco_eval"] == stats["pycocotools"] == stats["xtcocotools"]


def test_aic_reports_published_and_corrected_sigmas(fixtures_dir, tmp_path):
  ann = str(fixtures_dir / COCO_STYLE["aic"])
  results = _gt_results(json.load(open(ann)), np.random.default_rng(3), noise=3.0)
  path = tmp_path / "res.json"
  path.write_text(json.dumps(results))
  ours = score_results_file("aic", ann, str(path))
  doubled = _xtcocotools(ann, json.loads(path.read_text()), kp.AIC.sigmas, "keypoints", False)
  plain = _xtcocotools(ann, json.loads(path.read_text()), kp.AIC_SIGMAS_CORRECTED, "keypoints",
                       False)
  assert [ours[k] for k in coco.KP_STATS] == pytest.approx(list(doubled), abs=1e-12)
  assert [ours[k + "_corrected"] for k in coco.KP_STATS] == pytest.approx(list(plain), abs=1e-12)
  assert ours["AP"] > ours["AP_corrected"]   # wider sigmas, more lenient


def test_crowdpose_matches_xtcocotools_with_easy_medium_hard(fixtures_dir, tmp_path):
  gt = json.load(open(fixtures_dir / COCO_STYLE["crowdpose"]))
  for im, ci in zip(gt["images"], (0.1, 0.9)):   # one easy and one hard image
    im["crowdIndex"] = ci
  ann = tmp_path / "crowd.json"
  ann.write_text(json.dumps(gt))
  results = _gt_results(gt, np.random.default_rng(4), noise=5.0)
  res = tmp_path / "res.json"
  res.write_text(json.dumps(results))
  ref = _xtcocotools(str(ann), json.loads(res.read_text()), kp.CROWDPOSE.sigmas,
                     "keypoints_crowd", False)
  for backend in ("xtcocotools", "faster_coco_eval"):
    ours = score_results_file("crowdpose", str(ann), str(res), backend=backend,
                              crowd_ignore="num_keypoints")
    assert [ours[k] for k in coco.CROWD_STATS] == pytest.approx(list(ref), abs=1e-12)
  assert ours["AP(E)"] >= 0 and ours["AP(H)"] >= 0 and ours["AP(M)"] == -1


def test_crowdpose_2020_ignore_rule_counts_labelled_joints():
  gt = {"images": [{"id": 1}], "annotations": [
      {"id": 1, "image_id": 1, "num_keypoints": 0, "keypoints": [1, 1, 1, 0, 0, 0],
       "bbox": [0, 0, 10, 10]}], "categories": [{"id": 1}]}
  assert coco.prepare_gt(gt, False)["annotations"][0]["num_keypoints"] == 1
  assert coco.prepare_gt(gt, False, "num_keypoints")["annotations"][0]["num_keypoints"] == 0
  assert coco.prepare_gt(gt, False)["annotations"][0]["area"] == pytest.approx(53.0)


def test_wholebody_parts_match_xtcocotools(fixtures_dir, tmp_path):
  ann = str(fixtures_dir / COCO_STYLE["coco_wholebody"])
  results = _gt_results(json.load(open(ann)), np.random.default_rng(5), noise=3.0)
  res = tmp_path / "res.json"
  res.write_text(json.dumps(results))
  ours = score_results_file("coco_wholebody", ann, str(res))
  sig = np.asarray(kp.COCO_WHOLEBODY.sigmas)
  for part, (iou_type, _) in {**coco.WHOLEBODY_PARTS, "whole": ("keypoints_wholebody", 0)}.items():
    s = sig if part == "whole" else sig[slice(*kp.WHOLEBODY_PARTS[part])]
    ref = _xtcocotools(ann, json.loads(res.read_text()), s, iou_type, True)
    assert [ours[f"{part}_{k}"] for k in coco.KP_STATS] == pytest.approx(list(ref), abs=1e-12)
  assert ours["hand_AP"] == pytest.approx(0.5 * (ours["lefthand_AP"] + ours["righthand_AP"]))


def test_wholebody_accepts_flat_133_joint_results(fixtures_dir, tmp_path):
  ann = str(fixtures_dir / COCO_STYLE["coco_wholebody"])
  split = _gt_results(json.load(open(ann)))
  flat = [{"image_id": r["image_id"], "score": 1.0, "category_id": 1,
           "keypoints": sum((r[f] for _, f in coco.WHOLEBODY_PARTS.values()), [])}
          for r in split]
  res = tmp_path / "res.json"
  res.write_text(json.dumps(flat))
  assert score_results_file("coco_wholebody", ann, str(res))["whole_AP"] == pytest.approx(1.0)


def test_results_with_no_positive_score_are_dropped_like_xtcocotools(fixtures_dir, tmp_path):
  ann = str(fixtures_dir / COCO_STYLE["coco"])
  results = _gt_results(json.load(open(ann)), np.random.default_rng(8))
  ghost = dict(results[0], score=1.0, keypoints=[5.0, 5.0, 0.0] * 17)
  res = tmp_path / "res.json"
  res.write_text(json.dumps(results + [ghost]))
  ours = score_results_file("coco", ann, str(res), backend="pycocotools")
  xt = _xtcocotools(ann, json.loads(res.read_text()), kp.COCO.sigmas, "keypoints", True)
  plain = _pycocotools(ann, json.loads(res.read_text()), kp.COCO.sigmas)
  assert [ours[k] for k in coco.KP_STATS] == pytest.approx(list(xt), abs=1e-12)
  assert ours["AP"] != pytest.approx(plain[0], abs=1e-6)   # pycocotools alone would count it


# ------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("problem, match", [("joints", "14 joints.*17 joints"),
                                            ("image", "image ids"), ("nan", "NaN")])
def test_bad_results_file_gives_clear_error(fixtures_dir, tmp_path, problem, match):
  ann = str(fixtures_dir / COCO_STYLE["coco"])
  results = _gt_results(json.load(open(ann)))
  if problem == "joints":
    results[0]["keypoints"] = results[0]["keypoints"][:42]
  elif problem == "image":
    results[0]["image_id"] = 123456789
  else:
    results[0]["keypoints"][4] = float("nan")
  res = tmp_path / "bad.json"
  res.write_text(json.dumps(results))
  with pytest.raises(ValueError, match=match) as err:
    score_results_file("coco", ann, str(res))
  assert "bad.json" in str(err.value)


@pytest.mark.parametrize("eval_type", sorted(COCO_STYLE))
def test_no_detections_score_as_the_libraries(fixtures_dir, tmp_path, eval_type):
  """No results: 0 where there is ground truth, -1 where an area range or a CrowdPose subset
  has none, as xtcocotools (called directly on an empty list) reports."""
  ann = str(fixtures_dir / COCO_STYLE[eval_type])
  records = readers.read(eval_type, ann, fixtures_dir)
  rule = {"crowd_ignore": "current"} if eval_type == "crowdpose" else {}   # = xtcocotools 1.14
  metrics = EVALUATORS[eval_type](records, None, ann_file=ann, **rule).compute(str(tmp_path))
  assert json.load(open(tmp_path / "keypoints.json")) == []
  setting = coco.SETTINGS[eval_type]
  sig = np.asarray(setting.sigmas)
  if eval_type == "coco_wholebody":
    parts = {**{p: (t, sig[slice(*kp.WHOLEBODY_PARTS[p])]) for p, (t, _) in
                coco.WHOLEBODY_PARTS.items()}, "whole": ("keypoints_wholebody", sig)}
    for part, (iou_type, s) in parts.items():
      ref = _xtcocotools(ann, [], s, iou_type, True)
      assert [metrics[f"{part}_{k}"] for k in coco.KP_STATS] == list(ref)
  else:
    crowd = setting.kind == "keypoints_crowd"
    ref = _xtcocotools(ann, [], sig, setting.kind, setting.use_area)
    assert [metrics[k] for k in (coco.CROWD_STATS if crowd else coco.KP_STATS)] == list(ref)
    for backend in ("pycocotools",) if not crowd else ():   # loadRes cannot read []
      again = coco.score_results(eval_type, json.load(open(ann)), [], gt_path=ann,
                                 backend=backend)
      assert [again[k] for k in coco.KP_STATS] == list(ref)
  assert set(metrics.values()) <= {0.0, -1.0}
  if eval_type in ("aic", "crowdpose", "coco_wholebody"):   # ranges / subsets without GT
    assert -1.0 in metrics.values()


# ------------------------------------------------------------------------------------- MPII

def _mpii_gt_mat(fixtures_dir, tmp_path):
  """A tiny mpii_gt_val.mat in the official layout, from the fixture json (head boxes made up)."""
  anns = json.load(open(fixtures_dir / "mpii/test_mpii.json"))
  joints = np.asarray([a["joints"] for a in anns], np.float64)        # 1-based, as the .mat
  vis = np.asarray([a["joints_vis"] for a in anns], np.float64)
  top, neck = joints[:, 9], joints[:, 8]
  half = np.linalg.norm(top - neck, axis=1)[:, None] / 2
  mid = (top + neck) / 2
  boxes = np.stack([mid - half, mid + half], 1)                          # (N, 2 corners, 2)
  names = np.empty((1, 16), object)
  for i, n in enumerate(pck.MAT_JOINTS):
    names[0, i] = n
  path = tmp_path / "mpii_gt_val.mat"
  scipy.io.savemat(path, {"pos_gt_src": joints.transpose(1, 2, 0),
                          "headboxes_src": boxes.transpose(1, 2, 0),
                          "jnt_missing": (1 - vis).T, "dataset_joints": names})
  return str(path), joints, vis, boxes


def _pckh_formula(pred_1b, joints, vis, boxes, thr):
  """Documented formula, joint by joint: hit if ||pred - gt|| / (0.6 ||head diag||) <= thr."""
  head = 0.6 * np.linalg.norm(boxes[:, 1] - boxes[:, 0], axis=1)
  per_joint = np.zeros(16)
  count = vis.sum(0)
  for j in range(16):
    d = np.linalg.norm(pred_1b[:, j] - joints[:, j], axis=1) / head
    per_joint[j] = np.sum((d <= thr) & (vis[:, j] > 0)) / max(count[j], 1)
  w = count.copy()
  w[6:8] = 0
  return per_joint, float(np.sum(per_joint * w) / w.sum())


def test_mpii_pckh_perfect_and_formula(fixtures_dir, tmp_path):
  mat, joints, vis, boxes = _mpii_gt_mat(fixtures_dir, tmp_path)
  ann = str(fixtures_dir / "mpii/test_mpii.json")
  records = readers.read("mpii", ann, fixtures_dir)
  ev = EVALUATORS["mpii"](records, None, gt_file=mat)
  ev.process(_gt_preds(records))
  perfect = ev.compute(str(tmp_path / "out"))
  assert perfect["Mean"] == perfect["Mean@0.1"] == perfect["Mean@0.1_corrected"] == 1.0
  rng = np.random.default_rng(6)
  head = 0.6 * np.linalg.norm(boxes[:, 1] - boxes[:, 0], axis=1)
  noisy = joints + rng.normal(0, 1, joints.shape) * head[:, None, None] * 0.15
  # One joint exactly 0.105 head sizes away: a hit at 0.11 (as published), a miss at 0.10.
  noisy[0, 0] = joints[0, 0] + [0.105 * head[0], 0.0]
  ev.reset()
  ev.process({**_gt_preds(records), "keypoints": np.concatenate(
      [noisy - 1, np.ones_like(noisy[..., :1])], -1)})
  got = ev.compute()
  per_joint, mean = _pckh_formula(noisy, joints, vis, boxes, 0.5)
  assert got["Mean"] == pytest.approx(mean, abs=1e-9)
  assert got["Ank"] == pytest.approx((per_joint[0] + per_joint[5]) / 2, abs=1e-9)
  assert got["Mean@0.1"] == pytest.approx(_pckh_formula(noisy, joints, vis, boxes, 0.11)[1],
                                          abs=1e-6)
  assert got["Mean@0.1_corrected"] == pytest.approx(
      _pckh_formula(noisy, joints, vis, boxes, 0.10)[1], abs=1e-6)
  # Our keypoints.json scores identically through --results, and so does a pred.mat.
  res = tmp_path / "out" / "keypoints.json"
  assert score_results_file("mpii", ann, str(res), gt_file=mat)["Mean"] == 1.0
  scipy.io.savemat(tmp_path / "pred.mat", {"preds": noisy})
  assert score_results_file("mpii", ann, str(tmp_path / "pred.mat"), gt_file=mat)["Mean"] == \
      pytest.approx(mean, abs=1e-9)


def test_pck_metrics_without_predictions_are_zero(fixtures_dir, tmp_path):
  mat = _mpii_gt_mat(fixtures_dir, tmp_path)[0]
  records = readers.read("mpii", str(fixtures_dir / "mpii/test_mpii.json"), fixtures_dir)
  got = EVALUATORS["mpii"](records, None, gt_file=mat).compute()
  assert got["Mean"] == got["Mean@0.1"] == got["Head"] == 0.0
  ann = _trb_with_headboxes(fixtures_dir, tmp_path)[0]
  records = readers.read("mpii_trb", ann, fixtures_dir)
  assert set(EVALUATORS["mpii_trb"](records, None, ann_file=ann).compute().values()) == {0.0}


def test_mpii_missing_gt_file_is_a_clear_error(fixtures_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="mpii_gt_val.mat"):
    pck.load_mpii_gt(str(tmp_path / "mpii_gt_val.mat"))


def _trb_with_headboxes(fixtures_dir, tmp_path):
  gt = json.load(open(fixtures_dir / "mpii/test_mpii_trb.json"))
  for a in gt["annotations"]:
    k = np.asarray(a["keypoints"], np.float64).reshape(40, 3)
    c = k[12, :2]                                        # head point: a 60 px box around it
    a["headbox"] = [c[0] - 30, c[1] - 30, c[0] + 30, c[1] + 30]
  path = tmp_path / "trb.json"
  path.write_text(json.dumps(gt))
  return str(path), gt


def test_mpii_trb_perfect_and_formula(fixtures_dir, tmp_path):
  ann, gt = _trb_with_headboxes(fixtures_dir, tmp_path)
  records = readers.read("mpii_trb", ann, fixtures_dir)
  ev = EVALUATORS["mpii_trb"](records, None, ann_file=ann)
  ev.process(_gt_preds(records))
  assert ev.compute() == {"Skeleton_Acc": 1.0, "Contour_Acc": 1.0, "Mean_Acc": 1.0}
  rng = np.random.default_rng(7)
  noisy = records.joints_xy + rng.normal(0, 15, records.joints_xy.shape).astype(np.float32)
  ev.reset()
  ev.process({**_gt_preds(records), "keypoints": np.concatenate(
      [noisy, np.ones_like(noisy[..., :1])], -1)})
  got = ev.compute(str(tmp_path / "out"))
  thr = 0.3 * np.sqrt(2) * 60
  hit = (np.linalg.norm(noisy - records.joints_xy, axis=-1) < thr) & (records.joints_vis > 0)
  vis = records.joints_vis > 0
  assert got["Skeleton_Acc"] == pytest.approx(hit[:, :14].sum() / vis[:, :14].sum())
  assert got["Contour_Acc"] == pytest.approx(hit[:, 14:].sum() / vis[:, 14:].sum())
  assert got["Mean_Acc"] == pytest.approx(hit.sum() / vis.sum())
  assert 0 < got["Mean_Acc"] < 1
  again = score_results_file("mpii_trb", ann, str(tmp_path / "out" / "keypoints.json"))
  assert again == pytest.approx(got)


# ------------------------------------------------------------------------------- PoseTrack18

def test_posetrack_ground_truth_is_100(fixtures_dir, tmp_path):
  ann = str(fixtures_dir / PT_ANN)
  records = readers.read("posetrack18", ann, fixtures_dir)
  ev = EVALUATORS["posetrack18"](records, None, ann_file=ann)
  ev.process(_gt_preds(records))
  metrics = ev.compute(str(tmp_path))
  assert all(metrics[c] == 100.0 for c, _ in EVALUATORS["posetrack18"].columns), metrics
  seq = json.load(open(tmp_path / "posetrack18_preds" / "012834_mpii_test.json"))
  assert len(seq["annotations"][0]["scores"]) == 17 and seq["images"]
  folder = score_results_file("posetrack18", ann, str(tmp_path / "posetrack18_preds"))
  flat = score_results_file("posetrack18", ann, str(tmp_path / "keypoints.json"))
  assert folder == flat == pytest.approx(metrics)


def _person(xy15, score=None):
  """A 17-keypoint PoseTrack18 annotation from (15, 2) poseval-ordered joints."""
  names = kp.POSETRACK18.joint_names
  k = np.zeros((17, 3))
  for j, name in enumerate(posetrack.POSEVAL_JOINTS):
    k[names.index(name)] = [*xy15[j], 1]
  return k


def _toy_sequence(tmp_path, ignore=None):
  gt_xy = np.stack([np.arange(15) * 20.0 + 100, np.full(15, 300.0)], 1)
  k = _person(gt_xy)
  k[names_idx("left_ear")] = [999, 999, 1]          # ears are not poseval joints
  image = {"id": 1, "file_name": "images/val/000001_mpii_test/000000.jpg"}
  if ignore is not None:
    image["ignore_regions_x"], image["ignore_regions_y"] = ignore
  gt = {"categories": [{"name": "person", "keypoints": list(kp.POSETRACK18.joint_names)}],
        "images": [image], "annotations": [
            {"image_id": 1, "keypoints": k.ravel().tolist(), "bbox_head": [0, 0, 6, 8],
             "track_id": 0}]}
  folder = tmp_path / "val"
  folder.mkdir(exist_ok=True)
  (folder / "000001_mpii_test.json").write_text(json.dumps(gt))
  return str(folder), gt_xy


def names_idx(name):
  return kp.POSETRACK18.joint_names.index(name)


def test_posetrack_hand_computed_ap(tmp_path):
  folder, gt_xy = _toy_sequence(tmp_path)      # head size = 0.6 * 10 = 6 px; match <= 3 px
  exact = _person(gt_xy)
  far = _person(gt_xy + 10.0)
  dup = {"keypoints": exact, "scores": [0.5] * 17, "score": 0.5}
  best = {"keypoints": exact, "scores": [0.9] * 17, "score": 0.9}
  # Exact match ranked first, a duplicate second: precision [1, 1/2], recall [1, 1] → AP 100.
  got = posetrack.score_predictions(folder, {1: [best, dup]})
  assert got["Total"] == pytest.approx(100.0)
  # A false positive ranked above the match: precision [0, 1/2], recall [0, 1] → AP 50.
  fp = {"keypoints": far, "scores": [0.95] * 17, "score": 0.95}
  got = posetrack.score_predictions(folder, {1: [fp, best]})
  assert got["Total"] == pytest.approx(50.0) and got["Head"] == pytest.approx(50.0)
  # A 2.9 px error matches (<= 0.5 head sizes), 3.1 px does not.
  near = {"keypoints": _person(gt_xy + [2.9, 0]), "scores": [0.9] * 17, "score": 0.9}
  assert posetrack.score_predictions(folder, {1: [near]})["Total"] == pytest.approx(100.0)
  off = {"keypoints": _person(gt_xy + [3.1, 0]), "scores": [0.9] * 17, "score": 0.9}
  assert posetrack.score_predictions(folder, {1: [off]})["Total"] == 0.0
  # No predictions at all: 0, not a crash.
  assert posetrack.score_predictions(folder, {})["Total"] == 0.0


def test_posetrack_ignore_regions_remove_points(tmp_path):
  # A polygon around the far-away false positive: it disappears and AP returns to 100.
  square = ([[100, 500, 500, 100]], [[305, 305, 330, 330]])
  folder, gt_xy = _toy_sequence(tmp_path, ignore=square)
  fp = {"keypoints": _person(gt_xy + 10.0), "scores": [0.95] * 17, "score": 0.95}
  best = {"keypoints": _person(gt_xy), "scores": [0.9] * 17, "score": 0.9}
  assert posetrack.score_predictions(folder, {1: [fp, best]})["Total"] == pytest.approx(100.0)


def test_posetrack_assignment_is_one_to_one_by_matched_fraction():
  xy = np.stack([np.arange(15) * 20.0, np.zeros(15)], 1)
  person = lambda pts, n=15: {"xy": pts, "has": np.arange(15) < n, "head": (0, 0, 6, 8)}
  gt = [person(xy), person(xy + [0.0, 500.0])]
  near_a = xy.copy()
  near_a[10:] += 50                    # matches GT 0 on 10 of 15 joints
  preds = [{**person(near_a), "score": np.full(15, 0.9)},
           {**person(xy), "score": np.full(15, 0.5)}]       # matches GT 0 on 15 of 15
  per_pred, n_gt = posetrack._assign_frame(gt, preds)
  np.testing.assert_array_equal(n_gt, np.full(15, 2))
  # GT 0 goes to the prediction with the larger matched fraction; the other gets no match.
  assert not per_pred[0][1].any() and per_pred[1][1].all()


def _poseval_loops(frames):
  """The documented algorithm written with plain loops (ranking as poseval: reversed argsort)."""
  scores, labels, n_gt = [[] for _ in range(15)], [[] for _ in range(15)], np.zeros(15)
  for f in frames:
    gt, pr = f["gt"], f["pr"]
    for g in gt:
      n_gt += g["has"]
    match = np.zeros((len(pr), len(gt), 15), bool)
    pck = np.zeros((len(pr), len(gt)))
    for i, p in enumerate(pr):
      for j, g in enumerate(gt):
        size = 0.6 * np.hypot(g["head"][2] - g["head"][0], g["head"][3] - g["head"][1])
        for k in range(15):
          if p["has"][k] and g["has"][k]:
            match[i, j, k] = np.linalg.norm(p["xy"][k] - g["xy"][k]) / size <= 0.5
        pck[i, j] = match[i, j].sum() / max(g["has"].sum(), 1)
      if len(gt):
        best = int(np.argmax(pck[i]))
        pck[i, [j for j in range(len(gt)) if j != best]] = 0
    owner = {j: int(np.argmax(pck[:, j])) for j in range(len(gt)) if len(pr) and pck[:, j].max()}
    for i, p in enumerate(pr):
      mine = [j for j, o in owner.items() if o == i]
      for k in np.nonzero(p["has"])[0]:
        scores[k].append(p["score"][k])
        labels[k].append(bool(mine) and match[i, mine[0], k])
  ap = np.zeros(15)
  for k in range(15):
    if scores[k]:
      lab = np.asarray(labels[k])[np.argsort(scores[k])[::-1]]
      rec, prec = np.cumsum(lab) / n_gt[k], np.cumsum(lab) / np.arange(1, len(lab) + 1)
      ap[k] = 100 * posetrack.voc_ap(rec, prec)
  return ap


def test_posetrack_matches_plain_loops_on_random_frames():
  rng = np.random.default_rng(9)
  frames = []
  for _ in range(6):
    gt = [{"xy": rng.uniform(0, 400, (15, 2)), "has": rng.uniform(size=15) < 0.8,
           "head": (0.0, 0.0, 20.0, 25.0)} for _ in range(rng.integers(1, 4))]
    pr = [{"xy": g["xy"] + rng.normal(0, 6, (15, 2)), "has": rng.uniform(size=15) < 0.9,
           "score": rng.uniform(size=15)} for g in gt for _ in range(rng.integers(0, 3))]
    pr += [{"xy": rng.uniform(0, 400, (15, 2)), "has": np.ones(15, bool),
            "score": rng.uniform(size=15)} for _ in range(rng.integers(0, 2))]
    frames.append({"gt": gt, "pr": pr, "ignore": []})
  ours = posetrack.evaluate_ap(frames)
  np.testing.assert_allclose(ours[:15], _poseval_loops(frames), atol=1e-9)
  assert 5 < ours[15] < 95


def test_point_in_polygon_excludes_the_boundary():
  square = np.array([[0.0, 0], [10, 0], [10, 10], [0, 10]])
  pts = np.array([[5.0, 5], [0, 5], [10, 10], [11, 5], [9.99, 0.01]])
  np.testing.assert_array_equal(posetrack.points_in_polygon(pts, square),
                                [True, False, False, False, True])


# ------------------------------------------------------------------------- registry and table

def test_registry_config_and_table(fixtures_dir):
  assert set(EVALUATORS) == {"coco", "ochuman", "aic", "crowdpose", "coco_wholebody", "mpii",
                             "mpii_trb", "posetrack18", "coco_bbox"}   # + the detector's box AP
  config = ml_collections.ConfigDict(dict(
      data=dict(dataset="coco", root=str(fixtures_dir / "coco"), val_ann="test_coco.json"),
      test=dict(vis_thr=0.3, oks_thr=0.8)))
  records = readers.read("coco", str(fixtures_dir / COCO_STYLE["coco"]), fixtures_dir)
  ev = EVALUATORS["coco"](records, config)
  assert (ev.vis_thr, ev.oks_thr) == (0.3, 0.8)
  assert ev.ann_file == os.path.join(str(fixtures_dir / "coco"), "test_coco.json")
  text = format_table({"AP": 0.7184, "AP50": 0.9, "AP75": 0.8, "AR": 0.77, "AR50": 0.93},
                      "coco")
  assert text.splitlines()[0].split(" | ")[0].strip() == "AP" and "0.718" in text
  assert "81.0" in format_table({"Total": 81.0}, ["Total"])


def test_format_table_posetrack_in_percent_even_below_one():
  metrics = {key: 81.0 for _, key in EVALUATORS["posetrack18"].columns}
  metrics["Wri"] = 0.714
  row = format_table(metrics, "posetrack18").splitlines()[1]
  assert "0.7" in row and "0.714" not in row and "81.0" in row


# -------------------------------------------------------------- metric rules and results files

def test_crowdpose_ignore_rules_2020_and_current(fixtures_dir, tmp_path):
  """'current' equals xtcocotools 1.14.3 on people whose labelled joints are all occluded
  (num_keypoints counts v = 2 only); '2020' scores them, as the published numbers did."""
  gt = json.load(open(fixtures_dir / COCO_STYLE["crowdpose"]))
  occluded = 0
  for a in gt["annotations"][::2]:            # every other person: all joints occluded (v = 1)
    k = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)
    if (k[:, 2] > 0).any():
      k[:, 2] = np.where(k[:, 2] > 0, 1, 0)
      a["keypoints"], a["num_keypoints"] = k.ravel().tolist(), 0
      occluded += 1
  assert occluded > 0
  ann = tmp_path / "crowd.json"
  ann.write_text(json.dumps(gt))
  res = tmp_path / "res.json"
  res.write_text(json.dumps(_gt_results(gt, np.random.default_rng(9), noise=5.0)))
  ref = _xtcocotools(str(ann), json.loads(res.read_text()), kp.CROWDPOSE.sigmas,
                     "keypoints_crowd", False)
  current = score_results_file("crowdpose", str(ann), str(res), crowd_ignore="current")
  assert [current[k] for k in coco.CROWD_STATS] == pytest.approx(list(ref), abs=1e-12)
  old = score_results_file("crowdpose", str(ann), str(res), crowd_ignore="2020")
  assert old == score_results_file("crowdpose", str(ann), str(res))      # the default
  assert old["AP"] != pytest.approx(current["AP"], abs=1e-3)
  with pytest.raises(ValueError, match="2020.*current"):
    score_results_file("crowdpose", str(ann), str(res), crowd_ignore="2021")


@pytest.mark.parametrize("problem, match", [
    ("no_score", r"entry 0 \(image \d+\) lacks \['score'\]"),
    ("string_keypoints", r"entry 0 \(image \d+\) 'keypoints' must hold numbers only"),
    ("string_score", r"entry 0 \(image \d+\) 'score' must hold numbers only"),
    ("keypoints_str", r"entry 0 \(image \d+\) 'keypoints' must be a list")])
def test_malformed_results_entry_is_one_clear_error(fixtures_dir, tmp_path, problem, match):
  ann = str(fixtures_dir / COCO_STYLE["coco"])
  results = _gt_results(json.load(open(ann)))
  if problem == "no_score":
    del results[0]["score"]
  elif problem == "string_keypoints":
    results[0]["keypoints"] = [str(v) for v in results[0]["keypoints"]]
  elif problem == "string_score":
    results[0]["score"] = "0.9"
  else:
    results[0]["keypoints"] = " ".join(map(str, results[0]["keypoints"]))
  res = tmp_path / "bad.json"
  res.write_text(json.dumps(results))
  with pytest.raises(ValueError, match=match) as err:
    score_results_file("coco", ann, str(res))
  assert "bad.json" in str(err.value) and "\n" not in str(err.value)


def test_mpii_and_trb_keep_the_first_of_duplicated_entries(fixtures_dir, tmp_path):
  """MMPose keeps the first prediction of an instance listed twice; so do we."""
  mat = _mpii_gt_mat(fixtures_dir, tmp_path)[0]
  ann = str(fixtures_dir / "mpii/test_mpii.json")
  anns = json.load(open(ann))
  good = [{"index": i, "keypoints": (np.c_[np.asarray(a["joints"]) - 1, np.ones(16)])
           .ravel().tolist()} for i, a in enumerate(anns)]
  bad = dict(good[0], keypoints=[0.0] * 48)
  res = tmp_path / "mpii.json"
  res.write_text(json.dumps(good + [bad]))
  assert score_results_file("mpii", ann, str(res), gt_file=mat)["Mean"] == 1.0
  res.write_text(json.dumps([bad] + good))
  assert score_results_file("mpii", ann, str(res), gt_file=mat)["Mean"] < 1.0
  res.write_text(json.dumps([dict(good[0], keypoints=["1"] * 48)]))
  with pytest.raises(ValueError, match="entry 0 'keypoints' must hold numbers"):
    score_results_file("mpii", ann, str(res), gt_file=mat)
  trb, gt = _trb_with_headboxes(fixtures_dir, tmp_path)
  good = [{"ann_id": a["id"], "keypoints": a["keypoints"]} for a in gt["annotations"]
          if max(a["keypoints"]) > 0]
  bad = dict(good[0], keypoints=[0.0] * 120)
  res = tmp_path / "trb_results.json"
  res.write_text(json.dumps(good + [bad]))
  assert score_results_file("mpii_trb", trb, str(res))["Mean_Acc"] == 1.0
  res.write_text(json.dumps([bad] + good))
  assert score_results_file("mpii_trb", trb, str(res))["Mean_Acc"] < 1.0


def test_mpii_ground_truth_in_json_head_box_form(fixtures_dir, tmp_path):
  """The JSON form (MMPose's MPII entries plus 'headbox') scores as the .mat it mirrors."""
  mat, joints, vis, boxes = _mpii_gt_mat(fixtures_dir, tmp_path)
  anns = json.load(open(fixtures_dir / "mpii/test_mpii.json"))
  for a, box in zip(anns, boxes):
    a["headbox"] = box.ravel().tolist()
  gt_json = tmp_path / "mpii_gt_val.json"
  gt_json.write_text(json.dumps(anns))
  preds = joints + np.random.default_rng(2).normal(0, 25, joints.shape)
  scipy.io.savemat(tmp_path / "pred.mat", {"preds": preds})
  ann = str(fixtures_dir / "mpii/test_mpii.json")
  from_mat = score_results_file("mpii", ann, str(tmp_path / "pred.mat"), gt_file=mat)
  from_json = score_results_file("mpii", ann, str(tmp_path / "pred.mat"), gt_file=str(gt_json))
  assert from_json == pytest.approx(from_mat, abs=1e-12)
  assert 0 < from_mat["Mean"] < 1


def test_mmpose_trb_results_with_nested_keypoints_are_scored(fixtures_dir, tmp_path):
  """MMPose's TopDownMpiiTrbDataset writes result_keypoints.json with each entry's keypoints as
  K lists [x, y, score] (`keypoints[i].tolist()`): scored like the flat form, not refused."""
  ann, gt = _trb_with_headboxes(fixtures_dir, tmp_path)
  rng = np.random.default_rng(3)
  flat, nested = [], []
  for a in gt["annotations"]:
    k = np.asarray(a["keypoints"], np.float64).reshape(40, 3)
    k[:, :2] += rng.normal(0, 15, (40, 2))
    flat.append({"ann_id": a["id"], "keypoints": k.reshape(-1).tolist(), "score": 1.0})
    nested.append({"bbox_id": a["id"], "keypoints": k.tolist(), "score": 1.0,
                   "center": [0, 0], "scale": [1, 1], "image_id": a["image_id"]})
  (tmp_path / "flat.json").write_text(json.dumps(flat))
  (tmp_path / "result_keypoints.json").write_text(json.dumps(nested))
  want = score_results_file("mpii_trb", ann, str(tmp_path / "flat.json"))
  got = score_results_file("mpii_trb", ann, str(tmp_path / "result_keypoints.json"))
  assert got == want and 0 < got["Mean_Acc"] < 1
  nested[0]["keypoints"][3] = ["12.5", 3, 1]
  (tmp_path / "bad.json").write_text(json.dumps(nested))
  with pytest.raises(ValueError, match=r"entry 0 'keypoints'\[3\] must hold numbers only"):
    score_results_file("mpii_trb", ann, str(tmp_path / "bad.json"))
