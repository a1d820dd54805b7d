"""Draw predicted skeletons on images: per-dataset skeleton and colours, joint score → opacity.

Colours follow MMPose's convention (left side green, right side orange, centre blue) and are
derived from the joint names, so every dataset of `keypoints.DATASETS` gets them without a
table; hand links get one colour per finger. Images are RGB uint8 in and out.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from sbpose_jax import keypoints

LEFT = (0, 200, 70)
RIGHT = (255, 140, 0)
CENTRE = (50, 150, 255)
FACE = (255, 255, 255)
FINGERS = ((255, 128, 0), (255, 153, 255), (102, 178, 255), (255, 51, 51), (0, 255, 0))
BOX = (230, 230, 230)


def _side(name: str) -> str:
  if name.startswith("left") or "_left" in name:
    return "left"
  if name.startswith("right") or "_right" in name:
    return "right"
  return "centre"


def _finger(name: str) -> int | None:
  for i, f in enumerate(("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")):
    if f in name:
      return i
  return None


def joint_colours(info: keypoints.KeypointInfo) -> np.ndarray:
  """(K, 3) uint8 RGB colour of each joint."""
  out = []
  for name in info.joint_names:
    finger = _finger(name)
    if finger is not None:
      out.append(FINGERS[finger])
    elif name.startswith("face"):
      out.append(FACE)
    else:
      out.append({"left": LEFT, "right": RIGHT, "centre": CENTRE}[_side(name)])
  return np.asarray(out, np.uint8)


def link_colours(info: keypoints.KeypointInfo) -> np.ndarray:
  """(L, 3) uint8 RGB colour of each skeleton link: its side, or its finger for hands."""
  names = info.joint_names
  out = []
  for a, b in info.skeleton:
    finger = _finger(names[b]) if _finger(names[b]) is not None else _finger(names[a])
    sa, sb = _side(names[a]), _side(names[b])
    if finger is not None:
      out.append(FINGERS[finger])
    elif sa == sb == "left":
      out.append(LEFT)
    elif sa == sb == "right":
      out.append(RIGHT)
    else:
      out.append(CENTRE)
  return np.asarray(out, np.uint8).reshape(-1, 3)


def score_to_alpha(scores: np.ndarray, kpt_thr: float, full_score: float) -> np.ndarray:
  """Opacity per joint: 0 below `kpt_thr`, rising linearly to 1 at `full_score`."""
  s = np.nan_to_num(np.asarray(scores, np.float64), nan=0.0)
  alpha = 0.25 + 0.75 * np.clip((s - kpt_thr) / max(full_score - kpt_thr, 1e-6), 0.0, 1.0)
  return np.where(s > kpt_thr, alpha, 0.0)


def _blend_shape(img: np.ndarray, draw, rect, colour, alpha: float) -> None:
  """Draws with `draw(roi, offset)` on a copy of the ROI `rect` and blends it in place."""
  if alpha <= 0:
    return
  h, w = img.shape[:2]
  x0, y0, x1, y1 = (int(math.floor(rect[0])), int(math.floor(rect[1])),
                    int(math.ceil(rect[2])) + 1, int(math.ceil(rect[3])) + 1)
  x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
  if x1 <= x0 or y1 <= y0:
    return
  roi = img[y0:y1, x0:x1]
  layer = roi.copy()
  draw(layer, np.array([x0, y0], np.float64), tuple(int(c) for c in colour))
  img[y0:y1, x0:x1] = cv2.addWeighted(layer, alpha, roi, 1.0 - alpha, 0.0)


def _pt(p, offset):
  # cv2 draws at integer pixels; shift=4 keeps sub-pixel positions (1/16 px).
  q = np.round((np.asarray(p, np.float64) - offset) * 16).astype(np.int64)
  return int(q[0]), int(q[1])


def _instance_size(kpts: np.ndarray, box, visible: np.ndarray) -> float:
  """Person size in pixels: the extent of the drawn joints (a whole-image box says nothing)."""
  if visible.sum() >= 3:
    ext = kpts[visible, :2].max(0) - kpts[visible, :2].min(0)
    return float(max(np.max(ext), 1.0))
  if box is not None and box[2] > 0 and box[3] > 0:
    return float(max(box[2], box[3]))
  return 100.0


def draw_instance(img: np.ndarray, kpts: np.ndarray, info: keypoints.KeypointInfo, box=None,
                  kpt_thr: float = 0.05, full_score: float = 0.6,
                  radius: int | None = None, thickness: int | None = None) -> None:
  """Draws one person's skeleton in place on an RGB uint8 image.

  Args:
    img: (H, W, 3) uint8 RGB, modified in place.
    kpts: (K, 3) image x, y, score.
    info: the dataset's keypoint metadata (skeleton, joint names).
    box: optional (4,) x, y, w, h drawn as a thin rectangle; also sets the line width.
    kpt_thr: joints at or below this score are not drawn (nor their links).
    full_score: score at which a joint is fully opaque.
  """
  kpts = np.asarray(kpts, np.float64)
  alpha = score_to_alpha(kpts[:, 2], kpt_thr, full_score)
  alpha = np.where(np.isfinite(kpts[:, :2]).all(1), alpha, 0.0)
  # Far-away points would overflow cv2's int coordinates; a clipped line still leaves the frame.
  kpts[:, :2] = np.clip(np.nan_to_num(kpts[:, :2]), -1e5, 1e5)
  confident = kpts[:, 2] > max(kpt_thr, 0.5 * full_score)
  size = _instance_size(kpts, box, confident & (alpha > 0) if confident.sum() >= 3 else alpha > 0)
  r = radius or int(np.clip(round(size / 50.0), 2, 10))
  t = thickness or int(np.clip(round(size / 100.0), 1, 6))
  if info.num_joints > 30:  # whole-body: many small points, keep them thin
    r, t = max(1, r // 2), max(1, t // 2)
  if box is not None and box[2] > 0 and box[3] > 0:
    x, y, w, h = (float(v) for v in box)
    _blend_shape(img, lambda roi, o, c: cv2.rectangle(
        roi, _pt((x, y), o), _pt((x + w, y + h), o), c, 1, cv2.LINE_AA, 4),
                 (x - 1, y - 1, x + w + 1, y + h + 1), BOX, 0.6)
  for (a, b), colour in zip(info.skeleton, link_colours(info)):
    la = min(alpha[a], alpha[b])
    if la <= 0:
      continue
    pa, pb = kpts[a, :2], kpts[b, :2]
    rect = (min(pa[0], pb[0]) - t, min(pa[1], pb[1]) - t, max(pa[0], pb[0]) + t,
            max(pa[1], pb[1]) + t)
    _blend_shape(img, lambda roi, o, c, pa=pa, pb=pb: cv2.line(
        roi, _pt(pa, o), _pt(pb, o), c, t, cv2.LINE_AA, 4), rect, colour, la)
  for k, colour in enumerate(joint_colours(info)):
    if alpha[k] <= 0:
      continue
    p = kpts[k, :2]
    rect = (p[0] - r - 1, p[1] - r - 1, p[0] + r + 1, p[1] + r + 1)
    _blend_shape(img, lambda roi, o, c, p=p: (
        cv2.circle(roi, _pt(p, o), r * 16, c, -1, cv2.LINE_AA, 4),
        cv2.circle(roi, _pt(p, o), r * 16, (20, 20, 20), 1, cv2.LINE_AA, 4)), rect, colour,
                 alpha[k])


def draw_poses(image: np.ndarray, keypoints_nk3: np.ndarray, dataset: str,
               boxes: np.ndarray | None = None, scores: Sequence[float] | None = None,
               kpt_thr: float = 0.05, full_score: float = 0.6) -> np.ndarray:
  """Returns a copy of `image` with every person's skeleton drawn.

  Args:
    image: (H, W, 3) uint8 RGB (or (H, W) grey).
    keypoints_nk3: (N, K, 3) or (K, 3) image x, y, score.
    dataset: key of `keypoints.DATASETS` (skeleton, colours).
    boxes: optional (N, 4) x, y, w, h.
    scores: optional (N,) instance scores written next to each box.
    kpt_thr: joints with score ≤ this are hidden.
    full_score: joint score drawn fully opaque.
  Returns:
    (H, W, 3) uint8 RGB.
  """
  info = keypoints.get(dataset)
  img = np.ascontiguousarray(image)
  img = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img.copy()
  if img.dtype != np.uint8:
    raise ValueError(f"draw_poses expects a uint8 image, got {img.dtype}")
  kpts = np.asarray(keypoints_nk3, np.float64)
  kpts = kpts[None] if kpts.ndim == 2 else kpts
  if kpts.ndim != 3 or kpts.shape[1:] != (info.num_joints, 3):
    raise ValueError(f"keypoints for {dataset!r} must be (N, {info.num_joints}, 3), "
                     f"got {tuple(np.shape(keypoints_nk3))}")
  for i, person in enumerate(kpts):
    box = None if boxes is None else np.asarray(boxes[i], np.float64)
    draw_instance(img, person, info, box, kpt_thr, full_score)
    if scores is not None and box is not None:
      org = (int(np.clip(box[0], 0, 1e5)) + 3, int(np.clip(box[1], 0, 1e5)) + 15)
      text = f"{float(scores[i]):.2f}"
      # Dark outline under light text: readable on snow and on shadow alike.
      cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (20, 20, 20), 3, cv2.LINE_AA)
      cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45, BOX, 1, cv2.LINE_AA)
  return img


def make_grid(images: Sequence[np.ndarray], cols: int | None = None, cell_hw=None,
              pad: int = 4, background: int = 32) -> np.ndarray:
  """Tiles images (each resized to fit `cell_hw`, aspect kept) into one RGB uint8 grid.

  Args:
    images: sequence of (H, W, 3) uint8.
    cols: columns (default: ceil(sqrt(n))).
    cell_hw: (H, W) of a cell; default the largest image.
    pad: pixels between cells.
  """
  if not images:
    raise ValueError("make_grid needs at least one image")
  n = len(images)
  cols = cols or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  ch, cw = cell_hw or (max(i.shape[0] for i in images), max(i.shape[1] for i in images))
  grid = np.full((rows * ch + (rows + 1) * pad, cols * cw + (cols + 1) * pad, 3), background,
                 np.uint8)
  for i, im in enumerate(images):
    im = np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im
    f = min(ch / im.shape[0], cw / im.shape[1])
    if f != 1.0:
      im = cv2.resize(im, (max(1, round(im.shape[1] * f)), max(1, round(im.shape[0] * f))),
                      interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    r, c = divmod(i, cols)
    y, x = pad + r * (ch + pad), pad + c * (cw + pad)
    grid[y:y + im.shape[0], x:x + im.shape[1]] = im
  return grid
