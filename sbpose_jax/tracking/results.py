"""PoseTrack18 results of a tracked video: the input's images and one annotation per person."""
from __future__ import annotations

import numpy as np


def results_json(source, info, frames_out: list[list[dict]], indices=None,
                 write_kpt_thr: float = 0.0) -> dict:
  """PoseTrack18 results: the input's images (ids, file names) and one annotation per person.

  `indices`: each tracked frame's position in the input (default 0, 1, ...: none skipped).
  `write_kpt_thr`: joints scored below it are written absent (`drop_joints`).

  A joint's `keypoints` third value is its confidence (the heatmap maximum); its `scores`
  entry, which poseval ranks the joints of every person by for AP, is that times the person's
  score (box score x mean joint score, the tracker's rescoring), so that the joints of a
  doubtful box rank after those of a sure one (with a detector's boxes on the synthetic clips:
  pose AP 84.9 instead of 82.9; docs/benchmarks.md, "The chain").
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
                   "scores": np.round(k[:, 2] * p["score"], 4).tolist(),
                   "score": round(p["score"], 4),
                   "bbox": np.round([b[0], b[1], b[2] - b[0], b[3] - b[1]], 2).tolist()})
  return drop_joints({"images": images, "annotations": anns, "categories": [cat]},
                     write_kpt_thr)


def drop_joints(results: dict, thr: float) -> dict:
  """PoseTrack18 results with every joint of confidence (`keypoints`' third value) below `thr`
  written absent (x = y = score = 0, the only absence poseval knows); people left without
  joints are dropped.

  poseval scores every joint written, whatever its score (poseval convert.py: a joint is absent
  only as x = y = 0 with score 0; evaluateTracking never reads scores): MOTA and precision
  count a low-score guess at an occluded joint as a false positive, where AP only ranks it
  last. Choosing which joints to write is the tracker's side of the protocol."""
  if thr <= 0:
    return results
  anns = []
  for a in results["annotations"]:
    k = np.asarray(a["keypoints"], np.float64).reshape(-1, 3).copy()
    s = np.asarray(a.get("scores", k[:, 2]), np.float64).copy()
    gone = k[:, 2] < thr
    if gone.all():
      continue
    k[gone], s[gone] = 0.0, 0.0
    anns.append(dict(a, keypoints=k.reshape(-1).tolist(), scores=s.tolist()))
  return dict(results, annotations=anns)
