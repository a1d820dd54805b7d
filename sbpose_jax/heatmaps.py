"""Gaussian heatmap targets and their decoding (docs/reference.md §4.1, §5.1, §5.2).

Encoding is MMPose 0.x `TopDownGenerateTarget` ('MSRA', unbiased_encoding=False), bit for bit:
integer centres `μ = int(x/stride + 0.5)` (truncating toward zero), a (6σ+1)² float32 Gaussian
with peak 1 pasted and clipped, and the target-weight rule that keeps weight 1 for a visible
joint whose window is only partly (or not at all) inside the map.

Decoding is MMPose's `keypoints_from_heatmaps` before the image transform: 'default' (first
argmax + a quarter-pixel step towards the higher neighbour) and 'unbiased' (DARK: Gaussian blur,
log, one Newton step). Flip test: `flip_back_jnp` (+ the one-pixel shift). Heatmaps are NHWC:
(B, H, W, K). 'default' decoding runs on the device (`decode_default_jnp`), 'unbiased' on the
host (`decode_unbiased`, with cv2's blur).
"""
from __future__ import annotations

import functools
from typing import Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from sbpose_jax import geometry


@functools.lru_cache(maxsize=8)
def gaussian_patch(sigma: float) -> np.ndarray:
  """The (6σ+1)² float32 Gaussian of the reference, peak exactly 1 (read-only)."""
  tmp = 3 * sigma
  if sigma <= 0 or not float(tmp).is_integer():
    raise ValueError(f"sigma must be positive with 3*sigma an integer, got {sigma}")
  size = 2 * tmp + 1
  x = np.arange(0, size, 1, np.float32)
  y = x[:, None]
  x0 = y0 = size // 2
  # The reference's float32 expression, operation by operation.
  g = np.exp(-((x - np.float32(x0))**2 + (y - np.float32(y0))**2) / np.float32(2 * sigma**2))
  g.setflags(write=False)
  return g


def _centres_and_weights(joints_xy, joints_vis, heatmap_wh, sigma, stride):
  """Integer centres μ (K, 2) and target weights (K,) of `encode` (the §4.1 weight rule)."""
  xy = np.asarray(joints_xy, np.float32)
  vis = np.asarray(joints_vis, np.float32).reshape(-1)
  if xy.ndim != 2 or xy.shape[1] != 2 or vis.shape[0] != xy.shape[0]:
    raise ValueError(f"joints must be (K, 2) with vis (K,), got {xy.shape} and {vis.shape}")
  tmp = int(3 * sigma)
  # Python int(x / stride + 0.5) with float64 division: truncation toward zero.
  with np.errstate(invalid="ignore"):
    hm = xy.astype(np.float64) / np.broadcast_to(np.asarray(stride, np.float64), (2,))
    finite = np.all(np.isfinite(hm), axis=1)
    mu = np.trunc(np.where(finite[:, None], hm, 0.0) + 0.5).astype(np.int64)
  ul, br = mu - tmp, mu + tmp + 1
  outside = ((ul[:, 0] >= heatmap_wh[0]) | (ul[:, 1] >= heatmap_wh[1])
             | (br[:, 0] < 0) | (br[:, 1] < 0))
  return mu, np.where(outside | ~finite, np.float32(0), vis).astype(np.float32)


def target_weight(joints_xy, joints_vis, heatmap_wh: Sequence[int], sigma: float,
                  stride=4.0) -> np.ndarray:
  """The target weights of `encode` without building the maps: (K,) float32."""
  gaussian_patch(float(sigma))
  return _centres_and_weights(joints_xy, joints_vis, heatmap_wh, sigma, stride)[1]


