"""Heatmap targets and decoding against MMPose 0.x (docs/reference.md §4.1, §5.1, §5.2)."""
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import blur_heatmaps_jnp, decode_unbiased_jnp, mm_decode_default_nhwc
from sbpose_jax import geometry
from sbpose_jax import heatmaps


# --- the reference, re-implemented here from MM top_down_transform.py / top_down_eval.py ----------
def mm_msra_target(joints, vis, image_size, heatmap_size, sigma):
  w, h = heatmap_size
  k = len(joints)
  target_weight = np.zeros((k, 1), dtype=np.float32)
  target = np.zeros((k, h, w), dtype=np.float32)
  tmp_size = sigma * 3
  feat_stride = np.asarray(image_size) / [w, h]
  for j in range(k):
    target_weight[j] = vis[j]
    mu_x = int(joints[j][0] / feat_stride[0] + 0.5)
    mu_y = int(joints[j][1] / feat_stride[1] + 0.5)
    ul = [int(mu_x - tmp_size), int(mu_y - tmp_size)]
    br = [int(mu_x + tmp_size + 1), int(mu_y + tmp_size + 1)]
    if ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
      target_weight[j] = 0
    if target_weight[j] > 0.5:
      size = 2 * tmp_size + 1
      x = np.arange(0, size, 1, np.float32)
      y = x[:, None]
      x0 = y0 = size // 2
      g = np.exp(-((x - x0)**2 + (y - y0)**2) / (2 * sigma**2))
      g_x = max(0, -ul[0]), min(br[0], w) - ul[0]
      g_y = max(0, -ul[1]), min(br[1], h) - ul[1]
      img_x = max(0, ul[0]), min(br[0], w)
      img_y = max(0, ul[1]), min(br[1], h)
      target[j][img_y[0]:img_y[1], img_x[0]:img_x[1]] = g[g_y[0]:g_y[1], g_x[0]:g_x[1]]
  return target.transpose(1, 2, 0), target_weight[:, 0]


