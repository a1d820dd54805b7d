"""Time the COCO evaluator's CPU side at COCO-val size: rescoring + OKS-NMS + results, then AP.

5,000 images, 6,352 GT people (COCO val2017 has 6,352 with keypoints), 104,125 predicted boxes
(the size of the AP-56.4 detection file), all synthetic. No model, no GPU.

  python scripts/bench_metrics.py [--backends faster_coco_eval xtcocotools pycocotools]
"""
import argparse
import json
import os
import tempfile
import time
import types

import numpy as np

from sbpose_jax.evaluators import EVALUATORS, coco


def synthetic(num_images=5000, num_gt=6352, num_boxes=104125, k=17, seed=0):
  """GT dict plus (records, keypoints, scale) of predictions scattered around the GT people."""
  rng = np.random.default_rng(seed)
  gt_img = rng.integers(0, num_images, num_gt)
  centers = rng.uniform(100, 500, (num_gt, 2))
  sizes = rng.uniform(30, 300, (num_gt, 1))
  joints = centers[:, None] + rng.normal(0, 0.3, (num_gt, k, 2)) * sizes[:, None]
  anns = [{"id": g + 1, "image_id": int(gt_img[g]), "category_id": 1, "iscrowd": 0,
           "keypoints": np.concatenate([joints[g], np.full((k, 1), 2.0)], 1).ravel().tolist(),
           "num_keypoints": k, "area": float(sizes[g, 0] ** 2 * 0.6),
           "bbox": [*(centers[g] - sizes[g] / 2), float(sizes[g, 0]), float(sizes[g, 0])]}
          for g in range(num_gt)]
  gt = {"images": [{"id": i, "width": 640, "height": 480} for i in range(num_images)],
        "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
  src = np.sort(rng.integers(0, num_gt, num_boxes))
  src = src[np.argsort(gt_img[src], kind="stable")]
  kpts = np.concatenate([joints[src] + rng.normal(0, 0.08, (num_boxes, k, 2)) * sizes[src, None],
                         rng.uniform(0, 1, (num_boxes, k, 1))], -1).astype(np.float32)
  records = types.SimpleNamespace(image_ids=np.arange(num_images), image_index=gt_img[src])
  scale = np.repeat(sizes[src] * 1.25 / 200, 2, 1)
  return gt, records, kpts, scale


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--backends", nargs="+", default=["faster_coco_eval"])
  args = parser.parse_args()
  gt, records, kpts, scale = synthetic()
  n = len(kpts)
  with tempfile.TemporaryDirectory() as tmp:
    ann = os.path.join(tmp, "gt.json")
    with open(ann, "w") as f:
      json.dump(gt, f)
    for backend in args.backends:
      ev = EVALUATORS["coco"](records, None, ann_file=ann, backend=backend)
      for s in range(0, n, 1024):
        sl = slice(s, min(n, s + 1024))
        ev.process(dict(index=np.arange(n)[sl], keypoints=kpts[sl], scale=scale[sl],
                        center=np.zeros((len(kpts[sl]), 2)), bbox_score=np.ones(len(kpts[sl]))))
      t0 = time.perf_counter()
      results = ev.results()
      t1 = time.perf_counter()
      metrics = coco.score_results("coco", gt, results, backend=backend)
      t2 = time.perf_counter()
      print(f"{backend}: {n} boxes, {len(results)} after OKS-NMS; rescoring + OKS-NMS + results "
            f"{t1 - t0:.2f} s; metric {t2 - t1:.2f} s (AP {metrics['AP']:.4f})")


if __name__ == "__main__":
  main()