def encode(joints_xy, joints_vis, heatmap_wh: Sequence[int], sigma: float,
           stride=4.0) -> tuple[np.ndarray, np.ndarray]:
  """MSRA Gaussian targets for one instance (MM `_msra_generate_target`, §4.1).

  μ = int(x/stride + 0.5) per axis (toward zero); window [μ−3σ, μ+3σ]; the weight starts as
  vis and becomes 0 iff the window lies entirely beyond an edge (ul ≥ size or br < 0); if the
  weight is > 0.5 the (6σ+1)² Gaussian is pasted, clipped to the map.

  Args:
    joints_xy: (K, 2) joints in crop (input) pixels.
    joints_vis: (K,) visibility 0/1 (the starting target weight).
    heatmap_wh: (W_hm, H_hm).
    sigma: Gaussian σ in heatmap pixels (3σ must be an integer: 2 and 3 in every config).
    stride: input size / heatmap size, scalar or per axis (4 in every config).
  Returns:
    target (H_hm, W_hm, K) float32, target_weight (K,) float32.
  """
  w_hm, h_hm = int(heatmap_wh[0]), int(heatmap_wh[1])
  g = gaussian_patch(float(sigma))
  mu, weight = _centres_and_weights(joints_xy, joints_vis, (w_hm, h_hm), sigma, stride)
  target = np.zeros((h_hm, w_hm, len(weight)), np.float32)
  # One clipped slice paste per joint, as the reference (2-3x faster than a vectorised gather).
  for k in np.flatnonzero(weight > 0.5):
    x0, y0 = (int(v) for v in mu[k] - int(3 * sigma))
    x1, y1 = x0 + g.shape[1], y0 + g.shape[0]
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(x1, w_hm), min(y1, h_hm)
    target[cy0:cy1, cx0:cx1, k] = g[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
  return target, weight


def _round_half_up_toward_zero(x: jax.Array) -> jax.Array:
  """int(x + 0.5) (truncating) as the reference's float64 arithmetic gives it, from float32 x.

  In float32, x + 0.5 can round up to an integer (x = 0.5 − 2⁻²⁵ gives 1.0). For x ≥ −0.5 the
  result is floor(x) + [x − floor(x) ≥ 0.5], both exact; below, x + 0.5 is exact (it shrinks).
  (Checking `(x + 0.5) − 0.5 > x` instead fails under jit: XLA folds it to `x > x`.)
  """
  fl = jnp.floor(x)
  upper = fl + (x - fl >= 0.5).astype(x.dtype)
  return jnp.where(x >= -0.5, upper, jnp.trunc(x + 0.5)).astype(jnp.int32)


def encode_jnp(joints: jax.Array, heatmap_wh: Sequence[int],
               sigma: float) -> tuple[jax.Array, jax.Array]:
  """`encode` on the device, from heatmap-space joints; equal to the numpy version bit for bit.

  Args:
    joints: (B, K, 3) heatmap-space x, y (= crop pixels / stride) and weight (0/1).
    heatmap_wh: (W_hm, H_hm), static. sigma: static.
  Returns:
    target (B, H_hm, W_hm, K) float32, target_weight (B, K) float32.
  """
  w_hm, h_hm = int(heatmap_wh[0]), int(heatmap_wh[1])
  g = jnp.asarray(gaussian_patch(float(sigma)))
  tmp, size = int(3 * sigma), g.shape[0]
  xy = joints[..., :2].astype(jnp.float32)
  finite = jnp.all(jnp.isfinite(xy), axis=-1)
  xy = jnp.clip(jnp.where(finite[..., None], xy, 0.0), -1e6, 1e6)   # keeps int32 sane
  mu = _round_half_up_toward_zero(xy)
  ul, br = mu - tmp, mu + tmp + 1
  outside = ((ul[..., 0] >= w_hm) | (ul[..., 1] >= h_hm) | (br[..., 0] < 0) | (br[..., 1] < 0))
  weight = jnp.where(outside | ~finite, 0.0, joints[..., 2].astype(jnp.float32))
  dx = jnp.arange(w_hm)[None, None, :] - ul[..., :1]      # (B, K, W)
  dy = jnp.arange(h_hm)[None, None, :] - ul[..., 1:]      # (B, K, H)
  ok_x = (dx >= 0) & (dx < size)
  ok_y = (dy >= 0) & (dy < size) & (weight > 0.5)[..., None]
  iy = jnp.clip(dy, 0, size - 1).transpose(0, 2, 1)[:, :, None, :]     # (B, H, 1, K)
  ix = jnp.clip(dx, 0, size - 1).transpose(0, 2, 1)[:, None, :, :]     # (B, 1, W, K)
  ok = ok_y.transpose(0, 2, 1)[:, :, None, :] & ok_x.transpose(0, 2, 1)[:, None, :, :]
  return jnp.where(ok, g[iy, ix], 0.0), weight


def _max_preds(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """First argmax per map → (x, y) float32 (−1 where maxval ≤ 0), maxvals, (B, K, H, W) maps."""
  hm = np.moveaxis(np.asarray(heatmaps, np.float32), -1, 1)          # (B, K, H, W)
  b, k, h, w = hm.shape
  flat = hm.reshape(b, k, h * w)
  idx = np.argmax(flat, axis=2)
  maxvals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
  preds = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
  preds = np.where((maxvals > 0.0)[..., None], preds, np.float32(-1))
  return preds, maxvals, hm


def _check_nhwc(heatmaps) -> None:
  if np.ndim(heatmaps) != 4:
    raise ValueError(f"heatmaps must be (B, H, W, K), got shape {np.shape(heatmaps)}")


def _pick_jnp(flat: jax.Array, idx: jax.Array) -> jax.Array:
  """flat[b, k, idx[b, k]] as a one-hot sum (exact: one non-zero term).

  Gathers (`take_along_axis`) do not convert to ONNX with a symbolic batch (jax2onnx 0.17);
  this form does, and costs B·K·H·W compares, nothing beside the network.
  """
  hot = jnp.arange(flat.shape[-1], dtype=jnp.int32) == idx[..., None].astype(jnp.int32)
  return jnp.sum(jnp.where(hot, flat, 0.0), axis=-1)


def _argmax_jnp(heatmaps: jax.Array) -> tuple[jax.Array, jax.Array]:
  """First argmax → ((B, K, 2) float32 x, y, −1 where maxval ≤ 0; (B, K) maxvals)."""
  b, h, w, k = heatmaps.shape
  flat = jnp.moveaxis(heatmaps.astype(jnp.float32), -1, 1).reshape(b, k, h * w)
  idx = jnp.argmax(flat, axis=2)                  # first maximum, as numpy
  maxvals = _pick_jnp(flat, idx)
  # Float floor division (exact: idx < 2**24 and 1/w far above float32 rounding): integer
  # `%` and `//` do not convert to ONNX with a symbolic batch (docs/ecosystem.md §7).
  fidx = idx.astype(jnp.float32)
  y = jnp.floor(fidx / w)
  xy = jnp.stack([fidx - y * w, y], axis=-1)
  return jnp.where((maxvals > 0.0)[..., None], xy, -1.0), maxvals


def decode_default_jnp(heatmaps: jax.Array) -> tuple[jax.Array, jax.Array]:
  """'default' decoding inside jit: first argmax + 0.25·sign of the neighbour difference.

  (§5.2) The step applies iff `1 < x < W−1 and 1 < y < H−1` (integer argmax), per axis with
  sign(0) = 0; maps whose maximum is ≤ 0 decode to (−1, −1), as MMPose.
  (B, H, W, K) → ((B, K, 2) heatmap x, y, (B, K) maxvals).
  """
  b, h, w, k = heatmaps.shape
  flat = jnp.moveaxis(heatmaps.astype(jnp.float32), -1, 1).reshape(b, k, h * w)
  coords, maxvals = _argmax_jnp(heatmaps)
  px, py = coords[..., 0].astype(jnp.int32), coords[..., 1].astype(jnp.int32)
  inner = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
  cx, cy = jnp.where(inner, px, 2), jnp.where(inner, py, 2)

  def at(yy, xx):
    return _pick_jnp(flat, yy * w + xx)
  diff = jnp.stack([at(cy, cx + 1) - at(cy, cx - 1), at(cy + 1, cx) - at(cy - 1, cx)], axis=-1)
  return coords + jnp.where(inner[..., None], jnp.sign(diff) * 0.25, 0.0), maxvals


def blur_heatmaps(heatmaps, kernel: int = 11) -> np.ndarray:
  """DARK's modulation (MM `_gaussian_blur`): blur each map, rescale to its original maximum.

  Each map is zero-padded by (k−1)/2, blurred with `cv2.GaussianBlur((k, k), σ=0)` (σ = 2.0 for
  k=11, 2.9 for k=17) and cropped back, so the blur sees zeros beyond the map's edge.

  Args:
    heatmaps: (B, H, W, K). kernel: odd blur size (config.test.blur_kernel).
  Returns:
    (B, H, W, K) float32.
  """
  if kernel % 2 != 1:
    raise ValueError(f"blur kernel must be odd, got {kernel}")
  _check_nhwc(heatmaps)
  border = (kernel - 1) // 2
  hm = np.moveaxis(np.array(heatmaps, np.float32), -1, 1)              # (B, K, H, W) copy
  b, k, h, w = hm.shape
  padded = np.zeros((h + 2 * border, w + 2 * border), np.float32)
  with np.errstate(invalid="ignore", divide="ignore"):
    for i in range(b):
      for j in range(k):
        origin_max = np.max(hm[i, j])
        padded[border:-border, border:-border] = hm[i, j]
        hm[i, j] = cv2.GaussianBlur(padded, (kernel, kernel), 0)[border:-border, border:-border]
        hm[i, j] *= origin_max / np.max(hm[i, j])
  return np.moveaxis(hm, 1, -1)


def decode_unbiased(heatmaps, kernel: int = 11) -> tuple[np.ndarray, np.ndarray]:
  """'unbiased' decoding (DARK, MM `keypoints_from_heatmaps(post_process='unbiased')`, §5.2).

  Argmax as 'default' decoding, then on `log(max(blur(h), 1e-10))`, where `1 < x < W−2` and
  `1 < y < H−2`: one Newton step `−H⁻¹∇` with central differences (Hessian with step 2), if
  det H ≠ 0. Derivatives are taken in float64, as numpy 1 promoted the reference's float32
  scalars; the offset is added to the float32 coordinates.

  Args:
    heatmaps: (B, H, W, K). kernel: odd blur size (11 for σ=2, 17 for σ=3).
  Returns:
    coords (B, K, 2) float32 heatmap x, y; maxvals (B, K) float32 (of the unblurred maps).
  """
  _check_nhwc(heatmaps)
  preds, maxvals, _ = _max_preds(heatmaps)
  logs = np.moveaxis(np.log(np.maximum(blur_heatmaps(heatmaps, kernel), np.float32(1e-10))),
                     -1, 1)                                           # (B, K, H, W) float32
  _, _, h, w = logs.shape
  px, py = preds[..., 0].astype(np.int64), preds[..., 1].astype(np.int64)
  inner = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
  cx, cy = np.where(inner, px, 2), np.where(inner, py, 2)
  flat = logs.reshape(logs.shape[:2] + (-1,))

  def at(dy, dx):
    return np.take_along_axis(flat, ((cy + dy) * w + cx + dx)[..., None], axis=2)[..., 0]
  c = at(0, 0).astype(np.float64)
  dx = 0.5 * (at(0, 1) - at(0, -1)).astype(np.float64)
  dy = 0.5 * (at(1, 0) - at(-1, 0)).astype(np.float64)
  dxx = 0.25 * (at(0, 2) - 2 * c + at(0, -2))
  dyy = 0.25 * (at(2, 0) - 2 * c + at(-2, 0))
  dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1)).astype(np.float64)
  det = dxx * dyy - dxy**2
  ok = inner & (det != 0)
  hess = np.stack([np.stack([dxx, dxy], -1), np.stack([dxy, dyy], -1)], -2)   # (B, K, 2, 2)
  hess = np.where(ok[..., None, None], hess, np.eye(2))
  inv = np.linalg.inv(hess)
  off = -(inv[..., 0] * dx[..., None] + inv[..., 1] * dy[..., None])        # −H⁻¹∇, (B, K, 2)
  # `coord += offset` on the reference's float32 coordinates adds in float64, then rounds.
  preds = np.where(ok[..., None], (preds.astype(np.float64) + off).astype(np.float32), preds)
  return preds, maxvals


