"""Pose test-time post-processing: rescoring and OKS-NMS (pure numpy).

Shared by evaluation, prediction, tracking and the API.

Follows MMPose 0.x `TopDownCocoDataset.evaluate` and `core/post_processing/nms.py`
(docs/reference.md §5.3): instance score = mean of the joint maxvals above `vis_thr`
times the box score; OKS-NMS per image at `oks_thr` with the crop-box areas (200·s)².
"""
from __future__ import annotations

import numpy as np

from sbpose_jax import geometry


def rescore(maxvals: np.ndarray, box_scores: np.ndarray, vis_thr: float = 0.2) -> np.ndarray:
  """Instance scores: mean{maxval_k : maxval_k > vis_thr} × box score (0 if no joint passes).

  Args:
    maxvals: (N, K) joint confidences.
    box_scores: (N,) detector scores (1 for ground-truth boxes).
    vis_thr: strict threshold on maxvals.
  Returns:
    (N,) float64 scores.
  """
  maxvals = np.asarray(maxvals, np.float64)
  valid = maxvals > vis_thr
  count = valid.sum(axis=1)
  total = np.where(valid, maxvals, 0.0).sum(axis=1)
  kpt_score = np.where(count > 0, total / np.maximum(count, 1), 0.0)
  return kpt_score * np.asarray(box_scores, np.float64)


def crop_areas(scale_wh: np.ndarray) -> np.ndarray:
  """(N, 2) crop scale (size / 200 px) → (N,) float32 crop area, as MMPose stores it."""
  return np.prod(np.asarray(scale_wh, np.float32) * np.float32(geometry.PIXEL_STD), axis=1)


def oks_iou(g: np.ndarray, d: np.ndarray, area_g: float, area_d: np.ndarray,
            sigmas: np.ndarray) -> np.ndarray:
  """OKS of one pose against several, over all K joints (MMPose `oks_iou`, vis_thr=None).

  Args:
    g: (K, 3) reference pose (x, y, score).
    d: (M, K, 3) other poses.
    area_g: reference area.
    area_d: (M,) areas of the others.
    sigmas: (K,) per-joint OKS sigmas.
  Returns:
    (M,) float32 OKS values.
  """
  variances = (np.asarray(sigmas, np.float64) * 2) ** 2
  dx = d[..., 0] - g[None, :, 0]
  dy = d[..., 1] - g[None, :, 1]
  # Same operation order and dtypes as the reference (float32 distances, float64 division).
  mean_area = (np.float32(area_g) + np.asarray(area_d, np.float32)) / np.float32(2)
  e = (dx ** 2 + dy ** 2) / variances / (mean_area[:, None] + np.spacing(1)) / 2
  if e.shape[1] == 0:
    return np.zeros(len(d), np.float32)
  return (np.exp(-e).sum(axis=1) / e.shape[1]).astype(np.float32)


def pairwise_oks(keypoints: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
  """(N, N) float32 OKS between all poses of one image; entry [i, j] = oks_iou(i, [j])."""
  k = np.asarray(keypoints)
  variances = (np.asarray(sigmas, np.float64) * 2) ** 2
  dx = k[None, :, :, 0] - k[:, None, :, 0]
  dy = k[None, :, :, 1] - k[:, None, :, 1]
  a = np.asarray(areas, np.float32)
  mean_area = (a[:, None] + a[None, :]) / np.float32(2)
  e = (dx ** 2 + dy ** 2) / variances / (mean_area[..., None] + np.spacing(1)) / 2
  if e.shape[-1] == 0:
    return np.zeros(e.shape[:2], np.float32)
  return (np.exp(-e).sum(axis=-1) / e.shape[-1]).astype(np.float32)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, thr: float,
            sigmas: np.ndarray, max_matrix: int = 256) -> np.ndarray:
  """Greedy OKS-NMS: keep the best, drop the others with OKS > thr, repeat.

  Args:
    keypoints: (N, K, 3) poses of one image.
    scores: (N,) instance scores.
    areas: (N,) areas used in the OKS denominator (crop-box areas).
    thr: OKS threshold (0.9 in the reference); poses with OKS <= thr survive.
    sigmas: (K,) OKS sigmas.
    max_matrix: up to this many poses the OKS matrix is computed at once (same values).
  Returns:
    (M,) int indices of the kept poses, best first.
  """
  keypoints = np.asarray(keypoints)
  areas = np.asarray(areas, np.float32)
  # The reference's exact ordering call (ties resolve the same way).
  order = np.asarray(scores).argsort()[::-1]
  matrix = pairwise_oks(keypoints, areas, sigmas) if len(order) <= max_matrix else None
  if matrix is not None and np.count_nonzero(matrix > thr) == np.count_nonzero(
      np.diagonal(matrix) > thr):
    return order.astype(np.int64)      # no pair overlaps: nothing to suppress
  keep = []
  while order.size > 0:
    i = order[0]
    keep.append(i)
    if matrix is not None:
      ovr = matrix[i, order[1:]]
    else:
      ovr = oks_iou(keypoints[i], keypoints[order[1:]], areas[i], areas[order[1:]], sigmas)
    order = order[np.nonzero(ovr <= thr)[0] + 1]
  return np.asarray(keep, np.int64)


def rescore_and_nms(image_idx: np.ndarray, keypoints: np.ndarray, box_scores: np.ndarray,
                    areas: np.ndarray, sigmas: np.ndarray, vis_thr: float = 0.2,
                    oks_thr: float = 0.9, use_nms: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Rescoring, then OKS-NMS per image; images in order of first appearance.

  Args:
    image_idx: (N,) image of each instance (any integer key).
    keypoints: (N, K, 3) image x, y, maxval.
    box_scores: (N,) detector scores.
    areas: (N,) crop-box areas.
    sigmas: (K,) OKS sigmas of the dataset.
    vis_thr, oks_thr: thresholds of §5.3.
    use_nms: False skips NMS (keeps every instance).
  Returns:
    kept: (M,) indices into the N instances, grouped by image, best first within an image.
    scores: (N,) rescored instance scores (for all instances).
  """
  scores = rescore(keypoints[..., 2], box_scores, vis_thr)
  image_idx = np.asarray(image_idx)
  _, first, inverse = np.unique(image_idx, return_index=True, return_inverse=True)
  by_image = np.argsort(inverse, kind="stable")            # rows of each image, in row order
  bounds = np.cumsum(np.bincount(inverse.ravel()))
  groups = np.split(by_image, bounds[:-1])
  kept = []
  for g in np.argsort(first, kind="stable"):               # images by first appearance
    members = groups[g]
    if use_nms:
      members = members[oks_nms(keypoints[members], scores[members], areas[members], oks_thr,
                                sigmas)]
    kept.append(members)
  kept = np.concatenate(kept) if kept else np.zeros(0, np.int64)
  return kept, scores
