"""Draw tracked skeletons: one colour per track id, the id written by the head."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np


def track_colour(track_id: int) -> tuple[int, int, int]:
  """A stable, well-separated BGR colour per id (golden-ratio hues)."""
  h = (track_id * 0.618033988749895) % 1.0
  r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
  return int(b * 255), int(g * 255), int(r * 255)


def draw_tracks(image_bgr: np.ndarray, people: list[dict], skeleton, kpt_thr: float = 0.3
                ) -> np.ndarray:
  """Copy of the frame with each person's skeleton in its track colour and 'id N' above it.

  people: [{track_id, keypoints (K, 3)}]; skeleton: (joint, joint) pairs.
  """
  img = np.ascontiguousarray(image_bgr).copy()
  thick = max(2, round(max(img.shape[:2]) / 400))
  for p in people:
    c = track_colour(p["track_id"])
    k = np.asarray(p["keypoints"], np.float64)
    vis = k[:, 2] > kpt_thr
    for a, b in skeleton:
      if vis[a] and vis[b]:
        cv2.line(img, tuple(np.rint(k[a, :2]).astype(int)), tuple(np.rint(k[b, :2]).astype(int)),
                 c, thick, cv2.LINE_AA)
    for x, y in k[vis, :2]:
      cv2.circle(img, (int(round(x)), int(round(y))), thick + 1, c, -1, cv2.LINE_AA)
    if vis.any():
      x, y = k[vis, 0].min(), k[vis, 1].min()
      org = (int(x), max(int(y) - 8, 12))
      scale = 0.5 * thick
      cv2.putText(img, f"id {p['track_id']}", org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                  thick + 2, cv2.LINE_AA)
      cv2.putText(img, f"id {p['track_id']}", org, cv2.FONT_HERSHEY_SIMPLEX, scale, c, thick,
                  cv2.LINE_AA)
  return img
