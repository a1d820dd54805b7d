"""Tracking pieces on hand-made cases: flow, matching, smoothing and the tracker's id rules."""
from __future__ import annotations

import numpy as np
import pytest

from sbpose_jax import keypoints
from sbpose_jax.tracking import flow, matching, smoothing, tracker

SIGMAS = keypoints.get("posetrack18").sigmas_array
K = len(SIGMAS)


def pose(x, y, score=0.9, n_vis=K):
  """A 17-joint pose spread over a 40 x 80 box at (x, y)."""
  k = np.zeros((K, 3), np.float32)
  k[:, 0] = x + (np.arange(K) % 3) * 20
  k[:, 1] = y + np.arange(K) * 5
  k[:n_vis, 2] = score
  return k


def test_box_iou_and_nms():
  a = np.array([[0, 0, 10, 10]])
  b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
  np.testing.assert_allclose(matching.box_iou(a, b), [[50 / 150, 0, 1]])
  keep = matching.box_nms(np.concatenate([a, b]), np.array([0.9, 0.8, 0.7, 0.95]), 0.5)
  np.testing.assert_array_equal(keep, [3, 1, 2])     # box 0 duplicates box 3 (IoU 1)


def test_greedy_match_takes_the_best_pair_first_and_respects_the_threshold():
  sim = np.array([[0.6, 0.7], [0.1, 0.65], [0.2, 0.25]])
  # Hungarian would pair (0, 0) + (1, 1); greedy takes (0, 1) first, then (1, 0) is too low.
  assert matching.greedy_match(sim, 0.3) == [(0, 1)]
  assert matching.greedy_match(sim, 0.05) == [(0, 1), (2, 0)]


def test_oks_identity_and_distance():
  p = pose(100, 100)[None]
  assert matching.oks(p, p, np.array([3200.0]), SIGMAS)[0, 0] == pytest.approx(1.0)
  far = p.copy()
  far[..., 0] += 500
  assert matching.oks(far, p, np.array([3200.0]), SIGMAS)[0, 0] < 1e-6


def test_propagate_and_box_around():
  fl = np.zeros((200, 300, 2), np.float32)
  fl[..., 0], fl[..., 1] = 4.0, -2.0
  p = pose(50, 50)[None]
  moved = flow.propagate_joints(p, fl)
  np.testing.assert_allclose(moved[..., :2] - p[..., :2], np.broadcast_to([4, -2], (1, K, 2)))
  boxes, keep = flow.boxes_around(moved, 0.3, enlarge=0.15)
  lo, hi = moved[0, :, :2].min(0), moved[0, :, :2].max(0)
  np.testing.assert_allclose(boxes[0, 2:] - boxes[0, :2], (hi - lo) * 1.15, rtol=1e-5)
  assert list(keep) == [0]


