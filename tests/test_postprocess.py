"""Rescoring, OKS-NMS and prediction collection against hand-computed cases."""
import numpy as np
import pytest

from helpers import mm_oks_nms
from sbpose_jax.evaluators import results
from sbpose_jax.inference import postprocess


def test_rescore_mean_of_confident_joints_times_box_score():
  maxvals = np.array([[0.5, 0.1, 0.3], [0.1, 0.2, 0.15], [0.9, 0.9, 0.6]])
  scores = postprocess.rescore(maxvals, np.array([0.8, 1.0, 0.5]), vis_thr=0.2)
  # Row 1: 0.2 is not > 0.2, so no joint passes and the score is 0.
  np.testing.assert_allclose(scores, [(0.5 + 0.3) / 2 * 0.8, 0.0, 0.8 * 0.5])


def test_crop_areas_are_the_padded_crop_box():
  np.testing.assert_allclose(postprocess.crop_areas(np.array([[1.0, 2.0], [0.5, 0.5]])),
                             [200 * 400, 100 * 100])


def test_oks_iou_hand_computed():
  g = np.array([[0.0, 0.0, 1.0], [10.0, 0.0, 1.0]])
  d = (g + np.array([3.0, 4.0, 0.0]))[None]            # both joints 5 px away
  oks = postprocess.oks_iou(g, d, 100.0, np.array([100.0]), np.array([0.1, 0.1]))
  # e = d^2 / (2 sigma)^2 / ((a_g + a_d) / 2) / 2 = 25 / 0.04 / 100 / 2 = 3.125
  np.testing.assert_allclose(oks, [np.exp(-3.125)], rtol=1e-6)
  assert oks.dtype == np.float32


def test_oks_nms_drops_near_duplicates_and_keeps_best_first():
  sigmas = np.full(3, 0.1)
  a = np.array([[10.0, 10, 1], [20, 10, 1], [30, 10, 1]])
  poses = np.stack([a, a + [0.1, 0.0, 0], a + [100.0, 0, 0], a + [0.0, 3.0, 0]])
  scores = np.array([0.8, 0.9, 0.7, 0.6])
  areas = np.full(4, 1000.0)
  # Pose 0 and 1 are near-identical (OKS ~1); 2 is far away; 3 is 3 px off:
  # OKS = exp(-9 / 0.04 / 1000 / 2) = exp(-0.1125) = 0.894 <= 0.9, so it survives.
  keep = postprocess.oks_nms(poses, scores, areas, 0.9, sigmas)
  np.testing.assert_array_equal(keep, [1, 2, 3])
  keep = postprocess.oks_nms(poses, scores, areas, 0.85, sigmas)
  np.testing.assert_array_equal(keep, [1, 2])


def test_oks_nms_matches_the_reference_loop_on_random_crowds():
  rng = np.random.default_rng(0)
  sigmas = np.linspace(0.02, 0.1, 17)
  for _ in range(5):
    base = rng.uniform(0, 200, (4, 17, 2))
    kpts = np.concatenate([base[rng.integers(0, 4, 12)] + rng.normal(0, 2, (12, 17, 2)),
                           rng.uniform(0, 1, (12, 17, 1))], -1).astype(np.float32)
    scores, areas = rng.uniform(0, 1, 12), rng.uniform(500, 5000, 12).astype(np.float32)
    want = mm_oks_nms(kpts, scores, areas, 0.9, sigmas)
    assert list(postprocess.oks_nms(kpts, scores, areas, 0.9, sigmas)) == want
    # The row-by-row path for crowded images gives the same answer.
    assert list(postprocess.oks_nms(kpts, scores, areas, 0.9, sigmas, max_matrix=0)) == want


def test_rescore_and_nms_groups_by_image_in_first_appearance_order():
  k = np.zeros((4, 2, 3), np.float32)
  k[..., 2] = [[0.9, 0.9], [0.5, 0.5], [0.7, 0.7], [0.3, 0.3]]
  k[:, :, 0] = np.array([0, 500, 1000, 1500])[:, None]   # far apart: nothing suppressed
  image = np.array([7, 3, 7, 3])
  kept, scores = postprocess.rescore_and_nms(image, k, np.ones(4), np.full(4, 1e4),
                                             np.full(2, 0.1))
  np.testing.assert_array_equal(kept, [0, 2, 1, 3])      # image 7 first, best first within
  np.testing.assert_allclose(scores, [0.9, 0.5, 0.7, 0.3], rtol=1e-6)