def mm_decode_dark(hm_nkhw, kernel):
  n, k, h, w = hm_nkhw.shape
  flat = hm_nkhw.reshape((n, k, -1))
  idx, maxvals = np.argmax(flat, 2), np.amax(flat, 2)
  preds = np.stack([idx % w, idx // w], -1).astype(np.float32)
  preds = np.where((maxvals > 0)[..., None], preds, -1).astype(np.float32)
  hm = hm_nkhw.copy()
  border = (kernel - 1) // 2
  for i in range(n):
    for j in range(k):
      origin_max = np.max(hm[i, j])
      dr = np.zeros((h + 2 * border, w + 2 * border), dtype=np.float32)
      dr[border:-border, border:-border] = hm[i, j].copy()
      dr = cv2.GaussianBlur(dr, (kernel, kernel), 0)
      hm[i, j] = dr[border:-border, border:-border].copy()
      hm[i, j] *= origin_max / np.max(hm[i, j])
  hm = np.log(np.maximum(hm, 1e-10))
  for i in range(n):
    for j in range(k):
      m, coord = hm[i][j], preds[i][j]
      px, py = int(coord[0]), int(coord[1])
      if 1 < px < w - 2 and 1 < py < h - 2:
        dx = 0.5 * (m[py][px + 1] - m[py][px - 1])
        dy = 0.5 * (m[py + 1][px] - m[py - 1][px])
        dxx = 0.25 * (m[py][px + 2] - 2 * m[py][px] + m[py][px - 2])
        dxy = 0.25 * (m[py + 1][px + 1] - m[py - 1][px + 1] - m[py + 1][px - 1]
                      + m[py - 1][px - 1])
        dyy = 0.25 * (m[py + 2][px] - 2 * m[py][px] + m[py - 2][px])
        hess = np.array([[dxx, dxy], [dxy, dyy]])
        if dxx * dyy - dxy**2 != 0:
          coord += np.squeeze(np.array((-np.linalg.inv(hess) @ np.array([[dx], [dy]])).T), 0)
  return preds, maxvals


def subpixel_gaussians(centres_xy, hw, sigma=2.0):
  """(B, K, 2) heatmap-space centres → (B, H, W, K) continuous Gaussians (unbiased maps)."""
  h, w = hw
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  c = np.asarray(centres_xy, np.float64)
  d2 = (xx[None, None] - c[..., 0, None, None])**2 + (yy[None, None] - c[..., 1, None, None])**2
  return np.exp(-d2 / (2 * sigma**2)).astype(np.float32).transpose(0, 2, 3, 1)


def _random_joints(rng, k, w_in=192, h_in=256):
  xy = rng.uniform(-60, [w_in + 60, h_in + 60], (k, 2)).astype(np.float32)
  vis = (rng.random(k) < 0.8).astype(np.float32)
  return xy, vis


@pytest.mark.parametrize("sigma,input_wh,hm_wh", [(2, (192, 256), (48, 64)),
                                                  (3, (288, 384), (72, 96)),
                                                  (2.0, (256, 320), (64, 80))])
def test_encode_bit_equal_to_reference(sigma, input_wh, hm_wh):
  rng = np.random.default_rng(0)
  for _ in range(20):
    xy, vis = _random_joints(rng, 17, *input_wh)
    target, weight = heatmaps.encode(xy, vis, hm_wh, sigma, 4)
    ref_t, ref_w = mm_msra_target(xy, vis, np.array(input_wh), hm_wh, sigma)
    assert target.shape == (hm_wh[1], hm_wh[0], 17) and target.dtype == np.float32
    np.testing.assert_array_equal(weight, ref_w)
    np.testing.assert_array_equal(target, ref_t)


def test_target_peak_is_one_at_the_joint():
  target, weight = heatmaps.encode([[81.0, 122.0], [100.0, 100.0]], [1, 0], (48, 64), 2)
  assert weight.tolist() == [1, 0]
  mu_x, mu_y = int(81 / 4 + 0.5), int(122 / 4 + 0.5)     # 20, 31
  assert target[mu_y, mu_x, 0] == 1.0 and target[..., 0].max() == 1.0
  assert np.count_nonzero(target[..., 0]) == 13 * 13
  assert np.all(target[..., 1] == 0)
  np.testing.assert_allclose(target[mu_y, mu_x + 1, 0], np.exp(-1 / 8), rtol=1e-6)


def test_encode_edge_cases():
  sig, hm_wh = 2, (48, 64)
  # x = −31: x/4 + 0.5 = −7.25 → μ = −7, br = μ + 3σ + 1 = 0 ≥ 0 → weight 1, all-zero map.
  t, w = heatmaps.encode([[-31.0, 100.0]], [1], hm_wh, sig)
  assert w[0] == 1 and not t.any()
  t, w = heatmaps.encode([[-35.0, 100.0]], [1], hm_wh, sig)         # μ = −8 → br = −1
  assert w[0] == 0 and not t.any()
  t, w = heatmaps.encode([[100.0, -31.0]], [1], hm_wh, sig)         # same on the y axis
  assert w[0] == 1 and not t.any()
  # x/4 + 0.5 ∈ (−1, 0) truncates to μ = 0, not −1: peak in column 0.
  t, w = heatmaps.encode([[-3.0, 100.0]], [1], hm_wh, sig)
  assert w[0] == 1 and t[25, 0, 0] == 1.0
  t, _ = heatmaps.encode([[-5.9, 100.0]], [1], hm_wh, sig)          # −0.975 → 0 as well
  assert t[25, 0, 0] == 1.0
  t, _ = heatmaps.encode([[-6.1, 100.0]], [1], hm_wh, sig)          # −1.025 → −1
  assert t[25, 0, 0] < 1.0 and t[25, 0, 0] == pytest.approx(np.exp(-1 / 8), rel=1e-6)
  # Right edge: μ = W + 3σ − 1 = 53 keeps weight 1 with one column left; μ = 54 drops it.
  t, w = heatmaps.encode([[4 * 53, 40.0], [4 * 54, 40.0], [40.0, 4 * 70]], [1, 1, 1], hm_wh, sig)
  assert w.tolist() == [1, 0, 0] and not t[..., 1:].any()
  assert np.flatnonzero(t[..., 0].any(axis=0)).tolist() == [47]
  assert t[10, 47, 0] == pytest.approx(np.exp(-36 / 8), rel=1e-6)
  # Partly clipped window: the visible part equals the Gaussian tail.
  t, w = heatmaps.encode([[0.0, 0.0]], [1], hm_wh, sig)
  assert w[0] == 1 and t[0, 0, 0] == 1 and np.count_nonzero(t) == 7 * 7
  # Non-finite coordinates of an invisible joint do not break the others.
  t, w = heatmaps.encode([[np.nan, np.inf], [40.0, 40.0]], [0, 1], hm_wh, sig)
  assert w.tolist() == [0, 1] and t[10, 10, 1] == 1
  with pytest.raises(ValueError, match="sigma"):
    heatmaps.encode([[1.0, 1.0]], [1], hm_wh, 2.5)
  with pytest.raises(ValueError, match="joints"):
    heatmaps.encode([[1.0, 1.0]], [1, 1], hm_wh, 2)
  np.testing.assert_array_equal(
      heatmaps.target_weight([[-35.0, 1.0], [-31.0, 1.0]], [1, 1], hm_wh, 2), [0, 1])


def test_encode_jnp_equals_numpy():
  rng = np.random.default_rng(1)
  xy = np.stack([_random_joints(rng, 17)[0] for _ in range(6)])
  vis = (rng.random((6, 17)) < 0.8).astype(np.float32)
  xy[0, :5] = [[-3, 10], [-31, 10], [-35, 10], [212, 10], [216, 10]]
  # edge cases above
  xy[1, :3] = [[1.99999988, 2 - 2**-22], [2 + 2**-22, 5.9999995], [-2.0000002, -1.9999999]]
  joints = np.concatenate([xy / np.float32(4), vis[..., None]], -1)
  fn = jax.jit(lambda j: heatmaps.encode_jnp(j, (48, 64), 2.0))
  t_j, w_j = fn(jnp.asarray(joints))
  for b in range(6):
    t, w = heatmaps.encode(xy[b], vis[b], (48, 64), 2.0)
    np.testing.assert_array_equal(np.asarray(w_j[b]), w)
    np.testing.assert_array_equal(np.asarray(t_j[b]), t)


def test_device_centres_equal_float64_rule_at_every_boundary():
  """μ = int(x/4 + 0.5) from float32 heatmap-space x, under jit (XLA may refold arithmetic)."""
  b = (np.arange(-300, 300) - 0.5).astype(np.float32) * 4        # x/4 + 0.5 integer
  x = np.concatenate([b, np.nextafter(b, np.float32(np.inf)), np.nextafter(b, np.float32(-np.inf)),
                      np.random.default_rng(8).uniform(-50, 250, 20000).astype(np.float32)])
  got = jax.jit(heatmaps._round_half_up_toward_zero)(jnp.asarray(x / np.float32(4)))
  np.testing.assert_array_equal(np.asarray(got), np.trunc(x.astype(np.float64) / 4 + 0.5))


def test_decode_default_matches_reference_and_jnp():
  rng = np.random.default_rng(2)
  hm = rng.normal(0, 0.1, (3, 64, 48, 17)).astype(np.float32)
  hm[0, :, :, 0] = -1.0                                   # maxval ≤ 0 → (−1, −1)
  hm[0, :, :, 1] = 0.5                                    # ties → first maximum (0, 0)
  hm[0, 30, 1, 2] = 5.0                                   # x = 1: no offset
  hm[0, 30, 46, 3] = 5.0                                  # x = W − 2: offset allowed
  hm[0, 62, 20, 4] = 5.0                                  # y = H − 2
  hm[0, 30, 20, 5] = 5.0                                  # equal neighbours: sign 0
  hm[0, 30, 19, 5] = hm[0, 30, 21, 5] = 1.0
  jc, jm = jax.jit(heatmaps.decode_default_jnp)(jnp.asarray(hm))
  coords, maxvals = np.asarray(jc), np.asarray(jm)
  ref_c, ref_m = mm_decode_default_nhwc(hm)
  np.testing.assert_array_equal(coords, ref_c)
  np.testing.assert_array_equal(maxvals, ref_m)
  assert coords[0, 0].tolist() == [-1, -1] and coords[0, 1].tolist() == [0, 0]
  assert coords[0, 2, 0] == 1.0 and coords[0, 3, 0] != 46.0 and coords[0, 5, 0] == 20.0


def test_decode_inverts_encode():
  rng = np.random.default_rng(3)
  # Integer heatmap positions decode exactly; others to the integer centre μ (|err| ≤ 0.5 px).
  xy = np.float32([[8, 8], [100, 60], [4 * 45, 4 * 61], [37.3, 201.9], [150.6, 13.0]])
  target, _ = heatmaps.encode(xy, np.ones(5), (48, 64), 2)
  coords, maxvals = map(np.asarray, heatmaps.decode_default_jnp(jnp.asarray(target[None])))
  np.testing.assert_array_equal(coords[0, :3], xy[:3] / 4)
  np.testing.assert_array_equal(coords[0], np.trunc(xy / 4 + 0.5))
  assert np.all(maxvals == 1)
  # Sub-pixel Gaussians: the quarter offset leaves at most 0.25 px.
  centres = rng.uniform(3, [44, 60], (4, 17, 2))
  coords = np.asarray(heatmaps.decode_default_jnp(subpixel_gaussians(centres, (64, 48)))[0])
  assert np.abs(coords - centres).max() <= 0.25 + 1e-6


def test_decode_unbiased_matches_reference_and_is_accurate():
  rng = np.random.default_rng(4)
  centres = rng.uniform(4, [43, 59], (2, 5, 2))
  hm = subpixel_gaussians(centres, (64, 48)) * np.float32(0.8)
  hm += rng.normal(0, 1e-3, hm.shape).astype(np.float32)
  hm[1, :, :, 4] = 0                                     # maxval 0: untouched (−1, −1)
  coords, maxvals = heatmaps.decode_unbiased(hm, 11)
  with np.errstate(invalid="ignore"):
      ref_c, ref_m = mm_decode_dark(np.ascontiguousarray(hm.transpose(0, 3, 1, 2)), 11)
  np.testing.assert_allclose(coords, ref_c, atol=1e-4)
  np.testing.assert_array_equal(maxvals, ref_m)
  assert coords[1, 4].tolist() == [-1, -1]
  err = np.concatenate([np.abs(coords[0] - centres[0]), np.abs(coords[1, :4] - centres[1, :4])])
  assert err.max() < 0.05                                # DARK is sub-pixel accurate
  with pytest.raises(ValueError, match="odd"):
    heatmaps.decode_unbiased(hm, 10)


def test_unbiased_jnp_matches_numpy():
  rng = np.random.default_rng(7)
  centres = rng.uniform(1, [47, 63], (2, 6, 2))
  hm = subpixel_gaussians(centres, (64, 48), sigma=3.0) * np.float32(0.7)
  hm += rng.normal(0, 2e-3, hm.shape).astype(np.float32)
  hm[0, :, :, 5] = 0
  for kernel in (11, 17):
    blur = np.asarray(jax.jit(lambda h, k=kernel: blur_heatmaps_jnp(h, k))(hm))
    ref = heatmaps.blur_heatmaps(hm, kernel)
    np.testing.assert_allclose(blur[:, :, :, :5], ref[:, :, :, :5], rtol=1e-5, atol=1e-6)
    jc, jm = jax.jit(lambda h, k=kernel: decode_unbiased_jnp(h, k))(hm)
    nc, nm = heatmaps.decode_unbiased(hm, kernel)
    np.testing.assert_allclose(np.asarray(jc), nc, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(jm), nm)


def test_flip_back_swaps_mirrors_and_shifts():
  rng = np.random.default_rng(5)
  flip_index = np.array([0, 2, 1, 4, 3])
  hm = rng.random((2, 8, 6, 5)).astype(np.float32)
  def flip_back(h, shift):
    return np.asarray(heatmaps.flip_back_jnp(jnp.asarray(h), flip_index, shift=shift))
  out = flip_back(hm, shift=False)
  np.testing.assert_array_equal(out[:, :, :, 1], hm[:, :, ::-1, 2])
  np.testing.assert_array_equal(flip_back(out, shift=False), hm)
  shifted = flip_back(hm, shift=True)
  np.testing.assert_array_equal(shifted[:, :, 1:], out[:, :, :-1])
  np.testing.assert_array_equal(shifted[:, :, 0], out[:, :, 0])       # column 0 keeps its value
  np.testing.assert_array_equal(
      np.asarray(jax.jit(lambda h: heatmaps.flip_back_jnp(h, flip_index))(hm)), shifted)


def test_flip_test_alignment_quarter_pixel():
  """An ideal network's flipped maps sit 0.75 px left after flip_back; the shift leaves +0.25."""
  w_in, w_hm = 192, 48
  u = np.array([60.4, 101.0, 130.7])                   # crop x of joints 1, 2, 3
  y = np.array([100.0, 120.0, 140.0])
  flip_index = np.array([0, 2, 1, 3])
  plain = np.stack([np.r_[80.0, u] / 4, np.r_[20.0, y] / 4], -1)[None]       # K = 4
  # The flipped crop img[..., ::-1] holds joint k at W_in − 1 − u, in channel flip_index[k].
  fl = np.stack([(w_in - 1 - np.r_[80.0, u]) / 4, np.r_[20.0, y] / 4], -1)[flip_index][None]
  hm_flipped = subpixel_gaussians(fl, (64, w_hm))

  def centroid_x(h):
    xs = np.arange(w_hm)
    return (h * xs[None, None, :, None]).sum((1, 2)) / h.sum((1, 2))
  back = np.asarray(heatmaps.flip_back_jnp(hm_flipped, flip_index, shift=False))
  np.testing.assert_allclose(centroid_x(back)[0], plain[0, :, 0] - 0.75, atol=1e-3)
  back = np.asarray(heatmaps.flip_back_jnp(hm_flipped, flip_index, shift=True))
  np.testing.assert_allclose(centroid_x(back)[0], plain[0, :, 0] + 0.25, atol=1e-3)


def test_transform_preds_jnp_equals_numpy():
  rng = np.random.default_rng(6)
  coords = rng.uniform(-1, 48, (4, 17, 2)).astype(np.float32)
  center = rng.uniform(0, 600, (4, 2)).astype(np.float32)
  scale = rng.uniform(0.2, 3, (4, 2)).astype(np.float32)
  ref = geometry.transform_preds(coords, center, scale, (48, 64))
  got = jax.jit(lambda *a: heatmaps.transform_preds_jnp(*a, (48, 64)))(coords, center, scale)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=1e-4)
