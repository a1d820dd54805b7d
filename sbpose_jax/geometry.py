"""Crop geometry of top-down pose estimation, in numpy (docs/reference.md §1–3, §2.4).

Everything here reproduces MMPose 0.x (`mmpose/core/post_processing/post_transforms.py`,
`mmpose/core/bbox/transforms.py`, `top_down_transform.py`) down to the float32/float64 steps,
so that crops are equal pixel for pixel and targets bit for bit:

* box → (centre, scale): `box_to_center_scale` (aspect fix, padding; scale in units of 200 px);
* the affine crop matrix by the three-point method: `get_affine_transform`, whose 3-point solve
  replays OpenCV's `getAffineTransform` (LU with partial pivoting) and equals it bit for bit;
  `affine_matrix` is the closed form (vectorised, for warps on the device);
* horizontal flips of joints and centres (`flip_joints`, `flip_center_x`) and the flip folded
  into the crop matrix (`fold_flip`: not pixel-exact under OpenCV 4, opt-in);
* half-body boxes, the 2020 frozen centre shift, and heatmap → image (`transform_preds`).

Image coordinates: pixels, x right, y down, pixel centres at integers. Sizes are (W, H).

Precision follows the reference's arrays: centres and scales are float32 (COCO-style datasets)
or float64 (the 2020 MPII centre and scale, the MPII-TRB scale), and the functions below compute
in the precision they are given (`ref_float`), as the reference's numpy code did.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

PIXEL_STD = 200.0

# ImageNet statistics, applied channel by index. MSRA checkpoints saw BGR data normalised with
# these RGB-ordered constants (docs/reference.md §3.5, §8.1), so they are never permuted.
# The network input is (x / 255 - mean) / std; inference.normalize does it on the device.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def ref_float(x) -> np.ndarray:
  """A copy of `x` as float64 if it is float64, else as float32 (the reference's two cases)."""
  a = np.array(x)
  return a if a.dtype == np.float64 else a.astype(np.float32)


def box_to_center_scale(bbox_xywh, aspect_ratio: float, padding: float = 1.25, *,
                         divide_in_float64: bool = False):
  """Person box → crop centre and scale (MM `bbox_xywh2cs`, docs/reference.md §1.1).

  The aspect fix only enlarges. Arithmetic follows the reference: centre and aspect fix in
  float64 (the reference gets Python floats from the json), then float32 `/200` and `*padding`.
  Pass the boxes as float64 when they come from a json file to stay bit-exact.

  Args:
    bbox_xywh: (4,) or (N, 4) top-left x, y, width, height in pixels.
    aspect_ratio: input W / H (0.75 for 192x256).
    padding: 1.25 for every dataset of the table (1.0: no padding).
    divide_in_float64: divide by 200 before the float32 cast, as the 2020 dataset code
      (`_xywh2cs`) that built the published checkpoints' records did; v0.29 divides after.
      The two differ by at most one float32 step.
  Returns:
    center (…, 2) float32 pixels, scale (…, 2) float32 box size / 200.
  """
  box = np.asarray(bbox_xywh, np.float64)
  if box.shape[-1] != 4:
    raise ValueError(f"bbox_xywh must have 4 values in its last axis, got shape {box.shape}")
  x, y, w, h = np.moveaxis(box, -1, 0)
  center = np.stack([x + w * 0.5, y + h * 0.5], axis=-1).astype(np.float32)
  wide, tall = w > aspect_ratio * h, w < aspect_ratio * h
  h_fixed = np.where(wide, w * 1.0 / aspect_ratio, h)
  w_fixed = np.where(tall, h * aspect_ratio, w)
  scale = np.stack([w_fixed, h_fixed], axis=-1)
  if divide_in_float64:
    scale = (scale / PIXEL_STD).astype(np.float32)
  else:
    scale = scale.astype(np.float32) / np.float32(PIXEL_STD)
  return center, scale * np.float32(padding)


def frozen_center_shift(center, bbox_wh, rng: np.random.Generator, prob: float = 0.3,
                        factor: float = 0.4) -> np.ndarray:
  """The 2020 random centre shift, drawn once when the training set is built (§0).

  The published checkpoints were trained with MMPose ~v0.3–0.9, where `_xywh2cs` shifted the
  centre of a training box with probability 0.3 by `0.4·(u − 0.5)·(w, h)` (u two U[0,1) draws,
  raw box w, h) at dataset construction, so the shift stayed frozen for all epochs. (From v0.26
  a pipeline step redraws it every sample with a different magnitude; we follow 2020.)
  Draws as the reference, box by box: `rand() < prob`, and only then `rand(2)`.

  Args:
    center: (N, 2) or (2,) float32 box centres (before the aspect fix / scale, which the shift
      does not touch).
    bbox_wh: (N, 2) or (2,) clean box width, height in float64, as the reference had them from
      the json (a float32-rounded size moves some centres by one float32 step).
    rng: the generator to draw from (seeded by the pipeline).
    prob: probability of shifting a box.
    factor: the shift is `factor·(u − 0.5)` of the box size per axis.
  Returns:
    the shifted centres, float32 (`float32(c + shift)`, the reference's in-place add).
  """
  c = np.asarray(center, np.float32)
  c2 = np.atleast_2d(c)
  wh = np.broadcast_to(np.asarray(bbox_wh, np.float64).reshape(-1, 2), c2.shape)
  shift = np.zeros(c2.shape, np.float64)
  if prob > 0:
    for i in range(len(c2)):
      if rng.random() < prob:
        shift[i] = factor * (rng.random(2) - 0.5) * wh[i]
  return (c2 + shift).astype(np.float32).reshape(c.shape)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """`b + rot90(a − b)`, float32 as MM `_get_3rd_point`."""
  d = a - b
  return b + np.array([-d[1], d[0]], np.float32)


def affine_source_points(center, scale, rot_deg: float, output_wh: Sequence[int]):
  """The three point pairs of MM `get_affine_transform` (shift 0), float32 (3, 2) each.

  `center` and `scale` enter in their own precision (float64 stays float64: the 2020 MPII code)
  and the points are rounded to float32 once, as the reference's `src` array does.
  """
  center = ref_float(center)
  scale = ref_float(scale)
  src_w = scale[0] * scale.dtype.type(PIXEL_STD)                     # only scale[0] is used
  dst_w, dst_h = float(output_wh[0]), float(output_wh[1])
  rot = np.pi * rot_deg / 180.0
  sn, cs = np.sin(rot), np.cos(rot)
  half = float(src_w * scale.dtype.type(-0.5))
  src_dir = np.array([-half * sn, half * cs])                          # R(θ)·(0, −src_w/2)
  src = np.zeros((3, 2), np.float32)
  src[0] = center
  src[1] = center + src_dir          # float64 sum, rounded once to float32 as the reference
  src[2] = _third_point(src[0], src[1])
  dst = np.zeros((3, 2), np.float32)
  dst[0] = [dst_w * 0.5, dst_h * 0.5]
  dst[1] = [dst_w * 0.5, dst_h * 0.5 - dst_w * 0.5]
  dst[2] = _third_point(dst[0], dst[1])
  return src, dst


def solve_affine_3pt(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """(2, 3) float64 affine map with `M·[src_i, 1] = dst_i`, bit-equal to cv2.getAffineTransform.

  OpenCV solves the 6x6 system `[x y 1 0 0 0; 0 0 0 x y 1]·m = dst` by Gaussian elimination with
  partial pivoting (`hal::LU64f`: first strict maximum, multipliers `a·(−1/pivot)`, back
  substitution `s/pivot`). This replays it operation by operation in float64; tests check bit
  equality with cv2. (A reduced 3x3 solve is not equal: pivot ties, e.g. two points with the same
  x, are broken by row order, which differs between the two halves of the 6x6 system.)
  Updates with a zero multiplier are skipped: they add ±0 and change no value.
  """
  a, b = [], []
  for i in range(3):
    x, y = float(src[i][0]), float(src[i][1])
    a += [[x, y, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, x, y, 1.0]]
    b += [float(dst[i][0]), float(dst[i][1])]
  for i in range(6):
    k = i
    for j in range(i + 1, 6):
      if abs(a[j][i]) > abs(a[k][i]):
        k = j
    if abs(a[k][i]) < 100 * np.finfo(np.float64).eps:   # OpenCV's LU threshold
      raise ValueError(f"degenerate affine points (zero-size box?): {np.asarray(src).tolist()}")
    a[i], a[k], b[i], b[k] = a[k], a[i], b[k], b[i]
    d = -1.0 / a[i][i]
    row = a[i]
    for j in range(i + 1, 6):
      if a[j][i] == 0.0:
        continue
      alpha = a[j][i] * d
      target = a[j]
      for col in range(i + 1, 6):
        target[col] += alpha * row[col]
      b[j] += alpha * b[i]
  for i in range(5, -1, -1):
    s = b[i]
    for col in range(i + 1, 6):
      if a[i][col] != 0.0:
        s -= a[i][col] * b[col]
    b[i] = s / a[i][i]
  return np.array(b, np.float64).reshape(2, 3)


def get_affine_transform(center, scale, rot_deg: float, output_wh: Sequence[int],
                         inv: bool = False) -> np.ndarray:
  """Image → crop affine matrix by the three-point method (docs/reference.md §2.1).

  Args:
    center: (2,) crop centre, image pixels.
    scale: (2,) crop size / 200; only scale[0] is used (the box is aspect-fixed beforehand).
    rot_deg: rotation in degrees; positive turns the content counter-clockwise in the crop.
    output_wh: crop (W, H).
    inv: return the crop → image matrix instead.
  Returns:
    (2, 3) float64, as `cv2.getAffineTransform` on the float32 points.
  """
  src, dst = affine_source_points(center, scale, rot_deg, output_wh)
  return solve_affine_3pt(dst, src) if inv else solve_affine_3pt(src, dst)


def affine_matrix(center, scale, rot_deg, output_wh: Sequence[int]) -> np.ndarray:
  """Closed form of the same similarity, vectorised (for warps on the device).

  It differs from `get_affine_transform` only by the float32 rounding of the reference's three
  points (≲3e-6 relative); use `get_affine_transform` where bit parity with the reference matters.

  `u = k( cosθ·dx + sinθ·dy) + W/2`, `v = k(−sinθ·dx + cosθ·dy) + H/2`, k = W / (200·s[0]).

  Args:
    center: (..., 2); scale: (..., 2); rot_deg: (...) or scalar; output_wh: (W, H).
  Returns:
    (..., 2, 3) float64 image → crop matrices.
  """
  c = np.asarray(center, np.float64)
  s0 = np.asarray(scale, np.float32)[..., 0].astype(np.float64)
  theta = np.deg2rad(np.asarray(rot_deg, np.float64))
  theta = np.broadcast_to(theta, s0.shape)
  k = output_wh[0] / (PIXEL_STD * s0)
  cs, sn = k * np.cos(theta), k * np.sin(theta)
  tx = -(cs * c[..., 0] + sn * c[..., 1]) + output_wh[0] / 2.0
  ty = -(-sn * c[..., 0] + cs * c[..., 1]) + output_wh[1] / 2.0
  row0 = np.stack([cs, sn, tx], axis=-1)
  row1 = np.stack([-sn, cs, ty], axis=-1)
  return np.stack([row0, row1], axis=-2)


def affine_points(points, matrix) -> np.ndarray:
  """Applies a (2, 3) affine matrix to (..., 2) points; float64 result (MM `affine_transform`).

  A stack of matrices (B, 2, 3) maps (B, ..., 2) points, row b by matrix b (a batch of
  samples at once, with the same float operations as one sample at a time).
  """
  p = np.asarray(points, np.float64)
  m = np.asarray(matrix, np.float64)
  if m.ndim == 3:
    m = m.reshape(m.shape[:1] + (1,) * (p.ndim - 2) + (2, 3))
  x, y = p[..., 0], p[..., 1]
  return np.stack([m[..., 0, 0] * x + m[..., 0, 1] * y + m[..., 0, 2],
                   m[..., 1, 0] * x + m[..., 1, 1] * y + m[..., 1, 2]], axis=-1)


def flip_joints(joints_xy, joints_vis, flip_pairs, image_width: int):
  """Mirrors joints for a horizontally flipped image (MM `fliplr_joints`, §3.2).

  Swaps the rows of every flip pair (joints and visibility), then `x' = W − 1 − x`, and zeroes
  the coordinates of invisible joints (the reference multiplies by the visibility).

  Args:
    joints_xy: (K, 2) image pixels. joints_vis: (K,) 0/1.
    flip_pairs: ((left, right), ...) joint ids. image_width: W of the image being flipped.
  Returns:
    (joints (K, 2) float32, vis (K,) float32).
  """
  xy = np.array(joints_xy, np.float32)
  vis = np.array(joints_vis, np.float32)
  if xy.ndim != 2 or xy.shape[1] != 2 or vis.shape != xy.shape[:1]:
    raise ValueError(f"joints must be (K, 2) with vis (K,), got {xy.shape} and {vis.shape}")
  perm = np.arange(len(vis))
  for left, right in flip_pairs:
    perm[left], perm[right] = right, left
  xy, vis = xy[perm], vis[perm]
  xy[:, 0] = (image_width - 1) - xy[:, 0]
  return xy * vis[:, None], vis


def flip_center_x(center, image_width: int) -> np.ndarray:
  """`c_x' = W − c_x − 1` in the centre's precision (`ref_float`), left to right as the
  reference."""
  c = ref_float(center)
  one = c.dtype.type(1)
  c[..., 0] = (c.dtype.type(image_width) - c[..., 0]) - one
  return c


def flip_matrix(image_width: int) -> np.ndarray:
  """(3, 3) homogeneous map of an image point to its mirror: x → W − 1 − x."""
  return np.array([[-1.0, 0.0, image_width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def fold_flip(matrix, image_width: int) -> np.ndarray:
  """Crop matrix of the *flipped* image → the same crop taken from the unflipped image.

  `warpAffine(img[:, ::-1], M) ≈ warpAffine(img, M·F)`: mathematically equal, but OpenCV 4's
  fixed-point warp (1/32-px positions, 2^-15 weights) rounds the two differently: on the
  fixture crops 0.34-0.99% of the uint8 values differ, by up to 8 levels (all: 0.75%; OpenCV 5,
  in floating point: 0.006%, 1 level). It saves the copy of the mirrored image (0.4 ms for
  256x192, 2 ms for 640x480), so it is opt-in (`data.flip_in_affine`); the default mirrors the
  image as the reference does.
  """
  return np.asarray(matrix, np.float64) @ flip_matrix(image_width)


def half_body_center_scale(joints_xy, joints_vis, upper_body_ids, prefer_upper: bool,
                           aspect_ratio: float, padding: float = 1.5):
  """Box around the upper or lower body (MM `TopDownHalfBodyTransform.half_body_transform`).

  Upper = visible joints in `upper_body_ids`; lower = every *other* visible joint (the reference
  ignores lower_body_ids). Upper is chosen if `prefer_upper` (the caller's `randn() < 0.5`) and
  it has more than 2 joints, else lower if it has more than 2, else upper.

  Returns:
    (center (2,) float32, scale (2,) float32), or None when fewer than 2 joints are selected.
  """
  xy = np.asarray(joints_xy, np.float32)
  visible = np.asarray(joints_vis) > 0
  is_upper = np.isin(np.arange(len(xy)), np.asarray(upper_body_ids, int))
  upper, lower = xy[visible & is_upper], xy[visible & ~is_upper]
  if prefer_upper and len(upper) > 2:
    sel = upper
  elif len(lower) > 2:
    sel = lower
  else:
    sel = upper
  if len(sel) < 2:
    return None
  center = sel.mean(axis=0)
  extent = sel.max(axis=0) - sel.min(axis=0)
  # numpy 1 (the reference's) promoted float32 scalar ⊗ Python float to float64: mirror that.
  w, h = float(extent[0]), float(extent[1])
  if w > aspect_ratio * h:
    h = w * 1.0 / aspect_ratio
  elif w < aspect_ratio * h:
    w = h * aspect_ratio
  scale = np.array([w / PIXEL_STD, h / PIXEL_STD], np.float32) * np.float32(padding)
  return center.astype(np.float32), scale


def transform_preds(coords_hm, center, scale, heatmap_wh: Sequence[int]) -> np.ndarray:
  """Heatmap coordinates → image pixels (MM `transform_preds`, use_udp=False, §2.4).

  `x = x_hm·(200·s[0]/W_hm) + c_x − 100·s[0]` (same for y), in float32 as the reference.

  Args:
    coords_hm: (..., K, 2) heatmap x, y.
    center: (..., 2) crop centres. scale: (..., 2) crop sizes / 200.
    heatmap_wh: (W_hm, H_hm).
  Returns:
    (..., K, 2) float32 image coordinates.
  """
  coords = np.asarray(coords_hm, np.float32)
  size = np.asarray(scale, np.float32) * np.float32(PIXEL_STD)
  # The reference divided a float32 scalar by an int, which numpy 1 did in float64.
  unit = (size.astype(np.float64) / np.asarray(heatmap_wh, np.float64)).astype(np.float32)
  c = np.asarray(center, np.float32)
  return coords * unit[..., None, :] + c[..., None, :] - size[..., None, :] * np.float32(0.5)
