"""Predict poses on your own images and videos and draw them.

  python -m sbpose_jax.predict --checkpoint models/res50_coco_256x192 photo.jpg more_photos/ \
      --out-dir out/ [--boxes boxes.json] [--config coco_res50] [--config.test.flip=False]

The model (a saved model, a training workdir or an exported file) brings its own test settings
(crop size, flip, decoding, thresholds); `--config` adds the rest, and `--config.KEY=VALUE`
overrides a setting with a printed note (a crop size other than the model's is refused).
Without --config, a workdir's own config.json is used, else the named config of the model's
dataset. Writes out_dir/predictions.json (per image: instances with box, score and keypoints
[x, y, score] per joint) and out_dir/<image stem>.png with the skeletons drawn (joint score →
opacity). A video input (.mp4, .mkv, .avi, .mov, .webm, .m4v) gets one whole-frame box per frame
(a single person; `python -m sbpose_jax.track` follows several) and writes out_dir/<stem>.mp4 and
out_dir/<stem>.json. Every file is written under a temporary name and renamed when complete;
Ctrl-C (or SIGTERM) writes what was done and exits 130 (143).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

from sbpose_jax.commands import cli
from sbpose_jax.commands import config as config_lib

BOXES_HELP = """\
box files (--boxes): JSON, either a COCO detection-results list or a dict per image:
  [{"image_id": 785, "bbox": [x, y, w, h], "score": 0.98, "category_id": 1}, ...]
  {"000000000785.jpg": [[x, y, w, h], [x, y, w, h, score], ...], ...}
An image_id matches an image whose file stem is that number (000000000785.jpg), or give
"file_name"; a dict key is the file name or its stem. Boxes are pixels, x, y the top-left
corner; category_id other than 1 is not a person. Without --boxes each image is one
whole-image box (fine for single-person photos). A box smaller than a pixel or outside its
image is skipped with a warning naming it; NaN or a malformed entry stops the run naming the
file and the entry; images that get no box get no pose (a warning says how many got boxes).
"""


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m sbpose_jax.predict",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=BOXES_HELP + "\nAny --config.KEY=VALUE argument overrides "
                                     "a config field (test.* and data.padding: a note says so).")
  p.add_argument("--config", help="config name (sbpose_jax/configs/NAME.py) or path (default: "
                                  "the workdir's config.json, else the config of the model's "
                                  "dataset); the model's own test settings win unless "
                                  "overridden with --config.KEY=VALUE")
  p.add_argument("--checkpoint", required=True,
                 help="saved model directory, training workdir or exported file")
  p.add_argument("inputs", nargs="+", help="image files, folders of images and/or videos")
  p.add_argument("--boxes", help="person boxes per image: a JSON file (formats below)")
  p.add_argument("--out-dir", required=True,
                 help="where predictions.json, the PNGs and the videos' mp4/json go")
  p.add_argument("--batch-size", type=int, help="boxes per batch (default config.test.batch_size)")
  p.add_argument("--det-score-thr", type=float, default=None,
                 help="ignore boxes below this score (default config.data.det_score_thr)")
  p.add_argument("--kpt-thr", type=float, default=0.05, help="hide joints at or below this score")
  p.add_argument("--no-nms", action="store_true", help="keep overlapping duplicate poses")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                 help="compute dtype (default float32)")
  return p


def summary(written: Sequence[pathlib.Path], out_dir) -> str:
  """The line naming the files a run wrote."""
  pngs = [p for p in written if p.suffix == ".png"]
  videos = [p for p in written if p.suffix == ".mp4"]
  parts = []
  if pngs:
    parts.append(f"{len(pngs)} pictures and {pathlib.Path(out_dir) / 'predictions.json'}")
  parts += [f"{v} and {v.with_suffix('.json')}" for v in videos]
  return "wrote " + ("; ".join(parts) if parts else "nothing")


def _command(args, rest, written: list) -> int:
  if args.batch_size is not None and args.batch_size <= 0:
    raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
  # why: JAX, orbax and grain load here, after parsing, so that --help answers at once.
  from sbpose_jax import annotate, api
  dataset = None if args.config else api.model_dataset(args.checkpoint)
  cfg, _ = config_lib.eval_config(config_lib.for_model(args.config, rest, args.checkpoint,
                                                       dataset))
  cfg.model.dtype = args.dtype
  paths = annotate.run(cfg, args.checkpoint, args.inputs, args.out_dir, args.boxes,
                       args.batch_size, args.det_score_thr, args.kpt_thr, not args.no_nms,
                       explicit=config_lib.explicit_test_keys(rest))
  print(summary(paths, args.out_dir), file=sys.stderr)
  written.extend(paths)
  return 0


def main(argv: Sequence[str] | None = None) -> list[pathlib.Path]:
  """The command line: returns the written PNGs and mp4s; an error is one line (cli.py) and
  SystemExit with a non-zero status."""
  written = []
  status = cli.run(lambda args, rest: _command(args, rest, written), build_parser(), argv)
  if status:
    raise SystemExit(status)
  return written


if __name__ == "__main__":
  main()
