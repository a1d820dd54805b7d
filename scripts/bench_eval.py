"""Evaluation throughput on COCO-val-sized synthetic data (random weights; speed only).

  python scripts/bench_eval.py                       # 5,000 images, ~104k detector boxes
  python scripts/bench_eval.py --num-images 20       # a CPU-sized run

Writes (once, cached in --data-dir) JPEG images of 640x480 and COCO-format ground truth and
detector files with the COCO val2017 detector-box density (104,125 boxes / 5,000 images), then
measures:
  1. forward + flip: the jitted predict function (normalise, 2B forward, flip back, decode) on
     a batch already on the device, in boxes/s;
  2. the input pipeline alone (decode each image once per batch, crop every box), boxes/s;
  3. end to end: `evaluate.evaluate_model` = read annotations + pipeline + inference + rescoring
     + OKS-NMS + COCO eval, wall seconds and boxes/s.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import cv2
import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BOXES_PER_IMAGE = 104125 / 5000  # COCO val2017 with the AP 56.4 detector file


def make_data(root: pathlib.Path, num_images: int, seed: int = 0) -> pathlib.Path:
  """Synthetic COCO-style set: images, person_keypoints json, detections json."""
  marker = root / f"done_{num_images}"
  if marker.exists():
    return root
  rng = np.random.default_rng(seed)
  (root / "images").mkdir(parents=True, exist_ok=True)
  images, anns, dets = [], [], []
  for i in range(num_images):
    image_id = i + 1
    # Low-frequency colour field + texture: JPEG sizes close to real photos (~100-200 kB).
    base = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (640, 480),
                      interpolation=cv2.INTER_CUBIC)
    img = cv2.add(base, rng.integers(0, 40, (480, 640, 3), dtype=np.uint8))
    name = f"{image_id:012d}.jpg"
    cv2.imwrite(str(root / "images" / name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    images.append({"id": image_id, "file_name": name, "width": 640, "height": 480})
    for _ in range(rng.poisson(1.3)):
      w, h = rng.uniform(40, 300), rng.uniform(80, 400)
      x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
      kp = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), np.full(17, 2)], 1)
      anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                   "bbox": [x, y, w, h], "area": w * h * 0.6, "num_keypoints": 17,
                   "keypoints": kp.reshape(-1).round(1).tolist()})
    n_det = int(BOXES_PER_IMAGE) + int(rng.random() < BOXES_PER_IMAGE % 1)
    for _ in range(n_det):
      w, h = rng.uniform(10, 400), rng.uniform(20, 470)
      dets.append({"image_id": image_id, "category_id": 1, "score": float(rng.random()),
                   "bbox": [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)),
                            float(w), float(h)]})
  cats = [{"id": 1, "name": "person", "keypoints": [], "skeleton": []}]
  (root / "gt.json").write_text(json.dumps({"images": images, "annotations": anns,
                                            "categories": cats}))
  (root / "dets.json").write_text(json.dumps(dets))
  marker.write_text("ok")
  return root


def random_model(path: pathlib.Path, depth: int) -> pathlib.Path:
  """A saved PoseResNet with random weights (no init compile: shapes via eval_shape)."""
  from sbpose_jax.weights import saved_model
  if saved_model.is_saved_model(path):
    return path
  meta = saved_model.ModelMeta(depth=depth, num_joints=17, dataset="coco", source="random")
  saved_model.save_model(path, saved_model.random_variables(meta, (256, 192)), meta)
  return path


def bench_forward(cfg, model_dir, batch_size: int, iters: int) -> float:
  """boxes/s of the jitted predict function on a device-resident batch (async, one sync)."""
  import jax
  from sbpose_jax.inference import pose as inference
  from sbpose_jax.weights import saved_model
  variables, meta = saved_model.load_model(model_dir)
  model = saved_model.build_model(meta, cfg.model.dtype, cfg.model.deconv_impl)
  predict = inference.make_predict_fn(model, variables, cfg, meta)
  w, h = cfg.data.input_size
  rng = np.random.default_rng(0)
  batch = dict(image=jax.device_put(rng.integers(0, 256, (batch_size, h, w, 3), np.uint8)),
               center=np.full((batch_size, 2), 300, np.float32),
               scale=np.full((batch_size, 2), 1.5, np.float32))
  jax.block_until_ready(predict(batch))          # compile
  jax.block_until_ready(predict(batch))
  t = time.perf_counter()
  outs = [predict(batch) for _ in range(iters)]
  jax.block_until_ready(outs)
  return iters * batch_size / (time.perf_counter() - t)


def bench_pipeline(cfg, batch_size: int, max_batches: int) -> float:
  from sbpose_jax.data import pipeline, readers
  records = readers.read_split(cfg.data, "val")
  t, n = time.perf_counter(), 0
  for i, b in enumerate(pipeline.eval_dataset(records, cfg, batch_size)):
    n += int(b["mask"].sum())
    if i + 1 >= max_batches:
      break
  return n / (time.perf_counter() - t)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--num-images", type=int, default=5000)
  p.add_argument("--data-dir", default="/tmp/sbpose_bench_eval")
  p.add_argument("--depth", type=int, default=50)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--workers", type=int, default=None, help="grain workers (config default 8)")
  p.add_argument("--dtype", default=None, help="compute dtype (config default bfloat16)")
  p.add_argument("--forward-iters", type=int, default=20)
  p.add_argument("--skip", default="", help="comma list of forward,pipeline,e2e to skip")
  args = p.parse_args(argv)
  import jax
  from sbpose_jax.commands import config as config_lib
  from sbpose_jax.commands import evaluate

  root = make_data(pathlib.Path(args.data_dir) / f"n{args.num_images}", args.num_images)
  model_dir = random_model(pathlib.Path(args.data_dir) / f"res{args.depth}", args.depth)
  overrides = [f"--config.data.root={root}", "--config.data.val_ann=gt.json",
               "--config.data.val_images=images", "--config.data.det_file=dets.json",
               "--config.data.use_gt_bbox=False", f"--config.test.batch_size={args.batch_size}"]
  if args.workers is not None:
    overrides.append(f"--config.data.num_workers={args.workers}")
  if args.dtype:
    overrides.append(f"--config.model.dtype='{args.dtype}'")
  cfg, eval_type = config_lib.eval_config(config_lib.load("coco_res50", overrides))
  skip = set(filter(None, args.skip.split(",")))
  dev = jax.devices()[0]
  out = dict(device=f"{dev.platform}:{dev.device_kind}", num_images=args.num_images,
             depth=args.depth, batch_size=args.batch_size, dtype=cfg.model.dtype,
             workers=cfg.data.num_workers)
  if "forward" not in skip:
    out["forward_flip_boxes_per_s"] = round(bench_forward(cfg, model_dir, args.batch_size,
                                                          args.forward_iters), 1)
    print(json.dumps(out), flush=True)
  if "pipeline" not in skip:
    out["pipeline_boxes_per_s"] = round(bench_pipeline(cfg, args.batch_size, 50), 1)
    print(json.dumps(out), flush=True)
  if "e2e" not in skip:
    t = time.perf_counter()
    metrics = evaluate.evaluate_model(cfg, eval_type, model_dir, root / "out", progress=True)
    wall = time.perf_counter() - t
    n = sum(1 for _ in json.loads((root / "dets.json").read_text()))
    out.update(num_boxes=n, end_to_end_s=round(wall, 1), end_to_end_boxes_per_s=round(n / wall, 1),
               AP=round(metrics["AP"], 4))
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
