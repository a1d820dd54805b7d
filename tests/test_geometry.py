"""Crop geometry against MMPose 0.x's formulas (docs/reference.md §1–3) and OpenCV."""
import glob

import cv2
import numpy as np
import pytest

from helpers import mm_get_affine_transform
from sbpose_jax import geometry


def _random_crops(n, seed=0):
  rng = np.random.default_rng(seed)
  for t in range(n):
    c = rng.uniform(-50, 700, 2).astype(np.float32)
    s = rng.uniform(0.05, 5, 2).astype(np.float32)
    kind = t % 4
    if kind == 0:
      r = 0.0
    elif kind == 1:
      r = float(rng.choice([90, -90, 180, 45, -30]))
    elif kind == 2:   # round numbers make pivot ties in the 3-point solve
      c, s, r = np.round(c), np.maximum(np.round(s * 8), 1) / 8, 0.0
      c, s = c.astype(np.float32), s.astype(np.float32)
    else:
      r = float(rng.uniform(-80, 80))
    yield c, s, r, [(192, 256), (288, 384), (256, 256), (256, 320)][t % 4]


def test_affine_matrix_bit_equal_to_reference():
  for c, s, r, out in _random_crops(400):
    for inv in (False, True):
      ref = mm_get_affine_transform(c, s, r, out, inv=inv)
      got = geometry.get_affine_transform(c, s, r, out, inv=inv)
      assert got.dtype == np.float64 and got.shape == (2, 3)
      np.testing.assert_array_equal(got, ref, err_msg=f"c={c} s={s} r={r} out={out} inv={inv}")


def test_solve_equals_cv2_on_arbitrary_points():
  rng = np.random.default_rng(1)
  for _ in range(200):
    src = rng.uniform(-500, 500, (3, 2)).astype(np.float32)
    dst = rng.uniform(-500, 500, (3, 2)).astype(np.float32)
    np.testing.assert_array_equal(geometry.solve_affine_3pt(src, dst),
                                  cv2.getAffineTransform(src, dst))
  with pytest.raises(ValueError, match="degenerate"):
    geometry.get_affine_transform([10, 10], [0, 0], 0, (192, 256))


def test_closed_form_matches_three_point():
  cases = list(_random_crops(100))
  c = np.stack([x[0] for x in cases])
  s = np.stack([x[1] for x in cases])
  r = np.array([x[2] for x in cases])
  got = geometry.affine_matrix(c, s, r, (192, 256))
  assert got.shape == (100, 2, 3)
  for i in range(100):
    ref = geometry.get_affine_transform(c[i], s[i], r[i], (192, 256))
    np.testing.assert_allclose(got[i], ref, rtol=1e-6, atol=1e-6 * (1 + np.abs(ref).max()))


def test_positive_rotation_is_counter_clockwise_and_only_scale_w_counts():
  c, s = np.float32([300, 200]), np.float32([1.0, 1.0])
  m = geometry.get_affine_transform(c, s, 90.0, (200, 200))
  # A point right of the centre ends up above the crop centre (counter-clockwise on screen).
  np.testing.assert_allclose(geometry.affine_points([350, 200], m), [100, 50], atol=1e-4)
  m2 = geometry.get_affine_transform(c, np.float32([1.0, 7.0]), 90.0, (200, 200))
  np.testing.assert_array_equal(m, m2)


def test_box_to_center_scale_formulas():
  boxes = np.array([[10, 20, 300, 100],      # wide: h = w / 0.75
                    [10, 20, 30, 100],       # tall: w = 0.75 h
                    [0, 0, 75, 100],         # exact aspect
                    [5.5, 7.25, 0, 0]])
  c, s = geometry.box_to_center_scale(boxes, 0.75, 1.25)
  assert c.dtype == np.float32 and s.dtype == np.float32 and c.shape == (4, 2)
  np.testing.assert_array_equal(c, np.float32([[160, 70], [25, 70], [37.5, 50], [5.5, 7.25]]))
  np.testing.assert_allclose(s, [[1.875, 2.5], [0.46875, 0.625], [0.46875, 0.625], [0, 0]])
  # Bit-equal to MM bbox_xywh2cs on json-like float boxes.
  rng = np.random.default_rng(0)
  for b in rng.uniform(0, 400, (200, 4)).round(2):
    x, y, w, h = (float(v) for v in b)
    ref_c = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > 0.75 * h:
      h = w * 1.0 / 0.75
    elif w < 0.75 * h:
      w = h * 0.75
    ref_s = np.array([w, h], dtype=np.float32) / 200. * 1.25
    got_c, got_s = geometry.box_to_center_scale(b, 0.75)
    np.testing.assert_array_equal(got_c, ref_c)
    np.testing.assert_array_equal(got_s, ref_s)
  with pytest.raises(ValueError, match="4 values"):
    geometry.box_to_center_scale([1, 2, 3], 0.75)


