"""Similarities between poses and greedy id assignment (the paper's §3.3; MMPose 0.x rules).

* `iou`: box IoU between a current pose's box and a track's last box;
* `oks`: OKS between a current pose and a track's last pose (area = the track's box area);
* `flow`: the paper's flow-based pose similarity: OKS against the track's last pose moved by
  optical flow to the current frame (the tracker does the moving).
Greedy matching takes the most similar (pose, track) pair first, pairs at or below the threshold
(0.3) are never made.
"""
from __future__ import annotations

import numpy as np

SIMILARITIES = ("iou", "oks", "flow")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(N, 4), (M, 4) x1 y1 x2 y2 → (N, M) IoU."""
  a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
  union = area(a)[:, None] + area(b)[None] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def oks(kpts: np.ndarray, ref: np.ndarray, ref_areas: np.ndarray, sigmas: np.ndarray,
        kpt_thr: float = 0.0) -> np.ndarray:
  """COCO OKS between poses and reference poses, over the reference's joints above kpt_thr.

  Args:
    kpts: (N, K, 3) current poses; ref: (M, K, 3) reference poses; ref_areas: (M,) areas.
    sigmas: (K,) the dataset's OKS sigmas.
  Returns:
    (N, M) in [0, 1]; 0 where the reference has no joint above kpt_thr.
  """
  kpts, ref = np.asarray(kpts, np.float64), np.asarray(ref, np.float64)
  if len(kpts) == 0 or len(ref) == 0:
    return np.zeros((len(kpts), len(ref)))
  var = (2 * np.asarray(sigmas, np.float64)) ** 2                        # (K,)
  d2 = ((kpts[:, None, :, :2] - ref[None, :, :, :2]) ** 2).sum(-1)       # (N, M, K)
  area = np.maximum(np.asarray(ref_areas, np.float64), 1.0)
  e = d2 / var[None, None] / (area[None, :, None] + np.spacing(1)) / 2
  vis = ref[None, :, :, 2] > kpt_thr                                     # (1, M, K)
  n = vis.sum(-1)
  return np.where(n > 0, (np.exp(-e) * vis).sum(-1) / np.maximum(n, 1), 0.0)


def greedy_match(sim: np.ndarray, thr: float) -> list[tuple[int, int]]:
  """Pairs (row, column) taken highest similarity first, each row and column once, sim > thr."""
  sim = np.asarray(sim, np.float64)
  if sim.size == 0:
    return []
  order = np.argsort(-sim, axis=None, kind="stable")
  rows, cols = np.unravel_index(order, sim.shape)
  used_r, used_c, pairs = set(), set(), []
  for r, c in zip(rows, cols):
    if sim[r, c] <= thr:
      break
    if r in used_r or c in used_c:
      continue
    used_r.add(r)
    used_c.add(c)
    pairs.append((int(r), int(c)))
  return pairs


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> np.ndarray:
  """Indices of the boxes kept by greedy NMS (highest score first), in that order."""
  boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64)
  order = np.argsort(-scores, kind="stable")
  keep = []
  while order.size:
    i = order[0]
    keep.append(int(i))
    if order.size == 1:
      break
    iou = box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
    order = order[1:][iou <= iou_thr]
  return np.asarray(keep, int)


def similarity(kind: str, kpts: np.ndarray, boxes: np.ndarray, track_kpts: np.ndarray,
               track_boxes: np.ndarray, sigmas: np.ndarray, kpt_thr: float) -> np.ndarray:
  """(N, M) similarity of current poses/boxes to tracks (poses already flow-moved for 'flow')."""
  if kind not in SIMILARITIES:
    raise ValueError(f"similarity must be one of {SIMILARITIES}, got {kind!r}")
  if kind == "iou":
    return box_iou(boxes, track_boxes)
  tb = np.asarray(track_boxes, np.float64).reshape(-1, 4)
  areas = np.prod(np.clip(tb[:, 2:] - tb[:, :2], 0, None), axis=-1)
  return oks(kpts, track_kpts, areas, sigmas, kpt_thr)
