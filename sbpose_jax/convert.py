"""Convert a PyTorch PoseResNet / ResNet checkpoint into an sbpose_jax saved model.

    python -m sbpose_jax.convert SRC DST [--config NAME] [--style caffe] [--colour-order bgr]

Recognised layouts (MMPose 0.x / 1.x, the MSRA PoseResNet files, torchvision ImageNet ResNets,
bare backbones) and the conversion itself: conversion.py. Nothing here needs PyTorch.
"""
from __future__ import annotations

import argparse
import sys

from sbpose_jax import cli
from sbpose_jax import config as config_lib
from sbpose_jax import conversion
from sbpose_jax import pth
from sbpose_jax.models import resnet


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m sbpose_jax.convert", description=__doc__,
                                   epilog=conversion.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", help="PyTorch checkpoint (.pth / .pth.tar), zip or legacy format")
  parser.add_argument("dst", help="output saved-model directory")
  parser.add_argument("--config", help="config name or path to check the shapes against")
  parser.add_argument("--style", choices=resnet.STYLES,
                      help="ResNet style (default: the config's, else pytorch)")
  parser.add_argument("--colour-order", choices=("rgb", "bgr"),
                      help="override the recorded input colour order")
  parser.add_argument("--no-verify-hash", action="store_true",
                      help="skip the sha256 check of MMPose-style file names")
  cli.add_debug_flag(parser)
  args = parser.parse_args(argv)
  cli.setup_logging(cli.debug_enabled(args))
  try:
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
  print(f"wrote {args.dst}: ResNet-{meta.depth} ({meta.style}), {kind}, "
        f"{meta.colour_order.upper()} input, from {meta.source}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