def test_joint_into_crop_and_back():
  rng = np.random.default_rng(2)
  c, s = geometry.box_to_center_scale(np.array([100.0, 50.0, 120.0, 260.0]), 0.75)
  pts = rng.uniform(60, 300, (17, 2))
  m = geometry.get_affine_transform(c, s, 0.0, (192, 256))
  crop = geometry.affine_points(pts, m)
  back = geometry.transform_preds(crop / 4.0, c, s, (48, 64))
  np.testing.assert_allclose(back, pts, atol=2e-3)
  # With rotation the inverse matrix brings points back.
  m = geometry.get_affine_transform(c, s, 33.0, (192, 256))
  minv = geometry.get_affine_transform(c, s, 33.0, (192, 256), inv=True)
  np.testing.assert_allclose(geometry.affine_points(geometry.affine_points(pts, m), minv), pts,
                             atol=1e-3)
  # The box centre lands on the crop centre W/2, H/2 (not (W-1)/2).
  np.testing.assert_allclose(geometry.affine_points(c, m), [96, 128], atol=1e-4)


def test_transform_preds_formula():
  coords = np.float32([[[0, 0], [48, 64], [10.25, 20.75]]])
  center, scale = np.float32([[300, 200]]), np.float32([[1.2, 1.6]])
  got = geometry.transform_preds(coords, center, scale, (48, 64))
  expect = coords * (200 * scale / np.float32([48, 64]))[:, None] + center[:, None] \
      - 100 * scale[:, None]
  np.testing.assert_allclose(got, expect, rtol=1e-6)
  np.testing.assert_allclose(got[0, 0], [180, 40], rtol=1e-6)
  assert got.dtype == np.float32


def test_flip_joints_twice_is_identity_and_zeroes_invisible():
  rng = np.random.default_rng(3)
  pairs = ((1, 2), (3, 4), (5, 6))
  xy = rng.uniform(0, 600, (7, 2)).astype(np.float32)
  vis = np.float32([1, 1, 0, 1, 1, 1, 0])
  fxy, fvis = geometry.flip_joints(xy, vis, pairs, 640)
  np.testing.assert_array_equal(fvis, [1, 0, 1, 1, 1, 0, 1])
  np.testing.assert_array_equal(fxy[1], [0, 0])                     # was joint 2: invisible
  np.testing.assert_array_equal(fxy[2], [639 - xy[1, 0], xy[1, 1]])
  np.testing.assert_array_equal(fxy[0], [639 - xy[0, 0], xy[0, 1]])
  xy2, vis2 = geometry.flip_joints(fxy, fvis, pairs, 640)
  np.testing.assert_array_equal(vis2, vis)
  np.testing.assert_allclose(xy2, xy * vis[:, None], atol=1e-4)
  c = np.float32([123.456, 78.9])
  np.testing.assert_allclose(geometry.flip_center_x(geometry.flip_center_x(c, 640), 640), c,
                             atol=1e-4)
  assert geometry.flip_center_x(c, 640)[0] == (np.float32(640) - c[0]) - np.float32(1)


def test_flip_mirrors_about_the_crop_centre():
  """A joint at crop x = u lands at W_in − u after flipping image, joints and centre (§8.2)."""
  c, s = np.float32([250.3, 180.2]), np.float32([1.1, 1.4666])
  pt = np.float32([[260.7, 150.1]])
  u = geometry.affine_points(pt, geometry.get_affine_transform(c, s, 0, (192, 256)))
  fpt, _ = geometry.flip_joints(pt, [1], (), 640)
  fc = geometry.flip_center_x(c, 640)
  fu = geometry.affine_points(fpt, geometry.get_affine_transform(fc, s, 0, (192, 256)))
  np.testing.assert_allclose(fu[0, 0], 192 - u[0, 0], atol=1e-3)
  np.testing.assert_allclose(fu[0, 1], u[0, 1], atol=1e-3)


@pytest.fixture
def coco_images(fixtures_dir):
  files = sorted(glob.glob(str(fixtures_dir / "coco" / "*.jpg")))
  if not files:
    pytest.skip("no COCO fixture images")
  return [cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in files]


