"""Track people's poses through a video (the paper's tracker, docs/tracking.md).

  python -m sbpose_jax.track --checkpoint models/res50_posetrack18 clip.mp4 --out-dir out/ \
      [--config posetrack18_res50] [--boxes dets.json] [--similarity iou|oks|flow] [--frames]

INPUT is a video file (any container FFmpeg reads), a folder of frames (sorted by name) or a
PoseTrack18 annotation file (its frames; `--eval` then scores the result against it). Boxes per
frame: `--boxes` plus boxes propagated from the previous frame's poses by optical flow. Writes
O/<name>.json (PoseTrack18 results: track ids, joints, scores), O/<name>.mp4 (skeletons coloured
by track id) and, with --frames, O/<name>/*.png, each under a temporary name renamed when
complete; Ctrl-C (or SIGTERM) writes the frames tracked so far and exits 130 (143). The model
brings its own test settings (crop size, flip, decoding); `--config` (default: a workdir's
config.json, else the config of the model's dataset) adds the tracking settings `track.*`
(override with --config.track.KEY=VALUE).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


from sbpose_jax.commands import cli
from sbpose_jax.commands import config as config_lib

BOXES_HELP = """\
box files (--boxes): JSON, either a COCO detection-results list or a dict per frame:
  [{"image_id": 0, "bbox": [x, y, w, h], "score": 0.98, "category_id": 1}, ...]
  {"0": [[x, y, w, h, score], ...], "000001.jpg": [[x, y, w, h], ...], ...}
A key (or image_id) is the 0-based frame number (the first frame is 0), a frame's file name
or stem (folder inputs), or a PoseTrack image id. Boxes are pixels, x, y the top-left corner;
boxes below track.det_score_thr and category_id other than 1 are ignored. Without --boxes
the tracker starts from the whole first frame as one box and follows people by optical flow
alone (the whole frame is again the box whenever nobody is being tracked). A box smaller
than a pixel or outside its frame is skipped with a warning naming it; NaN or a malformed
entry stops the run naming the file and the entry; a file that gives boxes to fewer frames
than the input has (none: an empty or non-matching file) is a warning saying how many frames
got boxes.
"""


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m sbpose_jax.track",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=BOXES_HELP + "\nAny --config.KEY=VALUE argument overrides "
                                     "a config field.")
  p.add_argument("input", help="video file, folder of frames, or PoseTrack18 annotation json")
  p.add_argument("--config", help="config name (configs/NAME.py) or path (default: the "
                                  "workdir's config.json, else the config of the model's "
                                  "dataset); the model's own test settings win unless "
                                  "overridden with --config.KEY=VALUE")
  p.add_argument("--checkpoint", required=True,
                 help="saved model directory, training workdir or exported file")
  p.add_argument("--out-dir", required=True,
                 help="where <name>.json, <name>.mp4 (and <name>/ with --frames) go")
  p.add_argument("--boxes", help="person boxes per frame: a JSON file (formats below); "
                                 "without it: the whole first frame, then optical flow")
  p.add_argument("--skip-bad-frames", action="store_true",
                 help="folder / PoseTrack input: skip (and count) undecodable frames instead "
                      "of stopping at the first")
  p.add_argument("--similarity", choices=("iou", "oks", "flow"),
                 help="matching similarity (default: the config's track.similarity)")
  p.add_argument("--frames", action="store_true", help="also write one PNG per frame")
  p.add_argument("--eval", action="store_true",
                 help="score MOTA and AP against INPUT (a PoseTrack18 annotation file)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                 help="compute dtype (default float32)")
  p.add_argument("--kpt-thr", type=float, default=None,
                 help="joints drawn above this score (default track.kpt_thr)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  return p


def _command(args, rest, out: list) -> int:
  # why: JAX, PyAV and OpenCV load here, after parsing, so that --help answers at once.
  from sbpose_jax import api, video
  from sbpose_jax.evaluators import posetrack_mota
  from sbpose_jax.tracking import video_loop
  dataset = None if args.config else api.model_dataset(args.checkpoint)
  cfg, _ = config_lib.eval_config(config_lib.for_model(args.config, rest, args.checkpoint,
                                                       dataset))
  cfg.model.dtype = args.dtype
  if args.similarity:
    cfg.track.similarity = args.similarity
  source = video.open_source(args.input)
  source.skip_bad = args.skip_bad_frames
  if args.eval and source.kind != "posetrack":
    raise ValueError("--eval needs INPUT to be a PoseTrack18 annotation file")
  for note in api.apply_model_settings(cfg, args.checkpoint,
                                       config_lib.explicit_test_keys(rest)):
    print(f"note: {note}", file=sys.stderr)
  boxes = video_loop.read_boxes(args.boxes, source) if args.boxes else None
  pose_model = video_loop.FramePoses(cfg, args.checkpoint)
  path, stats = video_loop.track_video(cfg, pose_model, source, args.out_dir, boxes,
                                       args.frames, args.kpt_thr, not args.quiet,
                                       boxes_name=f"--boxes {args.boxes}")
  n = max(stats["frames"], 1)
  per = ", ".join(f"{k} {1000 * stats[k] / n:.1f}" for k in ("wait", "propose", "pose",
                                                            "match", "write"))
  skipped = f" ({stats['skipped']} undecodable frames skipped)" if stats["skipped"] else ""
  print(f"tracked {stats['frames']} frames{skipped} at "
        f"{stats['frames'] / max(stats['seconds'], 1e-9):.1f} frames/s (ms per frame: {per}); "
        f"wrote {', '.join(str(p) for p in stats['written']) or 'nothing'}", file=sys.stderr)
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
