"""Independent references shared by several test files (written from MMPose 0.x, loops and all).

  mm_decode_default        `_get_max_preds` + quarter offset (top_down_eval.py)
  mm_flip_back             `flip_back` without the shift (post_transforms.py)
  mm_get_affine_transform  `get_affine_transform` with shift 0 (post_transforms.py)
  mm_oks_nms               `oks_nms` (core/post_processing/nms.py), one pair at a time
  heatmap_mse_mean         the scalar loss value of JointsMSELoss
  blur_heatmaps_jnp, decode_unbiased_jnp   DARK decoding in jnp (an on-device candidate that
                           the package does not use; kept tested against the numpy version)
"""
from __future__ import annotations

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from sbpose_jax import heatmaps as heatmaps_lib
from sbpose_jax import losses


def mm_decode_default(hm_nkhw):
  """(N, K, H, W) -> coords (N, K, 2) float32 heatmap x, y; maxvals (N, K)."""
  n, k, h, w = hm_nkhw.shape
  flat = hm_nkhw.reshape((n, k, -1))
  idx = np.argmax(flat, 2).reshape((n, k, 1))
  maxvals = np.amax(flat, 2).reshape((n, k, 1))
  preds = np.tile(idx, (1, 1, 2)).astype(np.float32)
  preds[:, :, 0] = preds[:, :, 0] % w
  preds[:, :, 1] = preds[:, :, 1] // w
  preds = np.where(np.tile(maxvals, (1, 1, 2)) > 0.0, preds, -1)
  for i in range(n):
    for j in range(k):
      hmap = hm_nkhw[i][j]
      px, py = int(preds[i][j][0]), int(preds[i][j][1])
      if 1 < px < w - 1 and 1 < py < h - 1:
        diff = np.array([hmap[py][px + 1] - hmap[py][px - 1], hmap[py + 1][px] - hmap[py - 1][px]])
        preds[i][j] += np.sign(diff) * .25
  return preds.astype(np.float32), maxvals[..., 0]


def mm_decode_default_nhwc(heatmaps):
  """`mm_decode_default` of (B, H, W, K) maps."""
  return mm_decode_default(np.ascontiguousarray(np.asarray(heatmaps).transpose(0, 3, 1, 2)))


def mm_flip_back(hm_nkhw, flip_pairs):
  """(N, K, H, W) maps of a mirrored crop: flip pairs swapped, W mirrored (no shift)."""
  out = hm_nkhw.copy()
  for a, b in flip_pairs:
    out[:, a], out[:, b] = hm_nkhw[:, b].copy(), hm_nkhw[:, a].copy()
  return out[..., ::-1]


def flip_back_nhwc(heatmaps, flip_pairs, shift: bool = True):
  """`mm_flip_back` of (B, H, W, K) maps, then MMPose's `shift_heatmap` (one pixel right)."""
  out = mm_flip_back(np.asarray(heatmaps).transpose(0, 3, 1, 2), flip_pairs)
  if shift:
    out[..., 1:] = out[..., :-1].copy()
  return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def _rotate_point(pt, angle_rad):
  sn, cs = np.sin(angle_rad), np.cos(angle_rad)
  return [pt[0] * cs - pt[1] * sn, pt[0] * sn + pt[1] * cs]


def _third_point(a, b):
  direction = a - b
  return b + np.array([-direction[1], direction[0]], dtype=np.float32)


def mm_get_affine_transform(center, scale, rot, output_size, inv=False):
  """The (2, 3) crop matrix: centre/scale (scale x 200 px) rotated by `rot` degrees -> (W, H)."""
  scale_tmp = np.asarray(scale, np.float32) * 200.0
  src_w = scale_tmp[0]
  dst_w, dst_h = output_size
  rot_rad = np.pi * rot / 180
  src_dir = _rotate_point([0., src_w * -0.5], rot_rad)
  dst_dir = np.array([0., dst_w * -0.5])
  src = np.zeros((3, 2), dtype=np.float32)
  src[0, :] = center
  src[1, :] = center + np.asarray(src_dir)
  src[2, :] = _third_point(src[0, :], src[1, :])
  dst = np.zeros((3, 2), dtype=np.float32)
  dst[0, :] = [dst_w * 0.5, dst_h * 0.5]
  dst[1, :] = np.array([dst_w * 0.5, dst_h * 0.5]) + dst_dir
  dst[2, :] = _third_point(dst[0, :], dst[1, :])
  if inv:
    return cv2.getAffineTransform(np.float32(dst), np.float32(src))
  return cv2.getAffineTransform(np.float32(src), np.float32(dst))


