"""Export a saved model with the whole test-time pipeline inside: StableHLO or ONNX.

  python -m sbpose_jax.export --checkpoint models/coco_res50 --format onnx --out coco_res50.onnx
  python -m sbpose_jax.export --checkpoint workdirs/demo --format stablehlo --out demo.stablehlo \
      [--coords crop|image] [--no-flip] [--decode default|unbiased] [--input-size W H]
  python -m sbpose_jax.export --checkpoint models/coco_res50 --detector models/rtmdet_m \
      --image-size 1920 1080 --format stablehlo --out people_1080p.stablehlo

Without --detector the exported function takes a batch of uint8 RGB crops (B, H, W, 3) (the box
warped to the input size as `geometry.get_affine_transform(center, scale, 0, (W, H))` +
`cv2.warpAffine` does) and, with `--coords image` (the default), their `center` (B, 2) and
`scale` (B, 2) float32; it returns `keypoints` (B, K, 2) float32 (image pixels, or crop pixels
with `--coords crop`) and `scores` (B, K) float32 (heatmap maxima). Normalisation, the model's
colour order, the flip test and the decoding run inside; B is symbolic. Beside the file,
`<out>.json` lists everything else a user needs (input size, mean/std, joints, flip pairs,
skeleton, checks).

Every export is run (onnxruntime, or jax.export.deserialize) on rendered person crops at batch
sizes 1, 3 and 17 and compared with the JAX model before anything is written; a mismatch
(keypoints > 1e-3 px or scores > 1e-4) writes nothing. ONNX goes through jax2onnx on an
export-friendly form of the network (`models.export_form`: the same function and variables).

With `--detector DIR` the file is the whole pipeline from a picture: one uint8 RGB image
(H, W, 3) of the `--image-size` it is exported for in; `boxes` (M, 4) x1 y1 x2 y2, `box_scores`
(M,), `count`, `keypoints` (M, K, 2) image pixels and `scores` (M, K) out (M: the detector's
max_per_img; rows from count on are 0): the detector's resize and pad, network, decoding and
NMS, a crop per box warped on the device, the pose network, flip test and decoding
(`exporting.pipeline_function`). It is checked against JAX on pictures of that size (the
same number of people, boxes and keypoints within 1e-2 px, scores within 5e-3) before it is
written. ONNX needs opset 18 (the default with --detector; docs/detection.md).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Sequence

from sbpose_jax.commands import cli
from sbpose_jax import exporting
from sbpose_jax import outputs
from sbpose_jax.exporting import COORDS, FORMATS, PLATFORMS, sidecar_path


# ------------------------------------------------------------------------------------ exporting

def export_model(checkpoint, fmt: str, out, *, coords: str = "image", dataset: str | None = None,
                 input_size: Sequence[int] | None = None, flip: bool | None = None,
                 decode: str | None = None, opset: int = exporting.ONNX_OPSET,
                 platforms: Sequence[str] = PLATFORMS, log=None) -> dict:
  """Exports the model at `checkpoint`, checks it against JAX, writes `out` and `out`.json.

  The model's own test settings (crop size, flip, decoding) are exported; `flip` / `decode`
  given override them (a note), `input_size` must be the model's. Returns the description
  written. Raises ValueError (and writes nothing, leaves no temporary file) when the exported
  function differs from the JAX model, or when the requested pipeline cannot be exported.
  """
  import jax  # why: loads JAX and the model stack on use, so that --help answers at once
  # why: loads JAX and the model stack on use, so that --help answers at once
  from sbpose_jax import api, models
  if fmt not in FORMATS:
    raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
  if coords not in COORDS:
    raise ValueError(f"--coords must be one of {COORDS}, got {coords!r}")
  ckpt = pathlib.Path(checkpoint)
  if ckpt.is_file():
    raise ValueError(f"--checkpoint {checkpoint} is a file (an exported model?); export from "
                     "the saved model directory or training workdir it came from")
  if input_size is not None and (len(input_size) != 2 or min(input_size) <= 0):
    raise ValueError(f"--input-size must be two positive sizes W H, got "
                     f"{' '.join(map(str, input_size))}")
  out = pathlib.Path(out)
  if out.is_dir() or str(out).endswith(os.sep):
    raise ValueError(f"--out {out} is a folder; give the file to write, e.g. "
                     f"{out / ('model.' + ('onnx' if fmt == 'onnx' else 'stablehlo'))}")
  if out.parent.exists() and not out.parent.is_dir():
    raise ValueError(f"--out {out}: {out.parent} is not a folder")
  if fmt == "onnx":
    exporting.check_onnx_tools()
  log = log or (lambda msg: None)
  est = api.PoseEstimator.load(checkpoint, dataset=dataset, input_size=input_size, flip=flip,
                               decode=decode, flag_names={"input_size": "--input-size",
                                                          "flip": "--no-flip",
                                                          "decode": "--decode"})
  flip, decode = est.test.flip, est.test.decode
  if fmt == "onnx" and decode != "default":
    raise ValueError(
        "--decode unbiased (DARK) is not exported to ONNX: jax2onnx converts it, but on "
        "test heatmaps onnxruntime's result differed from JAX's by up to 44 heatmap pixels "
        "(Newton steps on flat maps amplify float differences); export with --decode "
        "default, or use --format stablehlo")
  model, variables, settings = est.model, est.variables, est.settings
  input_wh = est.input_wh
  reference = jax.jit(exporting.keypoints_function(model, variables, settings, input_wh, coords))
  fn = exporting.keypoints_function(models.export_form(model), variables, settings, input_wh,
                                    coords)
  log(f"exporting {fmt} ({input_wh[0]}x{input_wh[1]}, {est.dataset}, coords {coords}, flip "
      f"{'on' if flip else 'off'}, decode {decode})")
  data = (exporting.to_stablehlo(fn, input_wh, coords, platforms) if fmt == "stablehlo"
          else exporting.to_onnx(fn, input_wh, coords, opset))
  log(f"checking the export against JAX at batch sizes {list(exporting.CHECK_BATCHES)}")
  check = exporting.compare(exporting.runner(fmt, data, f"the new {fmt} export"), reference,
                            exporting.check_crops(input_wh, 4), coords)
  if not (check["max_dx_px"] <= exporting.MAX_DX_PX
          and check["max_dscore"] <= exporting.MAX_DSCORE):
    raise ValueError(
        f"the {fmt} export differs from the JAX model (keypoints by {check['max_dx_px']:.3g} "
        f"crop px, limit {exporting.MAX_DX_PX}; scores by {check['max_dscore']:.3g}, limit "
        f"{exporting.MAX_DSCORE}); nothing written")
  desc = exporting.describe(est.meta, settings, input_wh, est.dataset, fmt, coords, data, check,
                  opset if fmt == "onnx" else None, platforms, test=est.test)
  out.parent.mkdir(parents=True, exist_ok=True)
  for path, payload in ((out, data), (sidecar_path(out),
                                      json.dumps(desc, indent=1).encode())):
    outputs.write_bytes(path, payload)     # beside, then renamed; nothing left on failure
  return desc


def export_pipeline(checkpoint, detector, fmt: str, out, image_wh: Sequence[int], *,
                    opset: int = 18, platforms: Sequence[str] = PLATFORMS, check_images=(),
                    log=None) -> dict:
  """Exports detector + pose as one function of a W x H uint8 RGB image (module docstring),
  checks it against JAX on `check_images` (resized to W x H; rendered people when empty),
  writes `out` and `out`.json. ValueError (nothing written) on a mismatch or an export the
  format cannot hold."""
  import jax  # why: loads JAX and the model stack on use, so that --help answers at once
  # why: loads JAX and the model stack on use, so that --help answers at once
  from sbpose_jax import api, models
  from sbpose_jax.inference import detection
  if fmt not in FORMATS:
    raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
  if image_wh is None or len(image_wh) != 2 or min(image_wh) <= 0:
    raise ValueError("--detector exports the pipeline for one picture size: give --image-size "
                     "W H (e.g. 1920 1080)")
  if fmt == "onnx":
    exporting.check_onnx_tools()
    if opset < exporting.PIPELINE_MIN_OPSET:
      raise ValueError(f"--opset {opset}: the detector + pose pipeline needs opset "
                       f"{exporting.PIPELINE_MIN_OPSET} or later (its ops: BitwiseOr, "
                       "ReduceMean with axes as an input)")
  log = log or (lambda msg: None)
  out = pathlib.Path(out)
  est = api.PoseEstimator.load(checkpoint)
  if est.model is None:
    raise ValueError(f"--checkpoint {checkpoint}: export from a saved model directory or "
                     "training workdir, not an exported file")
  det = detection.Detector.load(detector)
  w, h = (int(v) for v in image_wh)
  reference = jax.jit(exporting.pipeline_function(det, est, (w, h)))
  fn = exporting.pipeline_function(det, est, (w, h), models.export_form(est.model))
  log(f"exporting detector + pose ({det.meta.describe()}; {est.dataset} pose at "
      f"{est.input_wh[0]}x{est.input_wh[1]}) for {w}x{h} pictures as {fmt}")
  images = exporting.pipeline_check_images((w, h), check_images)
  expected = [jax.device_get(reference(img)) for img in images]   # before any converter runs
  data = (exporting.pipeline_to_stablehlo(fn, (w, h), platforms) if fmt == "stablehlo"
          else exporting.pipeline_to_onnx(fn, (w, h), opset))
  check = exporting.compare_pipeline(exporting.runner(fmt, data, f"the new {fmt} export"),
                                     expected, images)
  if not (check["same_count"] and check["max_dpx"] <= exporting.PIPELINE_MAX_DPX
          and check["max_dscore"] <= exporting.PIPELINE_MAX_DSCORE):
    raise ValueError(
        f"the {fmt} pipeline export differs from JAX (same people: {check['same_count']}; "
        f"boxes/keypoints by {check['max_dpx']:.3g} px, limit {exporting.PIPELINE_MAX_DPX}; "
        f"scores by {check['max_dscore']:.3g}, limit {exporting.PIPELINE_MAX_DSCORE}); "
        "nothing written")
  m, k = det.settings.max_per_img, len(est.info.joint_names)
  desc = {"kind": "pipeline", "format": fmt, "sha256": exporting.sha256(data),
          "file_bytes": len(data), "image_size": [w, h],
          "inputs": [{"name": "image", "shape": [h, w, 3], "dtype": "uint8", "meaning": "RGB"}],
          "outputs": [{"name": "boxes", "shape": [m, 4], "meaning": "x1 y1 x2 y2 image px"},
                      {"name": "box_scores", "shape": [m]},
                      {"name": "count", "shape": [], "meaning": "rows of people; the rest 0"},
                      {"name": "keypoints", "shape": [m, k, 2], "meaning": "image px"},
                      {"name": "scores", "shape": [m, k]}],
          "detector": json.loads(det.meta.to_json()), "dataset": est.dataset,
          "joint_names": list(est.info.joint_names),
          "skeleton": [list(p) for p in est.info.skeleton], "pose_input_size": list(est.input_wh),
          "test": est.test.to_dict(), "check": check,
          **({"onnx_opset": opset} if fmt == "onnx" else {"platforms": list(platforms)})}
  out.parent.mkdir(parents=True, exist_ok=True)
  for path, payload in ((out, data), (sidecar_path(out), json.dumps(desc, indent=1).encode())):
    outputs.write_bytes(path, payload)
  return desc


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m sbpose_jax.export",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True, help="saved model directory or training workdir")
  p.add_argument("--format", required=True, choices=FORMATS,
                 help="stablehlo (jax.export; PoseEstimator.load reads it) or onnx (needs "
                      f"jax2onnx: {exporting.ONNX_INSTALL})")
  p.add_argument("--out", required=True, help="the file to write (and <out>.json beside it)")
  p.add_argument("--coords", default="image", choices=COORDS,
                 help="image: inputs crops, center, scale -> image pixels (default); "
                      "crop: inputs crops -> crop pixels")
  p.add_argument("--dataset", help="joint set (default: the model's meta.json)")
  p.add_argument("--input-size", type=int, nargs=2, metavar=("W", "H"),
                 help="crop size: a check, it must be the model's own (recorded in its "
                      "meta.json; a model saved before that: its training config or name)")
  p.add_argument("--no-flip", action="store_true",
                 help="leave the flip test out (default: the model's own test setting)")
  p.add_argument("--decode", default=None, choices=("default", "unbiased"),
                 help="heatmap decoding (default: the model's own test setting; unbiased = "
                      "DARK, StableHLO only)")
  p.add_argument("--detector", metavar="DIR",
                 help="a saved person detector: export detector + pose as one function of a "
                      "picture (needs --image-size; see the description above)")
  p.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"),
                 help="with --detector: the picture size the pipeline is exported for")
  p.add_argument("--opset", type=int, default=None,
                 help=f"ONNX opset (default {exporting.ONNX_OPSET}; with --detector "
                      f"{exporting.PIPELINE_MIN_OPSET}, the least it runs at)")
  p.add_argument("--platforms", default=",".join(PLATFORMS),
                 help="StableHLO: platforms to lower for, comma-separated (default cpu,cuda; "
                      "the check runs on this machine's)")
  return p


def _command(args, rest, out: dict) -> int:
  del rest  # no config overrides: everything comes from the saved model
  if args.detector:
    desc = export_pipeline(args.checkpoint, args.detector, args.format, args.out,
                           args.image_size, opset=args.opset or exporting.PIPELINE_MIN_OPSET,
                           platforms=tuple(args.platforms.split(",")),
                           log=lambda m: print(m, file=sys.stderr))
    c = desc["check"]
    print(f"wrote {args.out} and {sidecar_path(args.out)} (max difference from JAX: "
          f"{c['max_dpx']:.2g} px, scores {c['max_dscore']:.2g}; people found in the check "
          f"pictures: {c['people']})", file=sys.stderr)
    out.update(desc)
    return 0
  if args.image_size:
    raise ValueError("--image-size goes with --detector (the pose export takes crops)")
  desc = export_model(args.checkpoint, args.format, args.out, coords=args.coords,
                      dataset=args.dataset, input_size=args.input_size,
                      flip=False if args.no_flip else None,
                      decode=args.decode, opset=args.opset or exporting.ONNX_OPSET,
                      platforms=tuple(args.platforms.split(",")),
                      log=lambda m: print(m, file=sys.stderr))
  c = desc["check"]
  print(f"wrote {args.out} and {sidecar_path(args.out)} (max difference from JAX: "
        f"{c['max_dx_px']:.2g} crop px, scores {c['max_dscore']:.2g})", file=sys.stderr)
  out.update(desc)
  return 0


def main(argv: Sequence[str] | None = None) -> dict:
  """The command line: returns the description written; an error is one line (cli.py) and
  SystemExit with a non-zero status."""
  desc = {}
  status = cli.run(lambda args, rest: _command(args, rest, desc), build_parser(), argv,
                   allow_overrides=False)
  if status:
    raise SystemExit(status)
  return desc


if __name__ == "__main__":
  main()
