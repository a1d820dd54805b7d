"""RTMDet's assigner and losses in PyTorch, written from MMDetection 3.x: the independent reference
of sbpose_jax/training/det_assigner.py and det_losses.py.

A close transcription, with MMDetection's variable shapes (only the real GT boxes, only the
valid priors) and its per-level loss: `DynamicSoftLabelAssigner.assign` + `dynamic_k_matching`
(mmdet/models/task_modules/assigners/dynamic_soft_label_assigner.py), `bbox_overlaps`
(mmdet/structures/bbox/bbox_overlaps.py), `quality_focal_loss` (mmdet/models/losses/
gfocal_loss.py), `giou_loss` + `GIoULoss.forward` (mmdet/models/losses/iou_loss.py),
`weight_reduce_loss` (mmdet/models/losses/utils.py) and `RTMDetHead._get_targets_single`,
`loss_by_feat_single`, `loss_by_feat` (mmdet/models/dense_heads/rtmdet_head.py), on one device
(reduce_mean is the identity), with the PseudoSampler (positives: assigned GT > 0).

Copyright (c) OpenMMLab. Apache License 2.0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

INF = 100000000
EPS = 1.0e-7


def bbox_overlaps(bboxes1, bboxes2, mode="iou", is_aligned=False, eps=1e-6):
  area1 = (bboxes1[..., 2] - bboxes1[..., 0]) * (bboxes1[..., 3] - bboxes1[..., 1])
  area2 = (bboxes2[..., 2] - bboxes2[..., 0]) * (bboxes2[..., 3] - bboxes2[..., 1])
  if is_aligned:
    lt = torch.max(bboxes1[..., :2], bboxes2[..., :2])
    rb = torch.min(bboxes1[..., 2:], bboxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - overlap
    if mode == "giou":
      enclosed_lt = torch.min(bboxes1[..., :2], bboxes2[..., :2])
      enclosed_rb = torch.max(bboxes1[..., 2:], bboxes2[..., 2:])
  else:
    lt = torch.max(bboxes1[..., :, None, :2], bboxes2[..., None, :, :2])
    rb = torch.min(bboxes1[..., :, None, 2:], bboxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1[..., None] + area2[..., None, :] - overlap
    if mode == "giou":
      enclosed_lt = torch.min(bboxes1[..., :, None, :2], bboxes2[..., None, :, :2])
      enclosed_rb = torch.max(bboxes1[..., :, None, 2:], bboxes2[..., None, :, 2:])
  eps = union.new_tensor([eps])
  union = torch.max(union, eps)
  ious = overlap / union
  if mode == "iou":
    return ious
  enclose_wh = (enclosed_rb - enclosed_lt).clamp(min=0)
  enclose_area = enclose_wh[..., 0] * enclose_wh[..., 1]
  enclose_area = torch.max(enclose_area, eps)
  return ious - (enclose_area - union) / enclose_area


class DynamicSoftLabelAssigner:
  def __init__(self, soft_center_radius=3.0, topk=13, iou_weight=3.0):
    self.soft_center_radius = soft_center_radius
    self.topk = topk
    self.iou_weight = iou_weight

  def assign(self, priors, decoded_bboxes, pred_scores, gt_bboxes, gt_labels):
    """→ (assigned_gt_inds (N,) 1-based, 0 = background; max_overlaps (N,); labels (N,))."""
    num_gt = gt_bboxes.size(0)
    num_bboxes = decoded_bboxes.size(0)
    assigned_gt_inds = decoded_bboxes.new_full((num_bboxes,), 0, dtype=torch.long)
    prior_center = priors[:, :2]
    lt_ = prior_center[:, None] - gt_bboxes[:, :2]
    rb_ = gt_bboxes[:, 2:] - prior_center[:, None]
    deltas = torch.cat([lt_, rb_], dim=-1)
    is_in_gts = deltas.min(dim=-1).values > 0
    valid_mask = is_in_gts.sum(dim=1) > 0
    valid_decoded_bbox = decoded_bboxes[valid_mask]
    valid_pred_scores = pred_scores[valid_mask]
    num_valid = valid_decoded_bbox.size(0)
    if num_gt == 0 or num_bboxes == 0 or num_valid == 0:
      max_overlaps = decoded_bboxes.new_zeros((num_bboxes,))
      assigned_labels = decoded_bboxes.new_full((num_bboxes,), -1, dtype=torch.long)
      return assigned_gt_inds, max_overlaps, assigned_labels
    gt_center = (gt_bboxes[:, :2] + gt_bboxes[:, 2:]) / 2.0
    valid_prior = priors[valid_mask]
    strides = valid_prior[:, 2]
    distance = (valid_prior[:, None, :2] - gt_center[None, :, :]).pow(2).sum(-1).sqrt() / \
        strides[:, None]
    soft_center_prior = torch.pow(10, distance - self.soft_center_radius)
    pairwise_ious = bbox_overlaps(valid_decoded_bbox, gt_bboxes)
    iou_cost = -torch.log(pairwise_ious + EPS) * self.iou_weight
    gt_onehot_label = F.one_hot(gt_labels.to(torch.int64), pred_scores.shape[-1]).float() \
        .unsqueeze(0).repeat(num_valid, 1, 1)
    valid_pred_scores = valid_pred_scores.unsqueeze(1).repeat(1, num_gt, 1)
    soft_label = gt_onehot_label * pairwise_ious[..., None]
    scale_factor = soft_label - valid_pred_scores.sigmoid()
    soft_cls_cost = F.binary_cross_entropy_with_logits(
        valid_pred_scores, soft_label, reduction="none") * scale_factor.abs().pow(2.0)
    soft_cls_cost = soft_cls_cost.sum(dim=-1)
    cost_matrix = soft_cls_cost + iou_cost + soft_center_prior
    matched_pred_ious, matched_gt_inds = self.dynamic_k_matching(
        cost_matrix, pairwise_ious, num_gt, valid_mask)
    assigned_gt_inds[valid_mask] = matched_gt_inds + 1
    assigned_labels = assigned_gt_inds.new_full((num_bboxes,), -1)
    assigned_labels[valid_mask] = gt_labels[matched_gt_inds].long()
    max_overlaps = assigned_gt_inds.new_full((num_bboxes,), -INF, dtype=torch.float32)
    max_overlaps[valid_mask] = matched_pred_ious
    return assigned_gt_inds, max_overlaps, assigned_labels

  def dynamic_k_matching(self, cost, pairwise_ious, num_gt, valid_mask):
    matching_matrix = torch.zeros_like(cost, dtype=torch.uint8)
    candidate_topk = min(self.topk, pairwise_ious.size(0))
    topk_ious, _ = torch.topk(pairwise_ious, candidate_topk, dim=0)
    dynamic_ks = torch.clamp(topk_ious.sum(0).int(), min=1)
    for gt_idx in range(num_gt):
      _, pos_idx = torch.topk(cost[:, gt_idx], k=dynamic_ks[gt_idx], largest=False)
      matching_matrix[:, gt_idx][pos_idx] = 1
    prior_match_gt_mask = matching_matrix.sum(1) > 1
    if prior_match_gt_mask.sum() > 0:
      cost_min, cost_argmin = torch.min(cost[prior_match_gt_mask, :], dim=1)
      matching_matrix[prior_match_gt_mask, :] *= 0
      matching_matrix[prior_match_gt_mask, cost_argmin] = 1
    fg_mask_inboxes = matching_matrix.sum(1) > 0
    valid_mask[valid_mask.clone()] = fg_mask_inboxes
    matched_gt_inds = matching_matrix[fg_mask_inboxes, :].argmax(1)
    matched_pred_ious = (matching_matrix * pairwise_ious).sum(1)[fg_mask_inboxes]
    return matched_pred_ious, matched_gt_inds


def weight_reduce_loss(loss, weight=None, reduction="mean", avg_factor=None):
  if weight is not None:
    loss = loss * weight
  if avg_factor is None:
    return loss.mean() if reduction == "mean" else loss.sum()
  eps = torch.finfo(torch.float32).eps
  return loss.sum() / (avg_factor + eps)


def quality_focal_loss(pred, target, beta=2.0):
  label, score = target
  pred_sigmoid = pred.sigmoid()
  scale_factor = pred_sigmoid
  zerolabel = scale_factor.new_zeros(pred.shape)
  loss = F.binary_cross_entropy_with_logits(pred, zerolabel, reduction="none") * \
      scale_factor.pow(beta)
  bg_class_ind = pred.size(1)
  pos = ((label >= 0) & (label < bg_class_ind)).nonzero().squeeze(1)
  pos_label = label[pos].long()
  scale_factor = score[pos] - pred_sigmoid[pos, pos_label]
  loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
      pred[pos, pos_label], score[pos], reduction="none") * scale_factor.abs().pow(beta)
  return loss.sum(dim=1, keepdim=False)


def qfl_module(pred, target, weight, avg_factor, beta=2.0, loss_weight=1.0):
  """QualityFocalLoss(use_sigmoid=True, beta, reduction='mean').forward."""
  return loss_weight * weight_reduce_loss(quality_focal_loss(pred, target, beta), weight,
                                          "mean", avg_factor)


def giou_module(pred, target, weight, avg_factor, eps=1e-6, loss_weight=2.0):
  """GIoULoss(eps=1e-6, loss_weight).forward."""
  if weight is not None and not torch.any(weight > 0):
    if pred.dim() == weight.dim() + 1:
      weight = weight.unsqueeze(1)
    return (pred * weight).sum()
  loss = 1 - bbox_overlaps(pred, target, mode="giou", is_aligned=True, eps=eps)
  return loss_weight * weight_reduce_loss(loss, weight, "mean", avg_factor)


def get_targets_single(assigner, cls_scores, bbox_preds, priors, gt_bboxes, gt_labels,
                       num_classes):
  """_get_targets_single (all priors inside: allowed_border=-1) with the PseudoSampler."""
  inds, max_overlaps, _ = assigner.assign(priors, bbox_preds, cls_scores, gt_bboxes, gt_labels)
  n = priors.shape[0]
  bbox_targets = torch.zeros_like(priors)
  labels = priors.new_full((n,), num_classes, dtype=torch.long)
  label_weights = priors.new_zeros(n, dtype=torch.float)
  assign_metrics = priors.new_zeros(n, dtype=torch.float)
  pos_inds = torch.nonzero(inds > 0, as_tuple=False).squeeze(-1).unique()
  neg_inds = torch.nonzero(inds == 0, as_tuple=False).squeeze(-1).unique()
  pos_assigned_gt_inds = inds[pos_inds] - 1
  if len(pos_inds) > 0:
    bbox_targets[pos_inds, :] = gt_bboxes[pos_assigned_gt_inds]
    labels[pos_inds] = gt_labels[pos_assigned_gt_inds]
    label_weights[pos_inds] = 1.0
  if len(neg_inds) > 0:
    label_weights[neg_inds] = 1.0
  for gt_inds in torch.unique(pos_assigned_gt_inds):
    gt_class_inds = pos_inds[pos_assigned_gt_inds == gt_inds]
    assign_metrics[gt_class_inds] = max_overlaps[gt_class_inds]
  return labels, label_weights, bbox_targets, assign_metrics, inds


def loss_by_feat(cls_scores, bbox_preds, priors, level_sizes, gts, num_classes,
                 assigner=None):
  """RTMDetHead.loss_by_feat on flattened predictions.

  Args:
    cls_scores: (B, N, C) logits; bbox_preds: (B, N, 4) decoded xyxy boxes; priors (N, 4).
    level_sizes: priors per level (to split as images_to_levels does).
    gts: per image (boxes (G_i, 4), labels (G_i,)).

  Returns:
    (loss_cls, loss_bbox, per-image assigned_gt_inds (B, N), per-image metrics (B, N)).
  """
  assigner = assigner or DynamicSoftLabelAssigner()
  targets = [get_targets_single(assigner, cls_scores[i].detach(), bbox_preds[i].detach(), priors,
                                gts[i][0], gts[i][1], num_classes)
             for i in range(cls_scores.shape[0])]
  labels, label_weights, bbox_targets, metrics, inds = (torch.stack(t) for t in zip(*targets))
  losses_cls, losses_bbox, cls_avg, bbox_avg = [], [], [], []
  start = 0
  for size in level_sizes:
    sl = slice(start, start + size)
    start += size
    cls_score = cls_scores[:, sl].reshape(-1, num_classes)
    bbox_pred = bbox_preds[:, sl].reshape(-1, 4)
    bbox_target = bbox_targets[:, sl].reshape(-1, 4)
    label = labels[:, sl].reshape(-1)
    metric = metrics[:, sl].reshape(-1)
    weight = label_weights[:, sl].reshape(-1)
    losses_cls.append(qfl_module(cls_score, (label, metric), weight, avg_factor=1.0))
    pos_inds = ((label >= 0) & (label < num_classes)).nonzero().squeeze(1)
    if len(pos_inds) > 0:
      pos_weight = metric[pos_inds]
      losses_bbox.append(giou_module(bbox_pred[pos_inds], bbox_target[pos_inds],
                                     weight=pos_weight, avg_factor=1.0))
    else:
      losses_bbox.append(bbox_pred.sum() * 0)
      pos_weight = bbox_target.new_tensor(0.)
    cls_avg.append(metric.sum())
    bbox_avg.append(pos_weight.sum())
  cls_avg_factor = sum(cls_avg).clamp_(min=1).item()
  bbox_avg_factor = sum(bbox_avg).clamp_(min=1).item()
  loss_cls = sum(x / cls_avg_factor for x in losses_cls)
  loss_bbox = sum(x / bbox_avg_factor for x in losses_bbox)
  return loss_cls, loss_bbox, inds, metrics
