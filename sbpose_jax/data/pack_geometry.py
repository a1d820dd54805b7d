"""Where a packed person crop lies in its image, and at what resolution (numpy only).

A packed crop must hold every pixel that any training augmentation of the config can sample
(docs/packing.md). The full-image path warps the image with `geometry.get_affine_transform(c,
s·g, r, input_wh)`: the output sees the rectangle of width 200·s0·g and height
200·s0·g·H_in/W_in centred on c, rotated by r. Over the config's ranges:

* centre: the frozen 2020 shift moves c by at most `shift_factor/2 · (w, h)` of the raw box;
* zoom g ∈ [1 − scale_factor, 1 + scale_factor], the rectangle is largest at 1 + sf;
* rotation |r| ≤ 2·rot_factor (the clip of `RandomScaleRotation`) when rot_prob > 0;
* half-body: the box of the upper or of the lower joints (both candidates are covered), with
  the same zoom and rotation, and no centre shift;
* the flip mirrors the image, centre and joints together: the same region, mirrored.

The region is the bounding box of these rotated rectangles, plus a margin for the bilinear
neighbours, clipped to the image (pixels outside are zero in both paths). It is stored at one
fixed size per config (`pack_size`), never above the image's own resolution: when it fits,
the crop is a plain copy of image pixels (scale 1, integer offset).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from sbpose_jax import geometry

MARGIN_PX = 2.0   # image pixels around the reachable set: bilinear neighbours + rounding


def _max_rotated_extent(a: float, b: float, max_rot_deg: float) -> tuple[float, float]:
  """Half-extents (x, y) of the bounding box of an a x b half-size rectangle rotated by any
  angle in [-max_rot_deg, max_rot_deg]."""
  if max_rot_deg <= 0:
    return a, b
  r = np.deg2rad(min(float(max_rot_deg), 180.0))
  grid = np.concatenate([np.linspace(-r, r, 2001), [math.atan2(b, a), math.atan2(a, b)]])
  grid = grid[np.abs(grid) <= r]
  cs, sn = np.abs(np.cos(grid)), np.abs(np.sin(grid))
  return float(np.max(a * cs + b * sn)), float(np.max(a * sn + b * cs))


def augmentation_ranges(data_cfg) -> dict:
  """The config values that decide the packed region, as plain floats (also the pack's key)."""
  d = data_cfg
  rot = 2.0 * float(d.rot_factor) if float(d.rot_prob) > 0 else 0.0
  return dict(input_size=[int(v) for v in d.input_size], padding=float(d.padding),
              shift=float(d.shift_factor) / 2 if float(d.shift_prob) > 0 else 0.0,
              max_zoom=1.0 + float(d.scale_factor), max_rotation=rot,
              half_body=float(d.half_body_prob) > 0, half_body_padding=float(d.half_body_padding),
              pack_scale=float(d.pack_scale))


def _rect_region(center, scale0: float, ranges: dict, shift_wh=(0.0, 0.0)) -> np.ndarray:
  """(x0, y0, x1, y1) reachable from one centre/scale (scale0 = scale[0], units of 200 px)."""
  w_in, h_in = ranges["input_size"]
  a = 0.5 * geometry.PIXEL_STD * scale0 * ranges["max_zoom"]
  ex, ey = _max_rotated_extent(a, a * h_in / w_in, ranges["max_rotation"])
  ex += ranges["shift"] * abs(shift_wh[0])
  ey += ranges["shift"] * abs(shift_wh[1])
  c = np.asarray(center, np.float64)
  return np.array([c[0] - ex, c[1] - ey, c[0] + ex, c[1] + ey])


def reachable_region(center, scale, bbox_wh, joints_xy, joints_vis, ranges: dict,
                     upper_body_ids: Sequence[int], num_joints_half_body: int) -> np.ndarray:
  """Image-pixel box (x0, y0, x1, y1) holding every pixel the augmentations can sample."""
  boxes = [_rect_region(center, float(scale[0]), ranges, bbox_wh)]
  vis = np.asarray(joints_vis)
  if ranges["half_body"] and np.sum(vis) > num_joints_half_body:
    w_in, h_in = ranges["input_size"]
    for prefer_upper in (True, False):
      hb = geometry.half_body_center_scale(joints_xy, vis, upper_body_ids, prefer_upper,
                                           w_in / h_in, ranges["half_body_padding"])
      if hb is not None:
        boxes.append(_rect_region(hb[0], float(hb[1][0]), ranges))
  boxes = np.stack(boxes)
  return np.array([boxes[:, 0].min() - MARGIN_PX, boxes[:, 1].min() - MARGIN_PX,
                   boxes[:, 2].max() + MARGIN_PX, boxes[:, 3].max() + MARGIN_PX])


def pack_size(data_cfg) -> tuple[int, int]:
  """The fixed (W, H) of every packed crop of a config.

  The region of a box whose aspect equals the input's, at zoom 1 with no half-body, measured in
  output pixels at the nominal scale, times `data.pack_scale` (1 = the output's resolution at
  zoom 1), rounded up to a multiple of 16 (JPEG blocks).
  """
  ranges = augmentation_ranges(data_cfg)
  w_in, h_in = ranges["input_size"]
  s0 = w_in / geometry.PIXEL_STD          # a box whose nominal crop is w_in image pixels wide
  box_wh = (w_in / ranges["padding"], h_in / ranges["padding"])
  x0, y0, x1, y1 = _rect_region((0.0, 0.0), s0, ranges, box_wh)
  rho = ranges["pack_scale"]
  return tuple(int(16 * math.ceil(rho * (v + 2 * MARGIN_PX) / 16)) for v in (x1 - x0, y1 - y0))


def crop_transform(region, image_wh: Sequence[int], pack_wh: Sequence[int]):
  """Integer source window and the image → pack map for one instance.

  The region is clipped to the image (plus one zero pixel per side, which bilinear sampling at
  the border reads). If the clipped window fits the pack, the pack is a plain copy (scale 1);
  otherwise the window is shrunk with area averaging to fit, keeping its aspect.

  Returns:
    window (x0, y0, x1, y1) ints, half-open, in image pixels (may extend one pixel outside);
    out_wh (w, h) of the resized window inside the pack (top-left aligned);
    matrix (2, 3) float64 image → pack: p = k·(x − x0 + 0.5) − 0.5 per axis.
  """
  w, h = int(image_wh[0]), int(image_wh[1])
  x0 = max(math.floor(region[0]), -1)
  y0 = max(math.floor(region[1]), -1)
  x1 = min(math.ceil(region[2]) + 1, w + 1)
  y1 = min(math.ceil(region[3]) + 1, h + 1)
  if x1 <= x0 or y1 <= y0:
    raise ValueError(f"region {np.round(region, 1).tolist()} lies outside the {w}x{h} image")
  k = min(1.0, pack_wh[0] / (x1 - x0), pack_wh[1] / (y1 - y0))
  if k >= 1.0:
    out_wh = (x1 - x0, y1 - y0)
    kx = ky = 1.0
  else:
    out_wh = (max(1, min(int(pack_wh[0]), round(k * (x1 - x0)))),
              max(1, min(int(pack_wh[1]), round(k * (y1 - y0)))))
    kx, ky = out_wh[0] / (x1 - x0), out_wh[1] / (y1 - y0)
  matrix = np.array([[kx, 0.0, kx * (0.5 - x0) - 0.5], [0.0, ky, ky * (0.5 - y0) - 0.5]])
  return (x0, y0, x1, y1), out_wh, matrix


def cut(image: np.ndarray, window, out_wh, pack_wh) -> np.ndarray:
  """The pack crop: `window` of `image` (zeros outside), area-resized to out_wh, placed at the
  top-left of a zero (pack H, pack W, C) array."""
  import cv2  # why: OpenCV only for this function; grain workers import the module
  x0, y0, x1, y1 = window
  h, w = image.shape[:2]
  src = np.zeros((y1 - y0, x1 - x0) + image.shape[2:], image.dtype)
  sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
  if sx1 > sx0 and sy1 > sy0:
    src[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
  if (x1 - x0, y1 - y0) != tuple(out_wh):
    src = cv2.resize(src, tuple(int(v) for v in out_wh), interpolation=cv2.INTER_AREA)
  out = np.zeros((int(pack_wh[1]), int(pack_wh[0])) + image.shape[2:], image.dtype)
  out[:src.shape[0], :src.shape[1]] = src
  return out
