"""A numpy model of OpenCV 4.x's fixed-point bilinear `warpAffine` on uint8 images (test-only).

It replays `modules/imgproc/src/imgwarp.cpp` of OpenCV 4.x, the arithmetic the reference crops
were made with (MMPose, published checkpoints):

* `warpAffine` inverts M in float64 (the crop → image map), then `WarpAffineInvoker` computes
  each destination pixel's source position in fixed point with AB_BITS = 10:
  `X0(y) = round((M1·y + M2)·1024) + 16`, `adelta(x) = round(M0·x·1024)` (round half to even,
  `saturate_cast<int>`), `X = (X0 + adelta) >> 5`: integer part `X >> 5`, sub-pixel position
  `X & 31` (INTER_BITS = 5, 32 positions per pixel);
* `remap` (INTER_LINEAR, CV_8U) weighs the 2x2 neighbours with `BilinearTab_i`, the products of
  the 1-D weights (1 − t, t), t = i/32, scaled by INTER_REMAP_COEF_SCALE = 2^15 and rounded to
  short. The entry (0, 0) saturates to 32767; `initInterTab2D` gives the missing unit to the
  (1, 1) weight, so a pixel on the grid reads 32767·p00 + p11. The sum is rounded:
  `(Σ w·p + 2^14) >> 15`;
* BORDER_CONSTANT 0: neighbours outside the image count as 0.

OpenCV 5 interpolates in floating point instead (opencv/opencv#27280), so this model and
`cv2.warpAffine` differ there on a few percent of the values.
"""
from __future__ import annotations

import numpy as np

INTER_BITS = 5
TAB_SIZE = 1 << INTER_BITS
AB_BITS = 10
COEF_BITS = 15
COEF_SCALE = 1 << COEF_BITS


def bilinear_table() -> np.ndarray:
  """`BilinearTab_i`: (1024, 4) int64 weights (w00, w01, w10, w11) per sub-pixel (ty, tx)."""
  t = np.arange(TAB_SIZE, dtype=np.float32) * np.float32(1.0 / TAB_SIZE)
  one_d = np.stack([np.float32(1) - t, t], -1)              # float32, as initInterTab1D
  # A static table, zero before its first use; the sum fix below may read (not keep) a few
  # entries of the next row, which are still zero when it runs.
  flat = np.zeros((TAB_SIZE * TAB_SIZE + 1) * 4, np.int64)
  for e in range(TAB_SIZE * TAB_SIZE):
    i, j = divmod(e, TAB_SIZE)
    row = flat[e * 4:]
    v = (one_d[i][:, None] * one_d[j][None, :]).reshape(4) * np.float32(COEF_SCALE)
    row[:4] = np.clip(np.rint(v), -32768, 32767)            # saturate_cast<short>(float)
    diff = int(row[:4].sum()) - COEF_SCALE
    if diff:
      lo = hi = 3
      for k in (3, 4, 5, 6):                                # k1, k2 in {1, 2}, ksize 2
        if row[k] < row[lo]:
          lo = k
        elif row[k] > row[hi]:
          hi = k
      row[hi if diff < 0 else lo] -= diff
  return flat[:TAB_SIZE * TAB_SIZE * 4].reshape(-1, 4).copy()


TABLE = bilinear_table()


def warp_affine(img: np.ndarray, matrix, size_wh) -> np.ndarray:
  """`cv2.warpAffine(img, matrix, size_wh, INTER_LINEAR, BORDER_CONSTANT, 0)` of OpenCV 4.x.

  Args:
    img: (H, W) or (H, W, C) uint8. matrix: (2, 3) image → output map. size_wh: (W_out, H_out).
  Returns:
    (H_out, W_out[, C]) uint8.
  """
  out_w, out_h = int(size_wh[0]), int(size_wh[1])
  m = [float(v) for v in np.asarray(matrix, np.float64).reshape(6)]
  d = m[0] * m[4] - m[1] * m[3]
  d = 1.0 / d if d != 0 else 0.0
  a11, a22 = m[4] * d, m[0] * d
  m[0], m[1], m[3], m[4] = a11, m[1] * -d, m[3] * -d, a22
  m[2], m[5] = -m[0] * m[2] - m[1] * m[5], -m[3] * m[2] - m[4] * m[5]
  ab_scale = 1 << AB_BITS
  xs, ys = np.arange(out_w, dtype=np.float64), np.arange(out_h, dtype=np.float64)
  adelta = np.rint(m[0] * xs * ab_scale).astype(np.int64)
  bdelta = np.rint(m[3] * xs * ab_scale).astype(np.int64)
  round_delta = ab_scale // TAB_SIZE // 2
  x0 = np.rint((m[1] * ys + m[2]) * ab_scale).astype(np.int64) + round_delta
  y0 = np.rint((m[4] * ys + m[5]) * ab_scale).astype(np.int64) + round_delta
  fx = (x0[:, None] + adelta[None, :]) >> (AB_BITS - INTER_BITS)
  fy = (y0[:, None] + bdelta[None, :]) >> (AB_BITS - INTER_BITS)
  ix = np.clip(fx >> INTER_BITS, -32768, 32767)             # saturate_cast<short>
  iy = np.clip(fy >> INTER_BITS, -32768, 32767)
  weights = TABLE[(fy & (TAB_SIZE - 1)) * TAB_SIZE + (fx & (TAB_SIZE - 1))]
  h, w = img.shape[:2]
  src = img.reshape(h, w, -1).astype(np.int64)
  acc = np.zeros((out_h, out_w, src.shape[2]), np.int64)
  for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
    yy, xx = iy + dy, ix + dx
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    tap = src[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)] * inside[..., None]
    acc += tap * weights[..., k:k + 1]
  out = np.clip((acc + (1 << (COEF_BITS - 1))) >> COEF_BITS, 0, 255).astype(np.uint8)
  return out.reshape((out_h, out_w) + img.shape[2:])
