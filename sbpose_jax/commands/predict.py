"""Predict poses on your own images and draw them.

  python -m sbpose_jax.predict --config coco_res50 --checkpoint models/res50_coco_256x192 \
      photo.jpg more_photos/ --out-dir out/ [--boxes boxes.json] [--config.test.flip=False]

Without `--boxes` the whole image is one person box (fine for single-person photos). With it,
each image gets the boxes listed for it; the file is either a COCO detection-results list
(`image_id` matched to the image's numeric file stem, or a `file_name` field; `bbox` x, y, w, h;
optional `score`, `category_id` 1 = person) or a dict `{file name or stem: [[x, y, w, h(, score)],
...]}`. Writes out_dir/predictions.json (per image: instances with box, score and keypoints
[x, y, score] per joint) and out_dir/<image stem>.png with the skeletons drawn (joint score →
opacity). A video input (.mp4, .mkv, .avi, .mov, .webm, .m4v) gets one whole-frame box per frame
(a single person; `python -m sbpose_jax.track` follows several) and writes out_dir/<stem>.mp4 and
out_dir/<stem>.json; frames are decoded in a background thread.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

from sbpose_jax.commands import cli
from sbpose_jax.commands import config as config_lib


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m sbpose_jax.predict",
                              description=__doc__.split("\n\n")[0],
                              epilog="Any --config.KEY=VALUE argument overrides a config field.")
  p.add_argument("--config", required=True, help="config name (sbpose_jax/configs/NAME.py) or path")
  p.add_argument("--checkpoint", required=True, help="saved model directory or training workdir")
  p.add_argument("inputs", nargs="+", help="image files, folders of images and/or videos")
  p.add_argument("--boxes", help="person boxes per image (see the module docstring)")
  p.add_argument("--out-dir", required=True)
  p.add_argument("--batch-size", type=int, help="boxes per batch (default config.test.batch_size)")
  p.add_argument("--det-score-thr", type=float, default=None,
                 help="ignore boxes below this score (default config.data.det_score_thr)")
  p.add_argument("--kpt-thr", type=float, default=0.05, help="hide joints at or below this score")
  p.add_argument("--no-nms", action="store_true", help="keep overlapping duplicate poses")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                 help="compute dtype (default float32)")
  return p


def _command(args, rest, written: list) -> int:
  if args.batch_size is not None and args.batch_size <= 0:
    raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
  cfg, _ = config_lib.eval_config(config_lib.load(args.config, rest))
  cfg.model.dtype = args.dtype
  # why: JAX, orbax and grain load here, after parsing, so that --help answers at once.
  from sbpose_jax import annotate
  pngs = annotate.run(cfg, args.checkpoint, args.inputs, args.out_dir, args.boxes, args.batch_size,
             args.det_score_thr, args.kpt_thr, not args.no_nms)
  print(f"wrote {len(pngs)} pictures and predictions.json to {args.out_dir}", file=sys.stderr)
  written.extend(pngs)
  return 0


def main(argv: Sequence[str] | None = None) -> list[pathlib.Path]:
  """The command line: returns the written PNGs; an error is one line (cli.py) and SystemExit
  with a non-zero status."""
  written = []
  status = cli.run(lambda args, rest: _command(args, rest, written), build_parser(), argv)
  if status:
    raise SystemExit(status)
  return written


if __name__ == "__main__":
  main()
