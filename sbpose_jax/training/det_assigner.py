"""RTMDet's training-time label assignment in jnp, with fixed shapes so the step compiles once.

A transcription of MMDetection 3.x `DynamicSoftLabelAssigner` (mmdet/models/task_modules/
assigners/dynamic_soft_label_assigner.py, the `train_cfg.assigner` of every RTMDet config, topk
13) and of the IoU it calls (`BboxOverlaps2D` → mmdet/structures/bbox/bbox_overlaps.py), for
one image whose ground truth is padded to G boxes with a `gt_valid` mask (vmap it over a batch).

MMDetection works on the priors that lie inside some GT box ("valid") and on the real GT boxes
only; here every prior and every padded box keeps its row and column, and masks make them
inert, so that the result equals MMDetection's for every padding:

* cost of a (prior, GT) pair = soft classification cost (BCE of the logits against the one-hot
  label times the predicted box's IoU, scaled by |soft label - sigmoid|^2) + 3 (-log(IoU + 1e-7))
  + 10^(distance to the GT centre in strides - 3); NOT restricted to priors inside that GT;
* per GT, k = max(1, floor(sum of its 13 largest IoUs over the valid priors)); rows of invalid
  priors count as IoU 0 there, which changes no sum;
* per GT, the k valid priors of lowest cost are positives (invalid rows and padded columns never
  are: k <= 13 and k <= the number of valid priors with IoU > 0);
* a prior chosen by several GTs keeps only the GT of lowest cost among all real GTs (the first
  on a tie, as torch.min);
* everything else is background. A GT containing no prior centre can still get positives, from
  priors inside other GTs (as in MMDetection).

Ties in cost are broken towards the lower prior index (`lax.top_k`); torch.topk does not
document its order on ties, so exactly equal costs are the one place where the two may differ.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-7         # MMDetection's EPS in the IoU cost


class Assignment(NamedTuple):
  """Per prior, shapes (N,) (or (B, N) from a vmap)."""
  fg: jnp.ndarray          # bool: assigned to a GT
  gt_index: jnp.ndarray    # int32: the GT's index in the padded list, -1 for background
  labels: jnp.ndarray      # int32: the GT's class, num_classes for background
  metric: jnp.ndarray      # float32: IoU of the predicted box with its GT, 0 for background


def grid_priors(featmap_hw: Sequence[tuple[int, int]], strides: Sequence[int]) -> np.ndarray:
  """MMDetection's `MlvlPointGenerator(offset=0).grid_priors(..., with_stride=True)`.

  Args:
    featmap_hw: (H, W) of each level's feature map.
    strides: each level's stride in pixels.

  Returns:
    (N, 4) float32 [x, y, stride, stride], levels in order, each row-major (y, then x), so that
    row i matches the i-th prior of NHWC head outputs flattened level by level.
  """
  out = []
  for (h, w), s in zip(featmap_hw, strides):
    ys, xs = np.meshgrid(np.arange(h) * s, np.arange(w) * s, indexing="ij")
    out.append(np.stack([xs.ravel(), ys.ravel(), np.full(h * w, s), np.full(h * w, s)], 1))
  return np.concatenate(out).astype(np.float32)


def distance2bbox(points: jnp.ndarray, distance: jnp.ndarray) -> jnp.ndarray:
  """Prior points (N, 2) + (..., N, 4) distances (left, top, right, bottom) → xyxy boxes
  (mmdet/structures/bbox/transforms.py `distance2bbox` without clipping, as the loss uses it)."""
  return jnp.concatenate([points - distance[..., :2], points + distance[..., 2:]], axis=-1)


def box_iou(boxes1: jnp.ndarray, boxes2: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """Pairwise IoU of xyxy boxes (N, 4) x (M, 4) → (N, M), as mmdet's `bbox_overlaps`
  (mode 'iou': union clamped to at least `eps`)."""
  area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
  area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
  lt = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
  rb = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
  wh = jnp.clip(rb - lt, 0)
  overlap = wh[..., 0] * wh[..., 1]
  union = jnp.maximum(area1[:, None] + area2[None] - overlap, eps)
  return overlap / union


def _bce_with_logits(x: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
  """torch's binary_cross_entropy_with_logits, element-wise: max(x, 0) - x z + log1p(e^-|x|)."""
  return jnp.maximum(x, 0) - x * z + jnp.log1p(jnp.exp(-jnp.abs(x)))


def soft_cls_cost(logits: jnp.ndarray, ious: jnp.ndarray, gt_labels: jnp.ndarray) -> jnp.ndarray:
  """The assigner's classification cost, (N, C) logits x (N, G) IoUs → (N, G).

  MMDetection sums over classes BCE(x_c, soft_c) |soft_c - sigmoid(x_c)|^2 with soft = one-hot
  label x IoU; every class but the GT's has soft = 0, so the sum is the all-zero sum with the
  GT class's term swapped: O(N (C + G)) memory instead of O(N G C).
  """
  p = jax.nn.sigmoid(logits)
  zero_terms = _bce_with_logits(logits, 0.0) * p ** 2                  # (N, C)
  x = jnp.take(logits, gt_labels, axis=1)                               # (N, G)
  px = jnp.take(p, gt_labels, axis=1)
  label_term = _bce_with_logits(x, ious) * jnp.abs(ious - px) ** 2
  others = zero_terms.sum(1, keepdims=True) - jnp.take(zero_terms, gt_labels, axis=1)
  return label_term + others


