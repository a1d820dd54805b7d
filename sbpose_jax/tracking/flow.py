"""Optical flow between frames (OpenCV DIS) and joints/boxes moved by it.

The paper moved each previous pose's joints by FlowNet2-S flow; we use `cv2.DISOpticalFlow`
(CPU, no weights to download). Flow is computed on grey frames, optionally downscaled so that the
longer side is at most `max_side` pixels (the vectors are scaled back).
"""
from __future__ import annotations

import cv2
import numpy as np

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
           "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


class DisFlow:
  """Dense flow prev → next: `DisFlow(preset)(prev_bgr, next_bgr)` → (H, W, 2) float32."""

  def __init__(self, preset: str = "fast", max_side: int = 640):
    if preset not in PRESETS:
      raise ValueError(f"flow preset must be one of {sorted(PRESETS)}, got {preset!r}")
    self.dis = cv2.DISOpticalFlow_create(PRESETS[preset])
    self.max_side = int(max_side)

  def _grey(self, img: np.ndarray) -> tuple[np.ndarray, float]:
    g = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    f = 1.0
    if self.max_side > 0 and max(g.shape) > self.max_side:
      f = self.max_side / max(g.shape)
      g = cv2.resize(g, (round(g.shape[1] * f), round(g.shape[0] * f)),
                     interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(g), f

  def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    a, f = self._grey(prev)
    b, _ = self._grey(nxt)
    flow = self.dis.calc(a, b, None)
    if f != 1.0:
      flow = cv2.resize(flow, (prev.shape[1], prev.shape[0]),
                        interpolation=cv2.INTER_LINEAR) / f
    return flow


def propagate_joints(kpts: np.ndarray, flow: np.ndarray) -> np.ndarray:
  """Moves joints by the flow at their (rounded, clipped) positions.

  Args:
    kpts: (N, K, 3) x, y, score in the previous frame.
    flow: (H, W, 2) flow previous → current.
  Returns:
    (N, K, 3), scores unchanged.
  """
  out = np.array(kpts, np.float32, copy=True)
  if out.size == 0:
    return out
  h, w = flow.shape[:2]
  xi = np.clip(np.rint(out[..., 0]), 0, w - 1).astype(int)
  yi = np.clip(np.rint(out[..., 1]), 0, h - 1).astype(int)
  out[..., :2] += flow[yi, xi]
  return out


def boxes_around(kpts: np.ndarray, kpt_thr: float, enlarge: float = 0.15,
                 min_joints: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Box around each pose's joints above `kpt_thr`, grown by `enlarge` (0.15: 15% wider/taller).

  Args:
    kpts: (N, K, 3).
  Returns:
    boxes (M, 4) x1 y1 x2 y2 and the (M,) indices into N of the poses with >= min_joints joints.
  """
  boxes, keep = [], []
  for i, k in enumerate(np.asarray(kpts)):
    v = k[:, 2] > kpt_thr
    if v.sum() < max(min_joints, 1):
      continue
    lo, hi = k[v, :2].min(0), k[v, :2].max(0)
    c, half = (lo + hi) / 2, (hi - lo) / 2 * (1 + enlarge)
    boxes.append(np.concatenate([c - half, c + half]))
    keep.append(i)
  return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(keep, int)
