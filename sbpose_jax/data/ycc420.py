"""Packed crops as 4:2:0 YCbCr planes: libjpeg-turbo's colour arithmetic, on the host and device.

With `data.pack_chroma="planes"` a pack stores each crop as the three planes a 4:2:0 colour
JPEG codes (Y at full size, Cb and Cr at half size each way) in ONE grayscale JPEG, laid out as

  rows [0, H)          Y   (H, W)
  rows [H, H + H/2)    Cb (H/2, W/2) | Cr (H/2, W/2)      side by side

so the host decodes it with one call straight into the (3H/2, W) uint8 array it ships: half the
bytes of the RGB crop through grain's shared memory, and libjpeg's chroma upsampling and colour
conversion are left out of the host's decode. The device (or, for the host warp, numpy) then
does them as libjpeg-turbo decompression does them by default: "fancy" h2v2 upsampling (a
triangle filter, 3/4 nearer + 1/4 further sample each way, with its rounding biases 8 and 7)
and the fixed-point YCbCr → RGB of jdcolor.c (16 fractional bits). The forward direction
(`bgr_to_planes`, at pack time) is jccolor.c's RGB → YCbCr and jcsample.c's 2x2 box
downsampling (bias 1, 2 alternating), so the planes are those a colour 4:2:0 JPEG would code.
tests/test_packed.py checks both against libjpeg-turbo (simplejpeg) bit for bit.

H and W must be even; pack sizes are multiples of 16 (pack_geometry.pack_size), so the planes'
8x8 JPEG blocks never straddle two planes.
"""
from __future__ import annotations

import numpy as np

_SCALEBITS = 16
_ONE_HALF = 1 << (_SCALEBITS - 1)


def _fix(x: float) -> int:
  return int(x * (1 << _SCALEBITS) + 0.5)


def layout_shape(crop_hw) -> tuple[int, int]:
  """(rows, cols) of the planes array of an (H, W) crop: (3H/2, W)."""
  h, w = int(crop_hw[0]), int(crop_hw[1])
  if h % 2 or w % 2:
    raise ValueError(f"4:2:0 planes need an even crop size, got {w}x{h}")
  return h + h // 2, w


def crop_shape(planes_hw) -> tuple[int, int]:
  """(H, W) of the crop whose planes array is (rows, cols)."""
  rows, w = int(planes_hw[0]), int(planes_hw[1])
  if rows % 3 or w % 2:
    raise ValueError(f"not a 4:2:0 planes layout: {rows}x{w}")
  return 2 * rows // 3, w


# ------------------------------------------------------------------------------------------------
# Host (numpy): pack time, and the host-warp path.

