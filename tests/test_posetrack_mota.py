"""posetrack_mota against hand-counted sequences and poseval's code (tests/poseval_reference)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from sbpose_jax.evaluators import posetrack_mota as pm

NAMES17 = ["nose", "head_bottom", "head_top", "left_ear", "right_ear", "left_shoulder",
           "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
           "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
CAT = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": NAMES17}]


def person(x0, y0, tid, image_id, head=True):
  """A standing stick person: 17 joints around (x0, y0), ears not annotated, head box 20x20."""
  k = np.zeros((17, 3))
  k[:, 0] = x0 + np.arange(17) * 3.0
  k[:, 1] = y0 + np.arange(17) * 10.0
  k[:, 2] = 1
  k[3:5] = 0
  a = {"image_id": image_id, "track_id": tid, "keypoints": k.reshape(-1).tolist(),
       "scores": [0.9] * 17}
  if head:
    a["bbox_head"] = [x0, y0 - 20, 20, 20]       # 0.6 * diag = 16.97 px
  return a


def sequence(frames, ignore=None):
  """frames: list of lists of annotations (image_id filled in here)."""
  images, anns = [], []
  for i, people in enumerate(frames):
    im = {"id": i + 1, "file_name": f"images/val/x/{i:06d}.jpg"}
    if ignore and i in ignore:
      im["ignore_regions_x"] = [ignore[i][0]]
      im["ignore_regions_y"] = [ignore[i][1]]
    images.append(im)
    for a in people:
      anns.append({**a, "image_id": i + 1})
  return {"images": images, "annotations": anns, "categories": CAT}


def two_people(n=4):
  return [[person(100, 100, 0, 0), person(400, 100, 1, 0)] for _ in range(n)]


def ours(gt, pr):
  return pm.evaluate_sequences([(pm.parse_sequence(gt), pm.parse_sequence(pr), "s")])


def counts(gt, pr):
  return pm.accumulate([(pm.parse_sequence(gt), pm.parse_sequence(pr), "s")])


def check_against_poseval(gts, prs):
  ref = pytest.importorskip("poseval_reference")
  want, want_mid = ref.evaluate(gts, prs)
  tot = pm.accumulate([(pm.parse_sequence(g, predictions=False), pm.parse_sequence(p), f"s{i}")
                       for i, (g, p) in enumerate(zip(gts, prs))])
  for k in ("num_misses", "num_switches", "num_false_positives", "num_objects",
            "num_detections", "sumD"):
    np.testing.assert_allclose(tot[k], want_mid[k][0], rtol=1e-9, atol=1e-9, err_msg=k)
  got = pm.finalize(tot)
  for k in ("mota", "motp", "pre", "rec"):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-9, err_msg=k)
  # poseval's per-sequence figures (`-s`): the same four metrics on each sequence's counts
  want_seq = ref.evaluate_per_sequence(gts, prs)
  got_seq = pm.evaluate_per_sequence(
      [(pm.parse_sequence(g, predictions=False), pm.parse_sequence(p), f"s{i}")
       for i, (g, p) in enumerate(zip(gts, prs))])
  assert list(got_seq) == [f"s{i}" for i in range(len(gts))]
  for w, g in zip(want_seq, got_seq.values()):
    for k in ("mota", "motp", "pre", "rec"):
      np.testing.assert_allclose(g[k], w[k], rtol=1e-9, atol=1e-9, err_msg=f"per sequence {k}")
  # the flat table carries every one of them, per joint, per group and in total
  t = pm.table(got)
  for k, label in pm.METRICS:
    np.testing.assert_allclose([t[f"{label}_{n}"] for n in pm.POSEVAL_JOINTS], want[k][:15],
                               rtol=1e-9, atol=1e-9, err_msg=label)
    np.testing.assert_allclose(t[label], want[k][15], rtol=1e-9, atol=1e-9, err_msg=label)
  return got


def test_perfect_tracking_scores_100():
  gt = sequence(two_people())
  t = ours(gt, copy.deepcopy(gt))
  assert t["MOTA"] == pytest.approx(100) and t["MOTP"] == pytest.approx(100)
  assert t["Prec"] == pytest.approx(100) and t["Rec"] == pytest.approx(100)
  c = counts(gt, gt)
  np.testing.assert_array_equal(c["num_objects"], 6)     # 2 people x 3 frames: last unused
  check_against_poseval([gt], [gt])


def test_id_switch_costs_two_switches_per_joint():
  gt = sequence(two_people())
  pr_frames = two_people()
  for a in pr_frames[2]:                           # the ids swap from frame 2 on
    a["track_id"] = 1 - a["track_id"]
  pr = sequence(pr_frames)
  c = counts(gt, pr)
  np.testing.assert_array_equal(c["num_switches"], 2)
  assert ours(gt, pr)["MOTA"] == pytest.approx(100 * (1 - 2 / 6))
  check_against_poseval([gt], [pr])


def test_miss_false_positive_and_last_frame():
  gt = sequence(two_people())
  pr_frames = two_people()
  pr_frames[1] = pr_frames[1][:1]                          # person 1 missed in frame 1
  pr_frames[2].append(person(800, 400, 7, 0))              # a false positive in frame 2
  pr_frames[3] = []                                        # the last frame is never scored
  pr = sequence(pr_frames)
  c = counts(gt, pr)
  np.testing.assert_array_equal(c["num_misses"], 1)
  np.testing.assert_array_equal(c["num_false_positives"], 1)
  t = ours(gt, pr)
  assert t["MOTA"] == pytest.approx(100 * (1 - 2 / 6))
  assert t["Prec"] == pytest.approx(100 * 5 / 6) and t["Rec"] == pytest.approx(100 * 5 / 6)
  check_against_poseval([gt], [pr])


def test_frame_without_predictions_counts_one_object_miss_and_fp():
  gt = sequence(two_people())
  pr_frames = two_people()
  pr_frames[1] = []
  pr = sequence(pr_frames)
  c = counts(gt, pr)
  # frames 0 and 2: 2 objects each; frame 1: one object, one miss, one FP whatever the people
  np.testing.assert_array_equal(c["num_objects"], 5)
  np.testing.assert_array_equal(c["num_misses"], 1)
  np.testing.assert_array_equal(c["num_false_positives"], 1)
  check_against_poseval([gt], [pr])


def test_ignore_region_removes_gt_and_predictions():
  frames = two_people()
  pr_frames = two_people()
  pr_frames[1].append(person(800, 400, 7, 0))              # an FP inside the region
  gt_frames = copy.deepcopy(frames)
  box = ([780, 900, 900, 780], [380, 380, 600, 600])
  gt = sequence(gt_frames, ignore={1: box})
  pr = sequence(pr_frames)
  assert counts(gt, pr)["num_false_positives"].sum() == 0
  check_against_poseval([gt], [pr])
  # A GT person wholly inside a region is gone, and so is the prediction on it.
  big = ([350, 700, 700, 350], [50, 50, 400, 400])
  gt = sequence(frames, ignore={0: big})
  c = counts(gt, sequence(two_people()))
  np.testing.assert_array_equal(c["num_objects"], 5)
  assert c["num_false_positives"].sum() == 0
  check_against_poseval([gt], [sequence(two_people())])


def test_no_score_threshold_and_absent_joints():
  gt = sequence(two_people())
  pr_frames = two_people()
  for fr in pr_frames:
    k = np.asarray(fr[0]["keypoints"]).reshape(17, 3)
    k[0] = 0                                      # nose absent: x = y = 0, third value 0
    k[5, 2] = 0                                   # left shoulder with score 0: still present
    fr[0]["keypoints"] = k.reshape(-1).tolist()
  pr = sequence(pr_frames)
  c = counts(gt, pr)
  nose, lsho = pm.POSEVAL_JOINTS.index("nose"), pm.POSEVAL_JOINTS.index("left_shoulder")
  assert c["num_misses"][nose] == 3 and c["num_misses"][lsho] == 0
  check_against_poseval([gt], [pr])
  # per joint: only the nose lost recall (3 of its 6 objects missed), its precision stays
  t = ours(gt, pr)
  assert t["Rec_nose"] == pytest.approx(50) and t["Prec_nose"] == pytest.approx(100)
  assert t["MOTA_nose"] == pytest.approx(50) and t["Rec_left_shoulder"] == pytest.approx(100)
  assert t["Rec_Head"] == pytest.approx((100 + 100 + 50) / 3)
  assert t["Rec"] == pytest.approx((14 * 100 + 50) / 15)


def test_single_frame_sequence_is_an_error():
  gt = sequence(two_people(1) + [[]])
  with pytest.raises(ValueError, match="only one frame"):
    ours(gt, gt)


def test_motp_sums_every_pair_within_threshold():
  """Two people 5 px apart: each GT joint has two candidates within 0.5, both count in sumD."""
  frames = [[person(100, 100, 0, 0), person(105, 100, 1, 0)] for _ in range(3)]
  gt = sequence(frames)
  got = check_against_poseval([gt], [gt])
  assert got["motp"][15] < 100


def _moving_sequences(fixtures_dir, rng):
  """Each fixture GT frame becomes a 6-frame clip of its people drifting; predictions perturbed."""
  gts, prs = [], []
  for path in sorted((fixtures_dir / "posetrack18/annotations/val").glob("*.json")):
    src = json.loads(path.read_text())
    im = src["images"][0]
    frames_gt, frames_pr = [], []
    for t in range(6):
      people_gt, people_pr = [], []
      for a in src["annotations"]:
        k = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
        shift = np.array([3.0 * t, 1.5 * t])
        k[:, :2] = np.where(k[:, 2:] > 0, k[:, :2] + shift, k[:, :2])
        g = {**a, "keypoints": k.reshape(-1).tolist()}
        g["bbox_head"] = [a["bbox_head"][0] + shift[0], a["bbox_head"][1] + shift[1],
                          *a["bbox_head"][2:]]
        people_gt.append(g)
        if rng.random() < 0.15:
          continue                                                   # a missed person
        head = 0.6 * np.hypot(*a["bbox_head"][2:])
        kp = k.copy()
        kp[:, :2] += rng.normal(0, 0.3 * head, (17, 2))              # some beyond 0.5
        drop = rng.random(17) < 0.1
        kp[drop] = 0
        kp[~drop, 2] = rng.random((~drop).sum())
        tid = a["track_id"] if rng.random() > 0.2 else int(rng.integers(0, 20))
        people_pr.append({"track_id": tid, "keypoints": kp.reshape(-1).tolist(),
                          "scores": kp[:, 2].tolist()})
      ids = [p["track_id"] for p in people_pr]
      people_pr = [p for i, p in enumerate(people_pr) if p["track_id"] not in ids[:i]]
      if rng.random() < 0.3:
        people_pr.append({"track_id": 50 + t, "keypoints": people_gt[0]["keypoints"],
                          "scores": [0.5] * 17})                     # a duplicate: FP or match
      frames_gt.append(people_gt)
      frames_pr.append(people_pr)
    seq_gt, seq_pr = sequence(frames_gt), sequence(frames_pr)
    for i, img in enumerate(seq_gt["images"]):
      for key in ("ignore_regions_x", "ignore_regions_y"):
        if key in im:
          img[key] = im[key]
    gts.append(seq_gt)
    prs.append(seq_pr)
  return gts, prs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixture_sequences_with_perturbed_gt_match_poseval(fixtures_dir, seed):
  gts, prs = _moving_sequences(fixtures_dir, np.random.default_rng(seed))
  got = check_against_poseval(gts, prs)
  assert np.isfinite(got["mota"][15]) and got["mota"][15] < 100


def test_table_reports_every_metric_per_joint_group_and_total():
  """poseval computes MOTA, MOTP, Prec, Rec per joint and in total: all of them are reported."""
  gt = sequence(two_people())
  pr_frames = two_people()
  pr_frames[1] = pr_frames[1][:1]                          # person 1 missed in frame 1
  pr_frames[2].append(person(800, 400, 7, 0))              # a false positive in frame 2
  t = ours(gt, sequence(pr_frames))
  for _, label in pm.METRICS:
    assert label in t
    for name, _ in pm.COLUMNS:
      assert f"{label}_{name}" in t
    for joint in pm.POSEVAL_JOINTS:
      assert f"{label}_{joint}" in t
  assert t["Prec_right_ankle"] == pytest.approx(100 * 5 / 6)
  assert t["Rec_Knee"] == pytest.approx(100 * 5 / 6)
  assert t["MOTP_head_top"] == pytest.approx(100)
  text = pm.format_table(t)
  assert text.splitlines()[0].split()[0] == "Head"          # poseval's row comes first
  assert [line.split()[0] for line in text.splitlines()[3:]] == ["MOTA", "MOTP", "Prec", "Rec"]
  # a table without the per-group keys (an older metrics.json) still prints poseval's row
  short = {k: v for k, v in t.items() if k.startswith("MOTA") or k in ("MOTP", "Prec", "Rec")}
  assert len(pm.format_table(short).splitlines()) == 2


def test_poseval_json_layout():
  gt = sequence(two_people())
  m = pm.finalize(counts(gt, gt))
  js = pm.poseval_json(m)
  assert sorted(js) == ["mota", "motp", "names", "pre", "rec"]
  assert all(len(js[k]) == 16 for k in ("mota", "motp", "pre", "rec"))
  assert js["names"]["0"] == "right_ankle" and js["names"]["12"] == "neck"
  assert js["names"]["15"] == "total"
  json.dumps(js)


def test_per_sequence_metrics_differ_where_the_sequences_do():
  good = sequence(two_people())
  pr_frames = two_people()
  for a in pr_frames[2]:
    a["track_id"] = 1 - a["track_id"]
  seqs = [(pm.parse_sequence(good), pm.parse_sequence(good), "good"),
          (pm.parse_sequence(good), pm.parse_sequence(sequence(pr_frames)), "swapped")]
  per = pm.evaluate_per_sequence(seqs)
  assert per["good"]["mota"][15] == pytest.approx(100)
  assert per["swapped"]["mota"][15] == pytest.approx(100 * (1 - 2 / 6))
  assert pm.evaluate_sequences(seqs)["MOTA"] == pytest.approx(100 * (1 - 2 / 12))


def test_score_folders_reads_files(tmp_path):
  gt, pr = sequence(two_people()), sequence(two_people())
  (tmp_path / "gt").mkdir()
  (tmp_path / "pr").mkdir()
  (tmp_path / "gt/a.json").write_text(json.dumps(gt))
  with pytest.raises(FileNotFoundError, match="a.json"):
    pm.score_folders(str(tmp_path / "gt"), str(tmp_path / "pr"))
  (tmp_path / "pr/a.json").write_text(json.dumps(pr))
  t = pm.score_folders(str(tmp_path / "gt"), str(tmp_path / "pr"))
  assert t["MOTA"] == pytest.approx(100)
  assert "MOTA" in pm.format_table(t)


def test_evaluate_command_prints_mota_beside_ap(tmp_path, capsys):
  from sbpose_jax.commands import evaluate  # why: only this test or script needs it
  names = ["nose", "head_bottom", "head_top", "left_ear", "right_ear", "left_shoulder",
           "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
           "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
  gt = sequence(two_people())
  gt["categories"][0]["keypoints"] = names
  pr_frames = two_people()
  for a in pr_frames[2]:
    a["track_id"] = 1 - a["track_id"]
  pr = sequence(pr_frames)
  (tmp_path / "annotations/val").mkdir(parents=True)
  (tmp_path / "annotations/val/seq.json").write_text(json.dumps(gt))
  (tmp_path / "annotations/posetrack18_val.json").write_text(json.dumps(gt))
  (tmp_path / "res").mkdir()
  (tmp_path / "res/seq.json").write_text(json.dumps(pr))
  m = evaluate.main(["--config", "posetrack18_res50", "--results", str(tmp_path / "res"),
                     "--track", "--out-dir", str(tmp_path / "out"),
                     f"--config.data.root={tmp_path}"])
  assert m["track/MOTA"] == pytest.approx(100 * (1 - 2 / 6))
  assert m["Total"] == pytest.approx(100)
  out = capsys.readouterr().out
  assert "MOTA" in out and "Total" in out
  assert m["track/MOTP_Wri"] == pytest.approx(100) and m["track/Rec_left_knee"] == 100
  assert [line.split()[0] for line in out.splitlines() if line.split()[:1] in (
      ["MOTP"], ["Prec"], ["Rec"])] == ["MOTP", "Prec", "Rec"]          # the per-group rows
  # poseval's files: the total and one per sequence, per joint and in total
  total = json.loads((tmp_path / "out/tracking/total_MOT_metrics.json").read_text())
  seq = json.loads((tmp_path / "out/tracking/seq_MOT_metrics.json").read_text())
  assert total["mota"][15] == pytest.approx(m["track/MOTA"]) and total["names"]["15"] == "total"
  assert seq["pre"] == total["pre"] and len(seq["rec"]) == 16


def test_duplicate_predicted_ids_and_large_ids_are_errors():
  gt = sequence(two_people())
  pr_frames = two_people()
  pr_frames[1][1]["track_id"] = 0
  with pytest.raises(ValueError, match="twice"):
    ours(gt, sequence(pr_frames))
  pr_frames[1][1]["track_id"] = 10000
  with pytest.raises(ValueError, match="10000"):
    ours(gt, sequence(pr_frames))


def test_people_without_joints_and_frames_emptied_by_ignore_regions():
  """poseval's quirks: a GT person with no joints keeps a frame on the normal path (no ignore
  region there); a frame whose people are all inside ignore regions counts as empty."""
  empty = person(0, 0, 5, 0)
  empty["keypoints"] = [0] * 51
  gt_frames = two_people(5)
  gt_frames[1] = [empty]                       # only a person without joints
  pr_frames = two_people(5)
  pr_frames[3].append({**person(0, 0, 9, 0), "keypoints": [0] * 51})   # a prediction without
  everything = ([0, 2000, 2000, 0], [0, 0, 2000, 2000])
  gt = sequence(gt_frames, ignore={2: everything})
  pr = sequence(pr_frames)
  c = counts(gt, pr)
  # frame 1: normal path, no GT joints: the 2 predictions are FPs; frame 2: emptied → 1/1/1;
  # frames 0 and 3: 2 objects each; frame 4 unused.
  np.testing.assert_array_equal(c["num_objects"], 5)
  np.testing.assert_array_equal(c["num_false_positives"], 3)
  check_against_poseval([gt], [pr])