def mm_oks_nms(kpts, scores, areas, thr, sigmas):
  """Indices kept by OKS-NMS, best first: kpts (N, K, >=2), scores (N,), areas (N,)."""
  order = list(np.argsort(scores)[::-1])
  keep = []
  var = (2 * sigmas) ** 2
  while order:
    i = order.pop(0)
    keep.append(i)
    rest = []
    for j in order:
      d2 = ((kpts[j, :, :2] - kpts[i, :, :2]) ** 2).sum(-1)
      e = d2 / var / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
      if np.mean(np.exp(-e)) <= thr:
        rest.append(j)
    order = rest
  return keep


def heatmap_mse_mean(pred, target, target_weight):
  """The scalar MMPose 2020 loss value: `losses.heatmap_mse` sum / count."""
  loss_sum, count = losses.heatmap_mse(pred, target, target_weight)
  return loss_sum / count


def blur_heatmaps_jnp(heatmaps: jax.Array, kernel: int = 11) -> jax.Array:
  """`heatmaps.blur_heatmaps` in jnp: zero-padded separable Gaussian (OpenCV's float32 taps),
  rescaled. Equal to the cv2 version up to float32 summation order (~1e-7 relative)."""
  if kernel % 2 != 1:
    raise ValueError(f"blur kernel must be odd, got {kernel}")
  taps = jnp.asarray(cv2.getGaussianKernel(kernel, 0, ktype=cv2.CV_32F)[:, 0])
  x = heatmaps.astype(jnp.float32)
  k, pad = x.shape[-1], (kernel - 1) // 2

  def conv(inp, rhs, padding):
    return jax.lax.conv_general_dilated(
        inp, jnp.tile(rhs[..., None, None], (1, 1, 1, k)), (1, 1), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=k,
        precision=jax.lax.Precision.HIGHEST)
  y = conv(x, taps[None, :], [(0, 0), (pad, pad)])     # rows first, as cv2.sepFilter2D
  y = conv(y, taps[:, None], [(pad, pad), (0, 0)])
  return y * (x.max(axis=(1, 2), keepdims=True) / y.max(axis=(1, 2), keepdims=True))


def decode_unbiased_jnp(heatmaps: jax.Array, kernel: int = 11):
  """`heatmaps.decode_unbiased` in jnp (float32 derivatives): ((B, K, 2), (B, K))."""
  b, h, w, k = heatmaps.shape
  flat = jnp.moveaxis(heatmaps.astype(jnp.float32), -1, 1).reshape(b, k, h * w)
  idx = jnp.argmax(flat, axis=2)
  maxvals = jnp.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
  coords = jnp.where((maxvals > 0.0)[..., None], jnp.stack([idx % w, idx // w], axis=-1),
                     -1).astype(jnp.float32)
  logs = jnp.log(jnp.maximum(blur_heatmaps_jnp(heatmaps, kernel), 1e-10))
  flat = jnp.moveaxis(logs, -1, 1).reshape(b, k, h * w)
  px, py = coords[..., 0].astype(jnp.int32), coords[..., 1].astype(jnp.int32)
  inner = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
  cx, cy = jnp.where(inner, px, 2), jnp.where(inner, py, 2)

  def at(dy, dx):
    return jnp.take_along_axis(flat, ((cy + dy) * w + cx + dx)[..., None], axis=2)[..., 0]
  c = at(0, 0)
  dx = 0.5 * (at(0, 1) - at(0, -1))
  dy = 0.5 * (at(1, 0) - at(-1, 0))
  dxx = 0.25 * (at(0, 2) - 2 * c + at(0, -2))
  dyy = 0.25 * (at(2, 0) - 2 * c + at(-2, 0))
  dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
  det = dxx * dyy - dxy**2
  ok = inner & (det != 0)
  safe = jnp.where(ok, det, 1.0)
  off = -jnp.stack([(dyy * dx - dxy * dy) / safe, (dxx * dy - dxy * dx) / safe], axis=-1)
  return coords + jnp.where(ok[..., None], off, 0.0), maxvals


__all__ = ["mm_decode_default", "mm_decode_default_nhwc", "mm_flip_back", "flip_back_nhwc",
           "mm_get_affine_transform", "mm_oks_nms", "heatmap_mse_mean", "blur_heatmaps_jnp",
           "decode_unbiased_jnp", "heatmaps_lib"]
