"""PoseTrack18 results of a tracked video: the input's images and one annotation per person."""
from __future__ import annotations

import numpy as np


def results_json(source, info, frames_out: list[list[dict]], indices=None) -> dict:
  """PoseTrack18 results: the input's images (ids, file names) and one annotation per person.

  `indices`: each tracked frame's position in the input (default 0, 1, ...: none skipped).
  """
  cat = {"supercategory": "person", "id": 1, "name": "person",
         "keypoints": list(info.joint_names), "skeleton": [[a + 1, b + 1] for a, b in
                                                           info.skeleton]}
  images, anns = [], []
  indices = range(len(frames_out)) if indices is None else indices
  for i, people in zip(indices, frames_out):
    if source.images_meta:
      im = source.images_meta[i]
      images.append({k: im[k] for k in ("id", "file_name", "frame_id", "vid_id") if k in im})
    else:
      images.append({"id": i, "file_name": source.files[i] if source.files
                     else f"frame_{i:06d}.jpg", "frame_id": i})
    for p in people:
      k = np.asarray(p["keypoints"], np.float64)
      b = np.asarray(p["box"], np.float64)
      anns.append({"image_id": images[-1]["id"], "category_id": 1, "track_id": p["track_id"],
                   "keypoints": np.round(k, 2).reshape(-1).tolist(),
                   "scores": np.round(k[:, 2], 4).tolist(), "score": round(p["score"], 4),
                   "bbox": np.round([b[0], b[1], b[2] - b[0], b[3] - b[1]], 2).tolist()})
  return {"images": images, "annotations": anns, "categories": [cat]}