def bgr_to_planes(bgr: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 BGR → (3H/2, W) uint8 planes (libjpeg-turbo's compression arithmetic)."""
  h, w = bgr.shape[:2]
  out = np.empty(layout_shape((h, w)), np.uint8)
  b, g, r = (bgr[..., i].astype(np.int64) for i in range(3))
  out[:h] = (_fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + _ONE_HALF) >> _SCALEBITS
  offset = (128 << _SCALEBITS) + _ONE_HALF - 1   # jccolor.c's 0.5 - epsilon rounding
  cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + offset) >> _SCALEBITS
  cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + offset) >> _SCALEBITS
  bias = np.tile(np.array([1, 2]), w // 2)[: w // 2]
  for j, plane in enumerate((cb, cr)):
    quad = plane[0::2, 0::2] + plane[0::2, 1::2] + plane[1::2, 0::2] + plane[1::2, 1::2]
    out[h:, j * (w // 2):(j + 1) * (w // 2)] = (quad + bias) >> 2
  return out


def _split(planes, xp):
  h, w = crop_shape(planes.shape[-2:])
  y = planes[..., :h, :]
  cb = planes[..., h:, : w // 2]
  cr = planes[..., h:, w // 2:]
  return xp.astype(y, xp.int32), xp.astype(cb, xp.int32), xp.astype(cr, xp.int32)


def _upsample(c, xp):
  """libjpeg-turbo's h2v2_fancy_upsample of (..., h, w) int32 → (..., 2h, 2w)."""
  above = xp.concatenate([c[..., :1, :], c[..., :-1, :]], axis=-2)   # edge rows replicated
  below = xp.concatenate([c[..., 1:, :], c[..., -1:, :]], axis=-2)
  rows = xp.stack([3 * c + above, 3 * c + below], axis=-2)           # (..., h, 2, w)
  rows = xp.reshape(rows, rows.shape[:-3] + (2 * c.shape[-2], c.shape[-1]))
  left = xp.concatenate([rows[..., :1], rows[..., :-1]], axis=-1)
  right = xp.concatenate([rows[..., 1:], rows[..., -1:]], axis=-1)
  # Edge columns: left/right are the column itself, so 3s + s = 4s as libjpeg's special cases.
  out = xp.stack([(3 * rows + left + 8) >> 4, (3 * rows + right + 7) >> 4], axis=-1)
  return xp.reshape(out, out.shape[:-2] + (2 * c.shape[-1],))


def _to_rgb(y, cb, cr, xp):
  """jdcolor.c's ycc_rgb_convert on int32 planes of one size → (..., H, W, 3) int32 RGB."""
  cb, cr = cb - 128, cr - 128
  r = y + ((_fix(1.402) * cr + _ONE_HALF) >> _SCALEBITS)
  b = y + ((_fix(1.772) * cb + _ONE_HALF) >> _SCALEBITS)
  g = y + ((-_fix(0.34414) * cb + _ONE_HALF - _fix(0.71414) * cr) >> _SCALEBITS)
  return xp.clip(xp.stack([r, g, b], axis=-1), 0, 255)


class _NumpyOps:
  int32 = np.int32
  concatenate, stack, reshape, clip = (staticmethod(np.concatenate), staticmethod(np.stack),
                                       staticmethod(np.reshape), staticmethod(np.clip))

  @staticmethod
  def astype(x, dtype):
    return x.astype(dtype)


def planes_to_colour(planes: np.ndarray, colour_order: str = "rgb") -> np.ndarray:
  """(..., 3H/2, W) uint8 planes → (..., H, W, 3) uint8 in `colour_order`, exactly as
  libjpeg-turbo decodes a 4:2:0 JPEG of these planes (numpy; `planes_to_colour_jnp` on device)."""
  xp = _NumpyOps
  y, cb, cr = _split(np.asarray(planes), xp)
  rgb = _to_rgb(y, _upsample(cb, xp), _upsample(cr, xp), xp).astype(np.uint8)
  return _order(rgb, colour_order)


def _order(rgb, colour_order: str):
  if colour_order == "rgb":
    return rgb
  if colour_order == "bgr":
    return rgb[..., ::-1]
  raise ValueError(f"colour_order must be 'rgb' or 'bgr', got {colour_order!r}")


# ------------------------------------------------------------------------------------------------
# Device (jnp): inside the jitted train step.

def planes_to_colour_jnp(planes, colour_order: str = "rgb"):
  """`planes_to_colour` in jnp, for (B, 3H/2, W) uint8 batches in the jitted step.

  Returns (B, H, W, 3) uint8, bit-equal to the numpy version.
  """
  # why: loads JAX and the model stack on use, so that --help answers at once
  import jax.numpy as jnp

  class _JnpOps:
    int32 = jnp.int32
    concatenate, stack, reshape, clip = jnp.concatenate, jnp.stack, jnp.reshape, jnp.clip

    @staticmethod
    def astype(x, dtype):
      return x.astype(dtype)

  xp = _JnpOps
  y, cb, cr = _split(planes, xp)
  rgb = _to_rgb(y, _upsample(cb, xp), _upsample(cr, xp), xp).astype(jnp.uint8)
  return _order(rgb, colour_order)
