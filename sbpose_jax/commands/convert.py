"""Convert a PyTorch PoseResNet / ResNet checkpoint, or an RTMDet person detector, into an
sbpose_jax saved model.

    python -m sbpose_jax.convert SRC DST [--config NAME] [--style caffe] [--colour-order bgr]

Recognised layouts (after unwrapping {'state_dict': ...} and stripping `module.`):
  mmpose0      `backbone.*` + `keypoint_head.*` (MMPose 0.x, and 1.x rows that re-use 0.x files)
  mmpose1      `backbone.*` + `head.*` (+ wrapper keys; `data_preprocessor.*` ignored)
  poseresnet   bare names, no prefix (the MSRA 2018 files; BGR input)
  torchvision  ImageNet ResNet with `fc.*` (ignored): backbone only, the training initialisation
  backbone     any of the above without a head (backbone only)
  rtmdet       MMDetection / MMPose RTMDet (`backbone.stem.*` + `bbox_head.rtm_cls.*`): a saved
               detector (size and options from the tensors; COCO files keep the person class)

The conversion itself (a name table): conversion.py. Nothing here needs PyTorch.
"""
from __future__ import annotations

import argparse
import sys

from sbpose_jax.commands import cli
from sbpose_jax.commands import config as config_lib

# models.resnet.STYLES, written out: importing it loads flax (tests/test_reliability.py checks
# that the two agree).
STYLES = ("pytorch", "caffe")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m sbpose_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", help="PyTorch checkpoint (.pth / .pth.tar), zip or legacy format")
  parser.add_argument("dst", help="output saved-model directory")
  parser.add_argument("--config", help="config name or path to check the shapes against; the "
                                       "model records its test settings (crop size, flip, "
                                       "decoding, thresholds; default: the published ones at "
                                       "the file name's HxW)")
  parser.add_argument("--style", choices=STYLES,
                      help="ResNet style (default: the config's, else pytorch)")
  parser.add_argument("--colour-order", choices=("rgb", "bgr"),
                      help="override the recorded input colour order")
  parser.add_argument("--no-verify-hash", action="store_true",
                      help="skip the sha256 check of MMPose-style file names")
  cli.add_debug_flag(parser)
  args = parser.parse_args(argv)
  cli.setup_logging(cli.debug_enabled(args))
  # why: conversion imports JAX and flax; imported after parsing so that `--help` answers at once.
  from sbpose_jax.weights import conversion
  from sbpose_jax.weights import pth
  from sbpose_jax.weights import rtmdet_conversion
  try:
    if rtmdet_conversion.is_detector_file(args.src):
      if args.config or args.style or args.colour_order:
        raise ValueError("an RTMDet detector file takes no --config, --style or --colour-order")
      det = rtmdet_conversion.convert(args.src, args.dst, not args.no_verify_hash)
      print(f"wrote {args.dst}: {det.describe()}, from {det.source}")
      return 0
    config = None
    if args.config:
      config = config_lib.load(args.config)
    meta = conversion.convert(args.src, args.dst, config, args.style, args.colour_order,
                              not args.no_verify_hash)
  except (conversion.ConvertError, pth.PthError, ValueError, OSError) as e:
    if cli.debug_enabled(args):
      raise
    msg = str(e) if str(e).startswith(str(args.src)) else f"{args.src}: {e}"
    print(f"convert: error: {msg}".replace("\n", " "), file=sys.stderr)
    return 1
  kind = "backbone" if meta.backbone_only else f"{meta.num_joints} joints"
  test = "" if meta.backbone_only or meta.test is None else (
      f"; test settings {meta.test.describe(('input_size', 'flip', 'decode'))} (from "
      f"{'config ' + config.name if config is not None else 'the file name and defaults'})")
  print(f"wrote {args.dst}: ResNet-{meta.depth} ({meta.style}), {kind}, "
        f"{meta.colour_order.upper()} input, from {meta.source}{test}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