def blur_heatmaps_jnp(heatmaps: jax.Array, kernel: int = 11) -> jax.Array:
  """`blur_heatmaps` in jnp: zero-padded separable Gaussian (OpenCV's float32 taps), rescaled.

  Equal to the cv2 version up to float32 summation order (~1e-7 relative).
  """
  import cv2  # why: OpenCV only for this function; grain workers import the module
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


def decode_unbiased_jnp(heatmaps: jax.Array, kernel: int = 11) -> tuple[jax.Array, jax.Array]:
  """`decode_unbiased` in jnp (float32 derivatives), for on-device DARK decoding.

  Matches the numpy/cv2 version to ~1e-4 heatmap px (float32 instead of float64 steps).
  """
  b, h, w, k = heatmaps.shape
  coords, maxvals = _argmax_jnp(heatmaps)
  logs = jnp.log(jnp.maximum(blur_heatmaps_jnp(heatmaps, kernel), 1e-10))
  flat = jnp.moveaxis(logs, -1, 1).reshape(b, k, h * w)
  px, py = coords[..., 0].astype(jnp.int32), coords[..., 1].astype(jnp.int32)
  inner = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
  cx, cy = jnp.where(inner, px, 2), jnp.where(inner, py, 2)

  def at(dy, dx):
    return _pick_jnp(flat, (cy + dy) * w + cx + dx)
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


