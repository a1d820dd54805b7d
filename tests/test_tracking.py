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
