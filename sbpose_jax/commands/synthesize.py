"""Generate the synthetic data sets (no download): still people, or videos with known tracks.

  python -m sbpose_jax.synthesize people --out data/synthetic [--num-train 1000 --num-val 200]
  python -m sbpose_jax.synthesize videos --out data/synthetic_video [--clips 4]
      [--stills-train 2000 --stills-val 200]

`people` writes procedural stick people in COCO keypoint format (train/, val/, annotations/),
the `demo` config's data. `videos` writes clips of people who walk, cross, occlude one another,
leave and come back (clips/: frames, an mp4 and PoseTrack18 ground truth with track ids per
clip) and, with --stills-*, COCO-format frames with person boxes (stills/) for a detector.
Both are deterministic from --seed.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Sequence

from sbpose_jax.commands import cli


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m sbpose_jax.synthesize",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="\n\n".join(__doc__.split("\n\n")[1:]))
  sub = p.add_subparsers(dest="kind", required=True)
  people = sub.add_parser("people", help="still images of people (COCO keypoints)")
  people.add_argument("--out", required=True, help="output folder")
  people.add_argument("--num-train", type=int, default=1000, help="training images")
  people.add_argument("--num-val", type=int, default=200, help="validation images")
  people.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
  people.add_argument("--width", type=int, default=256, help="image width, pixels")
  people.add_argument("--height", type=int, default=192, help="image height, pixels")
  videos = sub.add_parser("videos", help="clips with known tracks (+ stills for a detector)")
  videos.add_argument("--out", required=True, help="output folder")
  videos.add_argument("--clips", type=int, default=4, help="validation clips (0: none)")
  videos.add_argument("--stills-train", type=int, default=0, help="detector training stills")
  videos.add_argument("--stills-val", type=int, default=0, help="detector validation stills")
  videos.add_argument("--frames", type=int, default=100, help="frames per clip (25 fps)")
  videos.add_argument("--people", type=int, default=4, help="people per clip")
  videos.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
  videos.add_argument("--width", type=int, default=320, help="frame width, pixels")
  videos.add_argument("--height", type=int, default=240, help="frame height, pixels")
  videos.add_argument("--keypoint-format", choices=("posetrack18", "coco"),
                      default="posetrack18", help="joint names of the clips' ground truth")
  return p


def _command(args, rest) -> int:
  del rest
  # why: OpenCV and PyAV load after parsing, so that --help answers at once.
  from sbpose_jax.data import synthetic, synthetic_video
  start = time.perf_counter()
  out = pathlib.Path(args.out)
  if args.kind == "people":
    synthetic.generate(out, {"train": args.num_train, "val": args.num_val}, args.seed,
                       (args.width, args.height))
    what = f"{args.num_train}+{args.num_val} images"
  else:
    size = (args.width, args.height)
    if args.clips:
      synthetic_video.generate_clips(out / "clips", {"val": args.clips}, args.seed, size,
                                     args.frames, args.people,
                                     keypoint_format=args.keypoint_format)
    if args.stills_train or args.stills_val:
      synthetic_video.generate_stills(out / "stills",
                                      {"train": args.stills_train, "val": args.stills_val},
                                      args.seed, size, args.frames)
    what = f"{args.clips} clips, {args.stills_train}+{args.stills_val} stills"
  print(f"wrote {what} to {out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(_command, build_parser(), argv, allow_overrides=False)
