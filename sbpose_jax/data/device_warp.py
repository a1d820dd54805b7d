"""The crop warp on the device: `cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT 0)` in jnp.

With `data.warp_on_device` the host ships the packed crop (uint8, one fixed shape per config)
and each sample's output → crop matrix (data/packed.py `PackedAffine`, the flip already folded
into it), and the jitted step samples the network input from it. cv2 quantises the source
coordinate to 1/32 pixel (each matrix term rounded to 1/1024 px first) and rounds the weighted
sum half up; this replays that arithmetic, so the only differences come from the float32
matrix (cv2 uses float64), which moves a rare coordinate across a 1/32 px step
(tests/test_device_warp.py states the largest grey-level difference).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_INTER_BITS = 5     # cv2: source coordinates in 1/32 px
_SUBPIXELS = 1 << _INTER_BITS
_AB_BITS = 10       # cv2: matrix terms in 1/1024 px
_AB_SCALE = float(1 << _AB_BITS)
_ROUND_DELTA = 1 << (_AB_BITS - _INTER_BITS - 1)


def warp_affine(images: jax.Array, inv_matrices: jax.Array, output_wh) -> jax.Array:
  """Bilinear warp with a zero border, as cv2.warpAffine on uint8.

  Args:
    images: (B, Hs, Ws, C) uint8 (or float) source crops.
    inv_matrices: (B, 2, 3) output pixel → source pixel maps (cv2's inverse map).
    output_wh: static (W, H) of the output.
  Returns:
    (B, H, W, C) float32 holding integers 0..255 (rounded as cv2 rounds to uint8).
  """
  w, h = int(output_wh[0]), int(output_wh[1])
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  m = inv_matrices.astype(jnp.float32)

  def one(img, mat):
    # cv2's fixed point: each term rounded to 1/1024 px, + 1/64, floored to 1/32 px.
    ax = jnp.round(mat[0, 0] * xs * _AB_SCALE).astype(jnp.int32)
    ay = jnp.round(mat[1, 0] * xs * _AB_SCALE).astype(jnp.int32)
    bx = jnp.round((mat[0, 1] * ys + mat[0, 2]) * _AB_SCALE).astype(jnp.int32)
    by = jnp.round((mat[1, 1] * ys + mat[1, 2]) * _AB_SCALE).astype(jnp.int32)
    qx = (ax + bx + _ROUND_DELTA) >> (_AB_BITS - _INTER_BITS)
    qy = (ay + by + _ROUND_DELTA) >> (_AB_BITS - _INTER_BITS)
    x0, y0 = qx >> _INTER_BITS, qy >> _INTER_BITS
    fx = ((qx & (_SUBPIXELS - 1)).astype(jnp.float32) / _SUBPIXELS)[..., None]
    fy = ((qy & (_SUBPIXELS - 1)).astype(jnp.float32) / _SUBPIXELS)[..., None]
    hs, ws = img.shape[0], img.shape[1]
    src = img.astype(jnp.float32)

    def tap(yy, xx):
      inside = (xx >= 0) & (xx < ws) & (yy >= 0) & (yy < hs)
      v = src[jnp.clip(yy, 0, hs - 1), jnp.clip(xx, 0, ws - 1)]
      return jnp.where(inside[..., None], v, 0.0)

    top = tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx
    bottom = tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy

  out = jax.vmap(one)(images, m)
  # The weights are multiples of 1/1024 and the sum is exact: cv2 rounds half up.
  return jnp.clip(jnp.floor(out + 0.5), 0.0, 255.0)