def test_crop_pixel_equal_to_reference_and_fold_flip_close(coco_images):
  """Crops equal the reference's; a folded flip is close but, under OpenCV 4's fixed-point
  warp, not equal (hence opt-in: data.flip_in_affine)."""
  rng = np.random.default_rng(4)
  diff_values, total, max_diff = 0, 0, 0
  for t in range(24):
    img = coco_images[t % len(coco_images)]
    h, w = img.shape[:2]
    c = np.float32([rng.uniform(0, w), rng.uniform(0, h)])
    s = np.float32(rng.uniform(0.3, 3, 2))
    r = float(rng.uniform(-80, 80)) if t % 2 else 0.0
    out = (192, 256) if t % 3 else (288, 384)
    ref = cv2.warpAffine(img, mm_get_affine_transform(c, s, r, out), out, flags=cv2.INTER_LINEAR)
    got = cv2.warpAffine(img, geometry.get_affine_transform(c, s, r, out), out,
                         flags=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(got, ref)
    # Flip: the reference mirrors the image and the centre; we fold the mirror into M.
    fc = c.copy()
    fc[0] = w - fc[0] - 1
    ref_f = cv2.warpAffine(img[:, ::-1], mm_get_affine_transform(fc, s, r, out), out,
                           flags=cv2.INTER_LINEAR)
    m = geometry.fold_flip(geometry.get_affine_transform(geometry.flip_center_x(c, w), s, r, out),
                           w)
    got_f = cv2.warpAffine(img, m, out, flags=cv2.INTER_LINEAR)
    d = np.abs(got_f.astype(int) - ref_f.astype(int))
    max_diff = max(max_diff, int(d.max()))
    diff_values += int((d > 0).sum())
    total += d.size
  # Measured: 0.34-0.99% of values, up to 8 levels, on the fixture crops (docs/parity.md).
  assert 0 < diff_values / total < 0.02 and max_diff <= 16


def test_half_body_selection_and_box():
  ids = (0, 1, 2, 3)
  xy = np.float32([[10, 20], [30, 20], [20, 60], [0, 0], [50, 100], [70, 100], [60, 180]])
  vis = np.float32([1, 1, 1, 0, 1, 1, 1])
  c, s = geometry.half_body_center_scale(xy, vis, ids, True, 0.75)
  np.testing.assert_allclose(c, [20, 100 / 3], rtol=1e-6)
  np.testing.assert_allclose(s, [30 / 200 * 1.5, 40 / 200 * 1.5], rtol=1e-6)   # w = 0.75 h
  c, s = geometry.half_body_center_scale(xy, vis, ids, False, 0.75)          # lower
  np.testing.assert_allclose(c, [60, 380 / 3], rtol=1e-6)
  np.testing.assert_allclose(s, [60 / 200 * 1.5, 80 / 200 * 1.5], rtol=1e-6)   # w = 0.75 h
  # Lower has only 2 visible joints → upper even though lower was preferred.
  vis2 = np.float32([1, 1, 1, 0, 1, 1, 0])
  c, _ = geometry.half_body_center_scale(xy, vis2, ids, False, 0.75)
  np.testing.assert_allclose(c, [20, 100 / 3], rtol=1e-6)
  # Upper has 3 but only 1 visible, lower 2 → upper (1 joint) → no box.
  assert geometry.half_body_center_scale(xy, np.float32([1, 0, 0, 0, 1, 1, 0]), ids, True,
                                         0.75) is None
  # Wide extent: h = w / aspect.
  c, s = geometry.half_body_center_scale(np.float32([[0, 0], [100, 10], [50, 5]]), [1, 1, 1],
                                         (0, 1, 2), True, 0.75)
  np.testing.assert_allclose(s, [100 / 200 * 1.5, 100 / 0.75 / 200 * 1.5], rtol=1e-6)


def test_frozen_center_shift():
  n = 20000
  center = np.zeros((n, 2), np.float32) + 100
  wh = np.tile([[50.0, 200.0]], (n, 1))
  a = geometry.frozen_center_shift(center, wh, np.random.default_rng(7))
  b = geometry.frozen_center_shift(center, wh, np.random.default_rng(7))
  np.testing.assert_array_equal(a, b)
  moved = np.any(a != center, axis=1)
  assert abs(moved.mean() - 0.3) < 0.02
  d = a - center
  assert np.all(np.abs(d[:, 0]) <= 0.2 * 50 + 1e-4) and np.all(np.abs(d[:, 1]) <= 0.2 * 200 + 1e-3)
  assert np.abs(d[moved, 1]).max() > 0.19 * 200
  single = geometry.frozen_center_shift(np.float32([5, 5]), [10, 10], np.random.default_rng(0),
                                        prob=1.0)
  assert single.shape == (2,) and np.any(single != 5)


def test_affine_points_maps_a_batch_row_by_row_bit_for_bit():
  rng = np.random.default_rng(0)
  mats = rng.normal(size=(4, 2, 3)) * 50
  points = rng.uniform(-100, 400, (4, 17, 2)).astype(np.float32)
  got = geometry.affine_points(points, mats)
  want = np.stack([geometry.affine_points(p, m) for p, m in zip(points, mats)])
  np.testing.assert_array_equal(got, want)
  assert geometry.affine_points(points[0, 0], mats[0]).shape == (2,)   # one point, one matrix
