"""RTMDet's training losses in jnp: quality focal loss, GIoU loss and RTMDet's normalisation.

Transcribed from MMDetection 3.x: `quality_focal_loss` (mmdet/models/losses/gfocal_loss.py, the
(label, score) target path, beta 2), `GIoULoss` (mmdet/models/losses/iou_loss.py, eps 1e-6, with
`bbox_overlaps(mode='giou', is_aligned=True)` of mmdet/structures/bbox/bbox_overlaps.py),
`weight_reduce_loss` (mmdet/models/losses/utils.py: sum / (avg_factor + float32 eps)) and
`RTMDetHead.loss_by_feat` / `_get_targets_single` (mmdet/models/dense_heads/rtmdet_head.py):

* targets from the assignment: class = the GT's label on positives, background elsewhere; label
  weight 1 on every prior (`pos_weight=-1`; all priors inside the image, `allowed_border=-1`);
  the positives' soft score = their assign metric (IoU of the predicted box with the GT);
* loss_cls = QFL summed over priors and images (avg_factor 1.0 per level);
  loss_bbox = loss_weight 2.0 x GIoU loss of the positives weighted by their metric (avg 1.0);
* both divided by the same factor: max(sum of the metrics over the batch, 1) — with R data-
  parallel replicas MMDetection divides by the mean over replicas (`reduce_mean`) and DDP
  averages the gradients; `num_replicas` reproduces that mean for one global batch.

Everything is fixed-shape: no gather of the positives (masks instead), so one compiled step
serves every number of GT boxes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sbpose_jax.training.det_assigner import Assignment

_F32_EPS = float(jnp.finfo(jnp.float32).eps)   # weight_reduce_loss's eps


def _bce_with_logits(x: jnp.ndarray, z) -> jnp.ndarray:
  return jnp.maximum(x, 0) - x * z + jnp.log1p(jnp.exp(-jnp.abs(x)))


def quality_focal_loss(logits: jnp.ndarray, labels: jnp.ndarray, score: jnp.ndarray,
                       beta: float = 2.0) -> jnp.ndarray:
  """QFL per prior, summed over classes (before weighting and reduction).

  Args:
    logits: (..., C) classification logits.
    labels: (...) int, the target class, C (or anything outside [0, C)) for background.
    score: (...) the positives' quality target (IoU); ignored on background.
    beta: the modulating exponent.

  Returns:
    (...) loss.
  """
  num_classes = logits.shape[-1]
  p = jax.nn.sigmoid(logits)
  neg = _bce_with_logits(logits, 0.0) * p ** beta                      # negatives: target 0
  pos_mask = (labels >= 0) & (labels < num_classes)
  onehot = jax.nn.one_hot(jnp.where(pos_mask, labels, 0), num_classes, dtype=bool)
  onehot = onehot & pos_mask[..., None]
  s = score[..., None]
  pos = _bce_with_logits(logits, s) * jnp.abs(s - p) ** beta
  return jnp.where(onehot, pos, neg).sum(-1)


def giou(pred: jnp.ndarray, target: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """Aligned GIoU of xyxy boxes (..., 4) x (..., 4) → (...), as mmdet's `bbox_overlaps`
  (mode 'giou', is_aligned: union and enclosing area clamped to at least `eps`)."""
  area1 = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
  area2 = (target[..., 2] - target[..., 0]) * (target[..., 3] - target[..., 1])
  wh = jnp.clip(jnp.minimum(pred[..., 2:], target[..., 2:]) -
                jnp.maximum(pred[..., :2], target[..., :2]), 0)
  overlap = wh[..., 0] * wh[..., 1]
  union = jnp.maximum(area1 + area2 - overlap, eps)
  enclose = jnp.clip(jnp.maximum(pred[..., 2:], target[..., 2:]) -
                     jnp.minimum(pred[..., :2], target[..., :2]), 0)
  enclose_area = jnp.maximum(enclose[..., 0] * enclose[..., 1], eps)
  return overlap / union - (enclose_area - union) / enclose_area


def giou_loss(pred: jnp.ndarray, target: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """1 - GIoU, (...) per box pair."""
  return 1.0 - giou(pred, target, eps)


def rtmdet_loss(cls_logits: jnp.ndarray, pred_boxes: jnp.ndarray, assignment: Assignment,
                gt_boxes: jnp.ndarray, prior_valid: jnp.ndarray | None = None, *,
                beta: float = 2.0, loss_cls_weight: float = 1.0, loss_bbox_weight: float = 2.0,
                num_replicas: int = 1) -> dict[str, jnp.ndarray]:
  """RTMDet's loss of a batch (see the module docstring).

  Args:
    cls_logits: (B, N, C) logits of every prior, levels concatenated.
    pred_boxes: (B, N, 4) decoded xyxy boxes (`det_assigner.distance2bbox`).
    assignment: from `det_assigner.assign_batch` on the same (detached) predictions.
    gt_boxes: (B, G, 4) the padded GT boxes the assignment indexes.
    prior_valid: optional (B, N) bool, MMDetection's inside flags (priors outside the padded
      image get label weight 0); None = all.
    beta, loss_cls_weight, loss_bbox_weight: QualityFocalLoss(beta) and GIoULoss weights.
    num_replicas: the number of MMDetection replicas whose mean this equals (1: one GPU).

  Returns:
    {"loss_cls", "loss_bbox", "loss": their sum, "avg_factor"}: float32 scalars.
  """
  fg = assignment.fg
  metric = jax.lax.stop_gradient(assignment.metric)
  label_weight = (jnp.ones(fg.shape, jnp.float32) if prior_valid is None
                  else prior_valid.astype(jnp.float32))
  qfl = quality_focal_loss(cls_logits.astype(jnp.float32), assignment.labels, metric, beta)
  cls_sum = loss_cls_weight * (qfl * label_weight).sum() / (1.0 + _F32_EPS)
  targets = jnp.take_along_axis(gt_boxes, jnp.maximum(assignment.gt_index, 0)[..., None],
                                axis=1)
  targets = jax.lax.stop_gradient(jnp.where(fg[..., None], targets, pred_boxes))
  per_box = giou_loss(pred_boxes.astype(jnp.float32), targets.astype(jnp.float32))
  bbox_sum = loss_bbox_weight * jnp.where(fg, per_box * metric, 0.0).sum() / (1.0 + _F32_EPS)
  avg = jnp.maximum(metric.sum() / num_replicas, 1.0)
  loss_cls = cls_sum / avg / num_replicas
  loss_bbox = bbox_sum / avg / num_replicas
  return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss": loss_cls + loss_bbox,
          "avg_factor": avg}
