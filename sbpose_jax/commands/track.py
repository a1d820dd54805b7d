"""Track people's poses through a video (the paper's tracker, docs/tracking.md).

  python -m sbpose_jax.track --config posetrack18_res50 --checkpoint models/res50_posetrack18 \
      clip.mp4 --out-dir out/ [--boxes dets.json] [--similarity iou|oks|flow] [--frames] [--eval]

INPUT is a video file (any container FFmpeg reads), a folder of frames (sorted by name) or a
PoseTrack18 annotation file (its frames; `--eval` then scores the result against it). Boxes per
frame: `--boxes` (a COCO detection-results list whose `image_id` is the PoseTrack image id or the
0-based frame number, or a dict {frame number or file name: [[x, y, w, h(, score)], ...]}) plus
boxes propagated from the previous frame's poses by optical flow; without `--boxes`, propagation
alone, starting from the whole first frame. Writes O/<name>.json (PoseTrack18 results: track ids,
joints, scores), O/<name>.mp4 (skeletons coloured by track id) and, with --frames, O/<name>/*.png.
Tracking settings are the config's `track.*` (override with --config.track.KEY=VALUE).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


from sbpose_jax.commands import cli
from sbpose_jax.commands import config as config_lib


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m sbpose_jax.track",
                              description=__doc__.split("\n\n")[0],
                              epilog="Any --config.KEY=VALUE argument overrides a config field.")
  p.add_argument("input", help="video file, folder of frames, or PoseTrack18 annotation json")
  p.add_argument("--config", required=True, help="config name (configs/NAME.py) or path")
  p.add_argument("--checkpoint", required=True, help="saved model directory or training workdir")
  p.add_argument("--out-dir", required=True)
  p.add_argument("--boxes", help="person detections (COCO results list or per-frame dict)")
  p.add_argument("--similarity", choices=("iou", "oks", "flow"),
                 help="matching similarity (default: the config's track.similarity)")
  p.add_argument("--frames", action="store_true", help="also write one PNG per frame")
  p.add_argument("--eval", action="store_true",
                 help="score MOTA and AP against INPUT (a PoseTrack18 annotation file)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
  p.add_argument("--kpt-thr", type=float, default=None,
                 help="joints drawn above this score (default track.kpt_thr)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  return p


def _command(args, rest, out: list) -> int:
  # why: JAX, PyAV and OpenCV load here, after parsing, so that --help answers at once.
  from sbpose_jax import video
  from sbpose_jax.evaluators import posetrack_mota
  from sbpose_jax.tracking import video_loop
  cfg, _ = config_lib.eval_config(config_lib.load(args.config, rest))
  cfg.model.dtype = args.dtype
  if args.similarity:
    cfg.track.similarity = args.similarity
  source = video.open_source(args.input)
  if args.eval and source.kind != "posetrack":
    raise ValueError("--eval needs INPUT to be a PoseTrack18 annotation file")
  boxes = video_loop.read_boxes(args.boxes, source) if args.boxes else None
  pose_model = video_loop.FramePoses(cfg, args.checkpoint)
  path, stats = video_loop.track_video(cfg, pose_model, source, args.out_dir, boxes, args.frames,
                            args.kpt_thr, not args.quiet)
  n = max(stats["frames"], 1)
  per = ", ".join(f"{k} {1000 * stats[k] / n:.1f}" for k in ("wait", "propose", "pose",
                                                            "match", "write"))
  print(f"tracked {stats['frames']} frames at {stats['frames'] / stats['seconds']:.1f} "
        f"frames/s (ms per frame: {per}); wrote {path} and {path.with_suffix('.mp4')}",
        file=sys.stderr)
  scores = None
  if args.eval:
    scores = posetrack_mota.score_sequence(args.input, path)
    print(posetrack_mota.format_scores(scores))
  out.extend([path, scores])
  return 0


def main(argv: Sequence[str] | None = None):
  """The command line: returns (results json path, scores or None); an error is one line
  (cli.py) and SystemExit with a non-zero status."""
  out = []
  status = cli.run(lambda args, rest: _command(args, rest, out), build_parser(), argv)
  if status:
    raise SystemExit(status)
  return tuple(out)


if __name__ == "__main__":
  main()