def flip_back_jnp(heatmaps: jax.Array, flip_index, shift: bool = True) -> jax.Array:
  """Heatmaps of a mirrored crop → the original crop's (MM `flip_back` + `shift_heatmap`).

  (§5.1) Channel k takes channel flip_index[k] (the flip pairs swapped; static), the W axis
  is mirrored, and with `shift` every map moves one pixel right (column 0 keeps its value):
  with the W/2 crop centre the mirrored map sits 0.75 px left of the plain one; the shift
  leaves +0.25 px. (B, H, W, K) → (B, H, W, K).
  """
  out = heatmaps[:, :, ::-1, :][..., np.asarray(flip_index)]
  if shift:
    out = jnp.concatenate([out[:, :, :1], out[:, :, :-1]], axis=2)
  return out


def transform_preds_jnp(coords: jax.Array, center: jax.Array, scale: jax.Array,
                        heatmap_wh: Sequence[int]) -> jax.Array:
  """`geometry.transform_preds` in jnp: (B, K, 2) heatmap → image, float32 (§2.4)."""
  size = scale.astype(jnp.float32) * geometry.PIXEL_STD
  unit = size / jnp.asarray(heatmap_wh, jnp.float32)
  return (coords.astype(jnp.float32) * unit[..., None, :] + center.astype(jnp.float32)[..., None, :]
          - size[..., None, :] * 0.5)