def test_dis_flow_recovers_a_translation():
  rng = np.random.default_rng(0)
  img = cv2_blur(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
  shifted = np.roll(img, (3, 5), axis=(0, 1))            # down 3, right 5
  fl = flow.DisFlow("medium")(img, shifted)
  np.testing.assert_allclose(np.median(fl[20:-20, 20:-20].reshape(-1, 2), 0), [5, 3], atol=0.5)
  with pytest.raises(ValueError, match="preset"):
    flow.DisFlow("bogus")


def cv2_blur(img):
  import cv2  # why: OpenCV only for this function; grain workers import the module
  return cv2.GaussianBlur(img, (5, 5), 1.5)


def test_one_euro_keeps_constants_and_damps_noise():
  f = smoothing.OneEuro(fps=30, min_cutoff=1.0, beta=0.0)
  x = np.ones((K, 2))
  for _ in range(5):
    np.testing.assert_allclose(f(x), x)
  rng = np.random.default_rng(0)
  f = smoothing.OneEuro(fps=30, min_cutoff=1.0, beta=0.0)
  noisy = rng.normal(0, 1, (200, 1, 2))
  out = np.stack([f(n) for n in noisy])
  assert out[50:].std() < 0.5 * noisy[50:].std()


class ConstantFlow:
  def __init__(self, dx):
    self.dx = dx

  def __call__(self, prev, nxt):
    fl = np.zeros(prev.shape[:2] + (2,), np.float32)
    fl[..., 0] = self.dx
    return fl


@pytest.mark.parametrize("similarity", ["iou", "oks", "flow"])
def test_tracker_keeps_ids_of_two_walking_people(similarity):
  s = tracker.TrackSettings(similarity=similarity, queue_len=3)
  t = tracker.Tracker(s, SIGMAS, flow_fn=ConstantFlow(6.0))
  frame = np.zeros((300, 600, 3), np.uint8)
  seen = []
  for i in range(6):
    boxes, scores = t.propose(frame, np.zeros((0, 4)), None)
    poses = np.stack([pose(50 + 6 * i, 50), pose(300 + 6 * i, 60)])
    res = t.update(poses, np.array([[40 + 6 * i, 40, 110 + 6 * i, 140],
                                    [290 + 6 * i, 50, 360 + 6 * i, 150]]), np.ones(2))
    seen.append([r["track_id"] for r in res])
    if i > 0:
      assert len(boxes) == 2                                # both propagated by flow
  assert seen == [[0, 1]] * 6


def test_tracker_queue_new_ids_and_whole_frame_fallback():
  s = tracker.TrackSettings(similarity="oks", queue_len=3, propagate=False)
  t = tracker.Tracker(s, SIGMAS)
  frame = np.zeros((100, 200, 3), np.uint8)
  boxes, _ = t.propose(frame, None)
  np.testing.assert_array_equal(boxes, [[0, 0, 200, 100]])  # no detector, nothing to propagate
  box = np.array([[40, 40, 110, 140]])
  assert [r["track_id"] for r in t.update(pose(50, 50)[None], box, [1])] == [0]
  for _ in range(2):                                        # gone for 2 frames: within queue
    t.propose(frame, np.zeros((0, 4)))
    assert t.update(np.zeros((0, K, 3)), np.zeros((0, 4)), []) == []
  t.propose(frame, np.zeros((0, 4)))
  assert [r["track_id"] for r in t.update(pose(50, 50)[None], box, [1])] == [0]
  for _ in range(3):                                        # gone for 3: forgotten
    t.propose(frame, np.zeros((0, 4)))
    t.update(np.zeros((0, K, 3)), np.zeros((0, 4)), [])
  assert [r["track_id"] for r in t.update(pose(50, 50)[None], box, [1])] == [1]
  # Two visible joints: no new id (MMPose 0.x: at least 3).
  assert t.update(pose(400, 50, n_vis=2)[None], box + 300, [1]) == []


def test_tracker_drops_duplicate_poses_and_rejects_bad_similarity():
  t = tracker.Tracker(tracker.TrackSettings(similarity="iou", propagate=False), SIGMAS)
  p = pose(50, 50)
  res = t.update(np.stack([p, p + [0.5, 0.5, 0]]), np.array([[40, 40, 110, 140]] * 2), [1, .9])
  assert len(res) == 1
  with pytest.raises(ValueError, match="similarity"):
    tracker.Tracker(tracker.TrackSettings(similarity="bogus"), SIGMAS)


def test_propagated_boxes_stay_inside_the_frame():
  t = tracker.Tracker(tracker.TrackSettings(similarity="oks"), SIGMAS, flow_fn=ConstantFlow(0.0))
  frame = np.zeros((100, 200, 3), np.uint8)
  t.propose(frame, None)
  t.update(pose(150, -20)[None], np.array([[140, -30, 210, 70]]), [1])   # joints off the frame
  boxes, _ = t.propose(frame, None)
  assert len(boxes) == 1
  assert boxes.min() >= 0 and boxes[0, 2] <= 200 and boxes[0, 3] <= 100


def test_detector_boxes_kept_propagated_duplicates_dropped():
  t = tracker.Tracker(tracker.TrackSettings(similarity="oks"), SIGMAS, flow_fn=ConstantFlow(0.0))
  frame = np.zeros((300, 600, 3), np.uint8)
  t.propose(frame, np.zeros((0, 4)))
  t.update(np.stack([pose(50, 50), pose(400, 50)]),
           np.array([[40, 40, 110, 140], [390, 40, 460, 140]]), [1, 1])
  # Two crossing people the detector found (IoU 0.6): both kept. The propagated box of the
  # first track repeats a detection and goes; the second track's box is new and stays.
  dets = np.array([[44, 45, 104, 135], [50, 45, 110, 135]], np.float32)
  boxes, scores = t.propose(frame, dets, np.array([0.9, 0.8]))
  assert len(boxes) == 3
  np.testing.assert_array_equal(boxes[:2], dets)
  assert boxes[2, 0] > 300


def test_a_drifted_propagated_box_repeating_a_detected_pose_goes():
  # The track's box drifted (flow on a loose box): its propagated box overlaps the person's
  # new detection below nms_iou, so both reach the pose model, which finds the same person in
  # both. Without the rule the drifted pose would survive as a second track (a ghost).
  t = tracker.Tracker(tracker.TrackSettings(similarity="oks"), SIGMAS, flow_fn=ConstantFlow(0.0))
  frame = np.zeros((300, 600, 3), np.uint8)
  t.propose(frame, np.zeros((0, 4)))
  t.update(pose(30, 50)[None], np.array([[20, 40, 90, 140]]), [0.8])
  det = np.array([[0, 20, 110, 160]], np.float32)   # loose: IoU 0.27 with the propagated box
  boxes, scores = t.propose(frame, det, np.array([0.9]))
  assert len(boxes) == 2
  assert scores[1] == pytest.approx(0.8)     # the detector score the track came from
  same = np.stack([pose(30, 50), pose(36, 54, score=0.95)])   # OKS 0.6-0.83 < pose_nms_oks
  res = t.update(same, boxes, scores)
  assert [r["track_id"] for r in res] == [0]
  np.testing.assert_allclose(res[0]["keypoints"], same[0])    # the detected box's pose
  # Two detected boxes with the same poses are both kept (people who cross), and a propagated
  # box whose pose is somebody else stays.
  t2 = tracker.Tracker(tracker.TrackSettings(similarity="oks", propagated_oks=1.0), SIGMAS,
                       flow_fn=ConstantFlow(0.0))
  t2.propose(frame, np.zeros((0, 4)))
  t2.update(pose(30, 50)[None], np.array([[20, 40, 90, 140]]), [0.8])
  boxes, scores = t2.propose(frame, det, np.array([0.9]))
  assert len(t2.update(same, boxes, scores)) == 2           # the rule off: the ghost lives


def test_propagated_scores_do_not_decay_while_the_detector_is_away():
  t = tracker.Tracker(tracker.TrackSettings(similarity="flow"), SIGMAS,
                      flow_fn=ConstantFlow(2.0))
  frame = np.zeros((300, 600, 3), np.uint8)
  t.propose(frame, np.array([[40, 40, 110, 140]], np.float32), np.array([0.9]))
  t.update(pose(50, 50, score=0.5)[None], np.array([[40, 40, 110, 140]]), [0.9])
  for i in range(1, 6):                                      # detector frames only every 6th
    boxes, scores = t.propose(frame, np.zeros((0, 4)))
    np.testing.assert_allclose(scores, [0.9])
    res = t.update(pose(50 + 2 * i, 50, score=0.5)[None], boxes, scores)
    assert [r["track_id"] for r in res] == [0]
    assert res[0]["score"] == pytest.approx(0.45)


def test_tracker_smoothing_steadies_a_jittering_pose():
  rng = np.random.default_rng(0)
  out = {}
  for smooth in (False, True):
    t = tracker.Tracker(tracker.TrackSettings(similarity="oks", propagate=False,
                                              smoothing=smooth, one_euro_beta=0.0), SIGMAS)
    xs = []
    for _ in range(40):
      p = pose(100, 100)
      p[:, :2] += rng.normal(0, 1.0, (K, 2))
      res = t.update(p[None], np.array([[90, 90, 160, 190]]), [1])
      assert [r["track_id"] for r in res] == [0]
      xs.append(res[0]["keypoints"][0, 0])
    out[smooth] = np.std(xs[10:])
  assert out[True] < 0.6 * out[False]


def test_drop_joints_writes_low_score_joints_absent_as_poseval_reads_them():
  from sbpose_jax.tracking import results
  k = pose(10, 10)
  k[:5, 2] = 0.2
  low = pose(50, 50, score=0.1)
  res = {"images": [{"id": 1}], "annotations": [
      {"image_id": 1, "track_id": 0, "keypoints": k.reshape(-1).tolist(),
       "scores": (k[:, 2] * 0.5).tolist()},      # rescored: the threshold reads keypoints
      {"image_id": 1, "track_id": 1, "keypoints": low.reshape(-1).tolist(),
       "scores": low[:, 2].tolist()}]}
  assert results.drop_joints(res, 0.0) is res
  out = results.drop_joints(res, 0.3)
  assert [a["track_id"] for a in out["annotations"]] == [0]     # no joint left: dropped
  kept = np.asarray(out["annotations"][0]["keypoints"]).reshape(-1, 3)
  np.testing.assert_array_equal(kept[:5], 0)                      # x = y = score = 0
  np.testing.assert_allclose(kept[5:], k[5:])
  np.testing.assert_allclose(out["annotations"][0]["scores"], [0] * 5 + [0.45] * 12)
  assert len(res["annotations"]) == 2                             # the input is left as it was


def test_results_rank_joints_by_their_persons_score():
  import types
  from sbpose_jax.tracking import results
  source = types.SimpleNamespace(images_meta=None, files=None)
  info = keypoints.get("posetrack18")
  k = pose(10, 10, score=0.8)
  k[0, 2] = 0.2
  out = results.results_json(source, info, [[dict(track_id=3, keypoints=k, box=np.zeros(4),
                                                  score=0.5)]], write_kpt_thr=0.3)
  a = out["annotations"][0]
  v = np.asarray(a["keypoints"]).reshape(-1, 3)
  np.testing.assert_allclose(v[1:, 2], 0.8, rtol=1e-6)         # confidences as predicted
  np.testing.assert_allclose(a["scores"], [0] + [0.4] * (K - 1), rtol=1e-6)  # x person score
  np.testing.assert_array_equal(v[0], 0)                        # below write_kpt_thr: absent
