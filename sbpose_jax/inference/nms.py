"""Box NMS with mmcv's semantics: a numpy reference and a fixed-size jnp version.

mmcv (>= 2, `offset=0`; `mmcv/ops/csrc/pytorch/cpu/nms.cpp`): boxes are visited by descending
score; a box is dropped when its IoU with a kept, higher-scored box is **> iou_thr** (kept when
<= iou_thr); IoU = inter / (area_i + area_j - inter) with widths `x2 - x1` (no +1), in float32.
Boxes are (x1, y1, x2, y2).

`nms_fixed` is the same selection as a fixed-size operation for jit: at each of `max_out` steps
the highest-scored box still alive is kept and every alive box overlapping it by more than the
threshold dies. The kept boxes are those of the sorted greedy loop, in the same order (equal
scores: the lower index first, as a stable sort), so `keep[:max_out]` equals mmcv's result
truncated to `max_per_img`, with no host round trip.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def iou_one_to_many(box, boxes):
  """IoU of `box` (4,) with `boxes` (N, 4), float32 as mmcv: (N,). Works on numpy and jnp."""
  xp = jnp if isinstance(boxes, jax.Array) else np
  w = xp.maximum(xp.minimum(box[2], boxes[:, 2]) - xp.maximum(box[0], boxes[:, 0]), 0)
  h = xp.maximum(xp.minimum(box[3], boxes[:, 3]) - xp.maximum(box[1], boxes[:, 1]), 0)
  inter = w * h
  area = (box[2] - box[0]) * (box[3] - box[1])
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  return inter / (area + areas - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> np.ndarray:
  """mmcv's greedy NMS on the host: indices of the kept boxes, by descending score.

  boxes: (N, 4) xyxy; scores: (N,). float32 arithmetic.
  """
  boxes = np.asarray(boxes, np.float32)
  order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
  alive = np.ones(len(order), bool)
  keep = []
  with np.errstate(invalid="ignore", divide="ignore"):
    for a, i in enumerate(order):
      if not alive[a]:
        continue
      keep.append(i)
      rest = order[a + 1:]
      alive[a + 1:] &= ~(iou_one_to_many(boxes[i], boxes[rest]) > np.float32(iou_thr))
  return np.asarray(keep, np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                iou_thr: float) -> np.ndarray:
  """mmcv's class-aware `batched_nms`: boxes of different labels never suppress each other
  (they are moved apart by label * (max coordinate + 1))."""
  boxes = np.asarray(boxes, np.float32)
  if len(boxes) == 0:
    return np.zeros(0, np.int64)
  offsets = np.asarray(labels, np.float32) * (boxes.max() + np.float32(1))
  return nms(boxes + offsets[:, None], scores, iou_thr)


def nms_fixed(boxes, scores, valid, iou_thr: float, max_out: int):
  """Greedy NMS as a fixed-size jnp operation (one image; vmap for a batch).

  Args:
    boxes: (N, 4) xyxy float32. scores: (N,). valid: (N,) bool, candidates taking part.
    iou_thr: a box dies when its IoU with a kept one is > iou_thr.
    max_out: how many boxes at most (MMDetection's max_per_img).
  Returns:
    keep (max_out,) int32 indices into the N boxes, by descending score, -1 past `count`;
    count () int32.
  """
  n = boxes.shape[0]
  thr = jnp.float32(iou_thr)
  masked = jnp.where(valid, scores, -jnp.inf)

  # `alive` is carried as int32, not bool: jax2onnx 0.17.1 masks a loop's state with Where,
  # which onnxruntime has no bool kernel for.
  def cond(state):
    i, alive, _ = state
    return (i < max_out) & jnp.any(alive > 0)

  def body(state):
    i, alive, keep = state
    j = jnp.argmax(jnp.where(alive > 0, masked, -jnp.inf))
    # Selects, not keep.at[i].set and boxes[j]: the form ONNX converters take (jax2onnx 0.17.1
    # has no scatter, and its dynamic index inside a loop fails onnxruntime's checker).
    keep = jnp.where(jnp.arange(max_out) == i, j.astype(jnp.int32), keep)
    chosen = jnp.arange(n) == j
    box = jnp.sum(jnp.where(chosen[:, None], boxes, 0.0), axis=0)
    # NaN IoU (two empty boxes) is not > thr: such a box survives, as in mmcv.
    dead = iou_one_to_many(box, boxes) > thr
    alive = jnp.where(dead | chosen, 0, alive)
    return i + 1, alive, keep

  keep0 = jnp.full((max_out,), -1, jnp.int32)
  count, _, keep = jax.lax.while_loop(
      cond, body, (jnp.int32(0), valid.astype(jnp.int32), keep0))
  return keep, count
