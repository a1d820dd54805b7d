"""Renders augmented training samples, exactly as the training pipeline makes them, to PNG.

  python scripts/browse_dataset.py --config demo --num 16 --out /tmp/browse
  python scripts/browse_dataset.py --config coco_res50 --out /tmp/browse --config.data.root=...

Each cell shows the network input crop with the target joints (heatmap-space joints × stride,
weight-0 joints hidden; left green, right orange) and, beside it, the crop dimmed under the
target heatmaps (max over joints, colour-mapped). The caption gives the record row, flip and
rotation. With `--eval` it shows evaluation crops (no augmentation) with the record's joints.
A synthetic config (one with a `synthetic` section) generates its data first if needed.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from sbpose_jax.commands import config as config_lib  # noqa: E402
from sbpose_jax import geometry  # noqa: E402
from sbpose_jax import visualize  # noqa: E402
from sbpose_jax.data import pipeline  # noqa: E402
from sbpose_jax.data import readers  # noqa: E402
from sbpose_jax.data import synthetic  # noqa: E402


def _display(image: np.ndarray, colour_order: str, scale: int) -> np.ndarray:
  img = image if colour_order == "rgb" else image[..., ::-1]
  return cv2.resize(np.ascontiguousarray(img), None, fx=scale, fy=scale,
                    interpolation=cv2.INTER_NEAREST)


def _heatmap_overlay(crop: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Crop (H, W, 3) RGB darkened, with max-over-joints of target (Hh, Wh, K) colour-mapped."""
  heat = cv2.resize(target.max(-1), (crop.shape[1], crop.shape[0]),
                    interpolation=cv2.INTER_LINEAR)
  colour = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]
  a = np.clip(heat, 0, 1)[..., None] * 0.8
  return np.uint8(crop * 0.35 * (1 - a) + colour * a)


def _caption(img: np.ndarray, text: str) -> np.ndarray:
  bar = np.full((18, img.shape[1], 3), 24, np.uint8)
  cv2.putText(bar, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (235, 235, 235), 1,
              cv2.LINE_AA)
  return np.concatenate([bar, img], 0)


def train_cells(records, config, num: int, seed: int, scale: int) -> list[np.ndarray]:
  ds = pipeline.train_dataset(records, config, batch_size=num, seed=seed, num_workers=0,
                              extra_fields=("index", "flipped", "rotation"))
  batch = next(iter(ds))
  stride = np.asarray(config.data.input_size, np.float32) / np.asarray(
      config.data.heatmap_size, np.float32)
  cells = []
  for i in range(num):
    crop = _display(batch["image"][i], config.data.colour_order, scale)
    joints = batch["joints"][i].copy()
    joints[:, :2] = joints[:, :2] * stride * scale
    pose = visualize.draw_poses(crop, joints, records.dataset, kpt_thr=0.5, full_score=1.0)
    heat = _heatmap_overlay(crop, batch["target"][i])
    text = (f"#{int(batch['index'][i])} rot {float(batch['rotation'][i]):+.0f}"
            f"{' flip' if batch['flipped'][i] else ''}")
    cells.append(_caption(np.concatenate([pose, heat], 1), text))
  return cells


def eval_cells(records, config, num: int, scale: int) -> list[np.ndarray]:
  batch = next(iter(pipeline.eval_dataset(records, config, num, num_workers=0)))
  cells = []
  for i in np.flatnonzero(batch["mask"]):
    row = int(batch["index"][i])
    m = geometry.get_affine_transform(records.center_xy[row], records.scale_wh[row], 0.0,
                                      config.data.input_size)
    joints = np.concatenate([geometry.affine_points(records.joints_xy[row], m) * scale,
                             records.joints_vis[row][:, None]], 1)
    crop = _display(batch["image"][i], config.data.colour_order, scale)
    pose = visualize.draw_poses(crop, joints, records.dataset, kpt_thr=0.5, full_score=1.0)
    cells.append(_caption(pose, f"#{row} score {float(batch['bbox_score'][i]):.2f}"))
  return cells


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="config name (sbpose_jax/configs/NAME.py) or path")
  p.add_argument("--num", type=int, default=16, help="samples to render")
  p.add_argument("--out", required=True, help="output folder for the PNG")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval", action="store_true", help="evaluation crops (val split) instead")
  p.add_argument("--cols", type=int, default=None)
  args, overrides = p.parse_known_args(argv)
  config = config_lib.load(args.config, overrides)
  synthetic.ensure_from_config(config)
  split = "val" if args.eval else "train"
  records = readers.read_split(config.data, split)
  if len(records) == 0:
    raise SystemExit(f"no {split} records in {config.data.root}")
  num = min(args.num, len(records))
  scale = max(1, round(256 / config.data.input_size[1]))
  cells = (eval_cells(records, config, num, scale) if args.eval
           else train_cells(records, config, num, args.seed, scale))
  cols = args.cols or (4 if args.eval else int(np.ceil(np.sqrt(num) / 1.5)) or 1)
  grid = visualize.make_grid(cells, cols=cols)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"{config.name}_{split}.png"
  cv2.imwrite(str(path), grid[..., ::-1])
  print(f"wrote {path} ({len(cells)} samples of {len(records)} {split} records)")


if __name__ == "__main__":
  main()