def test_prediction_buffer_dedupes_sorts_and_masks():
  buf = results.PredictionBuffer(2, "toy")
  kp = lambda v: np.full((2, 2, 3), v, np.float32)
  buf.add(dict(index=[3, 1], keypoints=kp(1.0), center=np.zeros((2, 2)),
               scale=np.ones((2, 2)), bbox_score=[0.5, 0.6]))
  buf.add(dict(index=[1, 0], keypoints=kp(2.0), center=np.zeros((2, 2)),
               scale=np.ones((2, 2)), bbox_score=[0.7, 0.8], mask=[True, False]))
  got = buf.collect()
  np.testing.assert_array_equal(got["index"], [1, 3])
  np.testing.assert_allclose(got["bbox_score"], [0.6, 0.5])  # first sighting of row 1 kept


def test_prediction_buffer_rejects_wrong_joint_count_and_nan():
  buf = results.PredictionBuffer(17, "coco")
  with pytest.raises(ValueError, match=r"\(B, 17, 3\).*coco"):
    buf.add(dict(index=[0], keypoints=np.zeros((1, 14, 3))))
  bad = np.zeros((1, 17, 3))
  bad[0, 3, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    buf.add(dict(index=[0], keypoints=bad))


def test_check_results_errors_name_the_file_and_problem():
  ok = {"image_id": 1, "keypoints": [0.0] * 6, "score": 1.0}
  results.check_results([ok], 2, [1], "r.json")
  with pytest.raises(ValueError, match=r"r.json.*3 joints.*2 joints"):
    results.check_results([{**ok, "keypoints": [0.0] * 9}], 2, [1], "r.json")
  with pytest.raises(ValueError, match=r"r.json.*image ids.*\[5\]"):
    results.check_results([{**ok, "image_id": 5}], 2, [1], "r.json")
  with pytest.raises(ValueError, match=r"r.json.*NaN"):
    results.check_results([{**ok, "score": float("nan")}], 2, [1], "r.json")
  with pytest.raises(ValueError, match="JSON list"):
    results.check_results({"a": 1}, 2, [1], "r.json")


def test_coco_evaluator_equals_the_reference_pipeline_on_detector_boxes(fixtures_dir):
  """Fixture detections + random poses: evaluator == rescoring loop + NMS loop + pycocotools."""
  import collections
  import contextlib
  import io
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  from sbpose_jax import keypoints as kp
  from sbpose_jax.data import readers
  from sbpose_jax.evaluators import EVALUATORS
  ann = str(fixtures_dir / "coco/test_coco.json")
  rec = readers.read("coco", ann, fixtures_dir, use_gt_bbox=False,
                     det_file=fixtures_dir / "coco/test_coco_det_AP_H_56.json")
  gt = readers.read("coco", ann, fixtures_dir)
  rng = np.random.default_rng(0)
  n = len(rec)
  # Poses near a GT person of the same image (or anywhere in the box): overlapping people.
  k = np.zeros((n, 17, 3), np.float32)
  for i in range(n):
    same = np.nonzero(gt.image_index == rec.image_index[i])[0]
    base = gt.joints_xy[rng.choice(same)] if len(same) else rec.center_xy[i] + np.zeros((17, 2))
    k[i, :, :2] = base + rng.normal(0, 4, (17, 2))
    k[i, :, 2] = rng.uniform(0, 1, 17)
  ev = EVALUATORS["coco"](rec, None, ann_file=ann, backend="pycocotools")
  ev.process(dict(index=np.arange(n), keypoints=k, center=rec.center_xy, scale=rec.scale_wh,
                  bbox_score=rec.bbox_score))
  ours = ev.compute()
  by_image = collections.defaultdict(list)
  for i in range(n):
    by_image[int(rec.image_ids[rec.image_index[i]])].append(i)
  results = []
  for image_id, rows in by_image.items():
    sc = []
    for i in rows:
      good = [v for v in k[i, :, 2] if v > 0.2]
      sc.append((sum(good) / len(good) if good else 0.0) * rec.bbox_score[i])
    areas = np.prod(rec.scale_wh[rows] * 200, 1)
    for j in mm_oks_nms(k[rows], np.asarray(sc), areas, 0.9, kp.COCO.sigmas_array):
      results.append({"image_id": image_id, "category_id": 1, "score": float(sc[j]),
                      "keypoints": k[rows[j]].ravel().tolist()})
  assert len(results) < n                  # NMS removed some duplicates
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO(ann)
    e = COCOeval(coco_gt, coco_gt.loadRes(results), "keypoints")
    e.params.kpt_oks_sigmas = kp.COCO.sigmas_array
    e.evaluate(), e.accumulate(), e.summarize()
  np.testing.assert_allclose([ours[s] for s in ("AP", "AP50", "AP75", "AP(M)", "AP(L)", "AR")],
                             e.stats[:6], atol=1e-9)
  assert ours["AP"] > 0.05
