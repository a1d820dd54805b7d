"""One-Euro filter (Casiez et al. 2012) for joint coordinates, one state per track id.

As MMPose 0.x's optional `use_one_euro`: a low-pass filter whose cut-off rises with speed, so
slow poses are steadied and fast ones are not delayed.
"""
from __future__ import annotations

import numpy as np


def _alpha(cutoff: float, dt: float) -> float:
  tau = 1.0 / (2 * np.pi * cutoff)
  return 1.0 / (1.0 + tau / dt)


class OneEuro:
  """Filters (K, 2) points sampled every `1 / fps` seconds."""

  def __init__(self, fps: float = 30.0, min_cutoff: float = 1.0, beta: float = 0.007,
               d_cutoff: float = 1.0):
    self.dt = 1.0 / fps
    self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
    self.x = None
    self.dx = None

  def __call__(self, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if self.x is None:
      self.x, self.dx = x.copy(), np.zeros_like(x)
      return x.copy()
    dx = (x - self.x) / self.dt
    a_d = _alpha(self.d_cutoff, self.dt)
    self.dx = a_d * dx + (1 - a_d) * self.dx
    cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
    a = 1.0 / (1.0 + (1.0 / (2 * np.pi * cutoff)) / self.dt)
    self.x = a * x + (1 - a) * self.x
    return self.x.copy()


class PoseSmoother:
  """One filter per track id; `smooth(track_ids, kpts)` filters the xy of (N, K, 3) in place."""

  def __init__(self, **kwargs):
    self.kwargs = kwargs
    self.filters: dict[int, OneEuro] = {}

  def smooth(self, track_ids, kpts: np.ndarray) -> np.ndarray:
    out = np.array(kpts, np.float32, copy=True)
    for n, t in enumerate(track_ids):
      if t < 0:
        continue
      f = self.filters.setdefault(int(t), OneEuro(**self.kwargs))
      out[n, :, :2] = f(out[n, :, :2])
    return out

  def forget(self, live_ids) -> None:
    live = set(int(t) for t in live_ids)
    for t in [t for t in self.filters if t not in live]:
      del self.filters[t]