def assign(priors: jnp.ndarray, pred_boxes: jnp.ndarray, pred_logits: jnp.ndarray,
           gt_boxes: jnp.ndarray, gt_labels: jnp.ndarray, gt_valid: jnp.ndarray,
           prior_valid: jnp.ndarray | None = None, *, topk: int = 13,
           soft_center_radius: float = 3.0, iou_weight: float = 3.0) -> Assignment:
  """DynamicSoftLabelAssigner for one image (see the module docstring).

  Args:
    priors: (N, 4) [x, y, stride_x, stride_y] (`grid_priors`).
    pred_boxes: (N, 4) decoded xyxy predicted boxes (detached by the caller or not: the
      assignment carries no gradient).
    pred_logits: (N, C) classification logits.
    gt_boxes: (G, 4) xyxy, padded; gt_labels: (G,) int in [0, C); gt_valid: (G,) bool.
    prior_valid: optional (N,) bool, MMDetection's `inside_flags` (priors outside the padded
      image); None = all (a fixed-size input).
    topk, soft_center_radius, iou_weight: the assigner's settings (RTMDet's defaults).

  Returns:
    `Assignment` with (N,) arrays.
  """
  # why: the costs and top-k in float32 whatever the model's compute dtype
  priors, pred_boxes, pred_logits, gt_boxes = (
      jax.lax.stop_gradient(jnp.asarray(a, jnp.float32))
      for a in (priors, pred_boxes, pred_logits, gt_boxes))
  num_classes = pred_logits.shape[1]
  n, g = priors.shape[0], gt_boxes.shape[0]
  gt_valid = gt_valid.astype(bool)
  gt_boxes = jnp.where(gt_valid[:, None], gt_boxes, 0.0)          # why: padding may hold junk
  gt_labels = jnp.where(gt_valid, gt_labels, 0).astype(jnp.int32)
  centers = priors[:, :2]
  deltas = jnp.concatenate([centers[:, None] - gt_boxes[None, :, :2],
                            gt_boxes[None, :, 2:] - centers[:, None]], axis=-1)
  is_in_gts = (deltas.min(-1) > 0) & gt_valid[None]
  valid = is_in_gts.any(1)
  if prior_valid is not None:
    valid = valid & prior_valid.astype(bool)

  gt_center = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0
  distance = jnp.sqrt(((centers[:, None] - gt_center[None]) ** 2).sum(-1)) / priors[:, 2:3]
  soft_center_prior = jnp.power(10.0, distance - soft_center_radius)
  ious = box_iou(pred_boxes, gt_boxes)
  iou_cost = -jnp.log(ious + EPS) * iou_weight
  cost = soft_cls_cost(pred_logits, ious, gt_labels) + iou_cost + soft_center_prior

  # dynamic k per GT from the valid priors' IoUs
  k_cand = min(topk, n)
  pair_ok = valid[:, None] & gt_valid[None]
  top_ious = jax.lax.top_k(jnp.where(pair_ok, ious, 0.0).T, k_cand)[0]        # (G, k)
  dynamic_ks = jnp.maximum(top_ious.sum(-1).astype(jnp.int32), 1)

  # the k cheapest valid priors per GT (invalid rows last; overflowed costs stay finite so that
  # valid priors still come first)
  big = jnp.finfo(cost.dtype).max
  key = jnp.where(valid[:, None], jnp.minimum(cost, big), jnp.inf)
  _, idx = jax.lax.top_k(-key.T, k_cand)                                    # (G, k)
  chosen = (jnp.arange(k_cand)[None] < dynamic_ks[:, None]) & gt_valid[:, None]
  matching = jnp.zeros((n, g), bool).at[idx, jnp.arange(g)[:, None]].max(chosen)

  # a prior matched to several GTs keeps the cheapest real GT
  multi = matching.sum(1) > 1
  cheapest = jnp.argmin(jnp.where(gt_valid[None], cost, jnp.inf), axis=1)
  matching = jnp.where(multi[:, None], jax.nn.one_hot(cheapest, g, dtype=bool), matching)
  matching = matching & valid[:, None]

  fg = matching.any(1)
  gt_index = jnp.where(fg, jnp.argmax(matching, 1), -1).astype(jnp.int32)
  metric = jnp.where(fg, (matching * ious).sum(1), 0.0)
  labels = jnp.where(fg, gt_labels[jnp.maximum(gt_index, 0)], num_classes).astype(jnp.int32)
  return Assignment(fg, gt_index, labels, metric.astype(jnp.float32))


def assign_batch(priors, pred_boxes, pred_logits, gt_boxes, gt_labels, gt_valid,
                 prior_valid=None, **settings) -> Assignment:
  """`assign` over a batch: priors (N, 4) shared; the rest with a leading (B,) axis."""
  fn = lambda b, s, gb, gl, gv, pv: assign(priors, b, s, gb, gl, gv, pv, **settings)
  if prior_valid is None:
    return jax.vmap(lambda b, s, gb, gl, gv: fn(b, s, gb, gl, gv, None))(
        pred_boxes, pred_logits, gt_boxes, gt_labels, gt_valid)
  return jax.vmap(fn)(pred_boxes, pred_logits, gt_boxes, gt_labels, gt_valid, prior_valid)
