"""Evaluate a saved (converted or trained) model on a dataset's evaluation split.

  python -m sbpose_jax.evaluate --config coco_res50 --checkpoint models/res50_coco_256x192 \
      --out-dir out/coco_res50 [--gt-boxes | --det-file F] [--no-flip] [--batch-size 64] \
      [--ann-file F] [--img-dir D] [--dtype bfloat16] [--config.test.decode=unbiased ...]
      [--gt-file F (MPII)] [--crowdpose-ignore 2020|current (CrowdPose)]
  python -m sbpose_jax.evaluate --config coco_res50 --results out/keypoints.json --out-dir O

The model (a saved model, a training workdir or an exported file) brings its own test settings
(crop size, flip, decoding, thresholds); `--no-flip` and `--config.test.KEY=VALUE` override
them with a printed note (a crop size other than the model's is refused). Without --config, a
workdir's config.json is used, else the named config of the model's dataset. Paths default
to the config's evaluation data (`config.data` updated with `evals.val.data`); the flags
override them. Writes O/keypoints.json (the dataset's results format) and O/metrics.json (with
the test settings used), and prints the published table's columns. `--results FILE` scores an
existing results file with no model.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Sequence

import ml_collections

from sbpose_jax.commands import cli
from sbpose_jax.commands import config as config_lib
from sbpose_jax import evaluators
from sbpose_jax import outputs
from sbpose_jax.data import readers


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m sbpose_jax.evaluate", description=__doc__.split("\n\n")[0],
      epilog="Any --config.KEY=VALUE argument overrides a config field.")
  p.add_argument("--config", help="config name (sbpose_jax/configs/NAME.py) or path (needed "
                                  "with --results; default with --checkpoint: the workdir's "
                                  "config.json, else the config of the model's dataset)")
  p.add_argument("--checkpoint", help="saved model directory, training workdir or exported file")
  p.add_argument("--results", help="score this existing results file instead of a model")
  p.add_argument("--out-dir", required=True, help="where keypoints.json and metrics.json go")
  p.add_argument("--ann-file", help="ground-truth annotation file (default: from the config)")
  p.add_argument("--img-dir", help="image folder (default: from the config)")
  p.add_argument("--gt-file", help="MPII: the PCKh ground truth, the official mpii_gt_val.mat or "
                                   "a JSON list with 'headbox' per entry (default: "
                                   "data.gt_mat_file; --ann-file does not change it)")
  p.add_argument("--crowdpose-ignore", choices=("2020", "current"), default=None,
                 help="CrowdPose: which people the metric ignores. 2020 (default, the published "
                      "numbers): no joint with v > 0; current: num_keypoints == 0, the rule of "
                      "xtcocotools >= 1.9 (2021) that a current MMPose uses")
  boxes = p.add_mutually_exclusive_group()
  boxes.add_argument("--det-file", help="detector boxes (COCO results json)")
  boxes.add_argument("--gt-boxes", action="store_true", help="use ground-truth boxes")
  p.add_argument("--no-flip", action="store_true", help="disable the flip test")
  p.add_argument("--batch-size", type=int, help="boxes per batch (default config.test.batch_size)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                 help="compute dtype (default float32: published-number parity; the config's "
                      "model.dtype is the training dtype)")
  p.add_argument("--eval", default=None, help="which config.evals entry (default: the first)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.add_argument("--track", action="store_true",
                 help="PoseTrack18 only, with --results DIR (one tracked json per sequence, as "
                      "`sbpose_jax.track` writes): also print poseval's tracking table (MOTA, "
                      "MOTP, precision, recall per joint group and in total) and write its "
                      "per-joint files to OUT_DIR/tracking/")
  return p


def apply_flags(cfg: ml_collections.ConfigDict, args) -> ml_collections.ConfigDict:
  """Command-line paths and switches → cfg (absolute paths survive `root / path`)."""
  d = cfg.data
  if getattr(args, "gt_file", None):
    if d.dataset != "mpii":
      raise ValueError(f"--gt-file is MPII's PCKh ground truth; dataset {d.dataset!r} takes its "
                       "ground truth from --ann-file")
    d.gt_mat_file = os.path.abspath(args.gt_file)
  if getattr(args, "crowdpose_ignore", None):
    if d.dataset != "crowdpose":
      raise ValueError(f"--crowdpose-ignore applies to CrowdPose, not to {d.dataset!r}")
    cfg.test.crowdpose_ignore = args.crowdpose_ignore
  if args.ann_file:
    d.val_ann = os.path.abspath(args.ann_file)
    # PoseTrack's per-sequence folder is then found beside the given file (MMPose's rule);
    # MPII's PCKh ground truth stays data.gt_mat_file (or --gt-file): never replaced silently.
    d.val_gt_dir = ""
  if args.img_dir:
    d.val_images = os.path.abspath(args.img_dir)
  if args.det_file:
    d.det_file, d.use_gt_bbox = os.path.abspath(args.det_file), False
  if args.gt_boxes:
    d.use_gt_bbox = True
  if args.no_flip:
    cfg.test.flip = False
  if getattr(args, "dtype", None):
    cfg.model.dtype = args.dtype
  if args.batch_size:
    if args.batch_size <= 0:
      raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    cfg.test.batch_size = args.batch_size
  return cfg


def data_path(cfg, field: str) -> pathlib.Path:
  return pathlib.Path(cfg.data.root) / cfg.data[field]


def check_inputs(cfg, need_images: bool = True) -> None:
  """Fails early, naming the missing file, before any model or annotation is loaded."""
  wanted = [("annotation file (--ann-file / data.val_ann)", data_path(cfg, "val_ann"))]
  if need_images:
    wanted.append(("image folder (--img-dir / data.val_images)", data_path(cfg, "val_images")))
    if not cfg.data.use_gt_bbox and cfg.data.dataset not in ("mpii", "mpii_trb"):
      wanted.append(("detection file (--det-file / data.det_file)", data_path(cfg, "det_file")))
  if cfg.data.dataset == "mpii" and cfg.data.get("gt_mat_file"):
    wanted.append(("MPII PCKh ground truth (--gt-file / data.gt_mat_file)",
                   data_path(cfg, "gt_mat_file")))
  for what, path in wanted:
    if not path.exists():
      raise FileNotFoundError(f"{what} not found: {path}")


def evaluate_model(cfg, eval_type: str, checkpoint_path, out_dir, progress: bool = True,
                   explicit=()) -> dict[str, float]:
  """Runs a saved model over cfg's evaluation split; returns the metrics (writes out_dir).

  The model's own test settings replace cfg's first (`api.apply_model_settings`; `explicit`:
  {field: flag} of those the command line set, which override them with a note).
  """
  # why: these import JAX, orbax and grain; imported here so that `--help` answers at once.
  import jax

  from sbpose_jax import api
  from sbpose_jax.weights import saved_model
  from sbpose_jax.training import workdir
  from sbpose_jax.evaluators import loop
  for note in api.apply_model_settings(cfg, checkpoint_path, explicit):
    print(f"note: {note}", file=sys.stderr)
  if not pathlib.Path(checkpoint_path).is_file():   # an exported file: from_config checks it
    meta = workdir.read_meta(checkpoint_path)
    saved_model.check_fits(meta, cfg.data.dataset, checkpoint_path)
  check_inputs(cfg)
  if eval_type not in evaluators.EVALUATORS:
    raise ValueError(f"evaluation type {eval_type!r} unknown; known: "
                     f"{sorted(evaluators.EVALUATORS)}")
  t0 = time.perf_counter()
  records = readers.read_split(cfg.data, "val")
  # The API's model and device path; the crops come from the evaluation pipeline (grain
  # workers, sharded over processes), made by the same functions as the API's.
  predict = api.PoseEstimator.from_config(cfg, checkpoint_path).backend
  evaluator = evaluators.EVALUATORS[eval_type](records, cfg)
  if progress:
    print(f"{len(records)} boxes in {records.num_images} images ({cfg.data.dataset}, "
          f"{'GT' if cfg.data.use_gt_bbox else 'detector'} boxes, flip test "
          f"{'on' if cfg.test.flip else 'off'}, {jax.devices()[0].platform})", file=sys.stderr)
  metrics = loop.run_evaluation(
      predict, records, cfg, evaluator, cfg.test.batch_size, progress=progress,
      out_dir=str(out_dir) if jax.process_index() == 0 else None)
  if progress:
    print(f"evaluated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
  return {k: float(v) for k, v in metrics.items()}


def score_results(cfg, eval_type: str, results_file) -> dict[str, float]:
  """Scores an existing results file against cfg's ground truth (no model)."""
  if not os.path.exists(results_file):
    raise FileNotFoundError(f"--results file not found: {results_file}")
  check_inputs(cfg, need_images=False)
  files = evaluators.EVALUATORS[eval_type].ground_truth(cfg.data)
  if eval_type == "crowdpose":
    files["crowd_ignore"] = cfg.test.crowdpose_ignore
  metrics = evaluators.score_results_file(eval_type, results_file=str(results_file), **files)
  return {k: float(v) for k, v in metrics.items()}


def score_tracking(cfg, eval_type: str, results_dir, out_dir=None) -> dict[str, float]:
  """poseval's tracking metrics of a folder of tracked sequences, keys prefixed 'track/'.

  With `out_dir`, also writes poseval's files there (`evaluateTracking` with -s):
  `tracking/total_MOT_metrics.json` and one `tracking/<sequence>_MOT_metrics.json` per sequence
  (MOTA, MOTP, precision, recall per joint and in total).
  """
  from sbpose_jax.evaluators import posetrack_mota  # why: scipy: not for --help
  if eval_type != "posetrack18":
    raise ValueError(f"--track needs a PoseTrack18 config, this one evaluates {eval_type!r}")
  if not os.path.isdir(results_dir):
    raise ValueError(f"--track: --results must be a folder of per-sequence jsons: {results_dir}")
  gt = evaluators.EVALUATORS[eval_type].ground_truth(cfg.data)["gt_folder"]
  seqs = posetrack_mota.read_folders(gt, str(results_dir))
  total = posetrack_mota.finalize(posetrack_mota.accumulate(seqs))
  if out_dir is not None:
    folder = pathlib.Path(out_dir) / "tracking"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"total": total, **{name.split(".")[0]: m for name, m in
                                posetrack_mota.evaluate_per_sequence(seqs).items()}}
    for name, m in files.items():
      (folder / f"{name}_MOT_metrics.json").write_text(
          json.dumps(posetrack_mota.poseval_json(m), indent=1))
  return {f"track/{k}": v for k, v in posetrack_mota.table(total).items()}


def write_metrics(out_dir, metrics: dict, info: dict) -> pathlib.Path:
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  return outputs.write_json(out / "metrics.json", {"metrics": metrics, **info}, indent=1,
                            sort_keys=True)


def _command(args, overrides, out: dict) -> int:
  if bool(args.checkpoint) == bool(args.results):
    raise ValueError("give exactly one of --checkpoint (evaluate a model) or --results (score "
                     "a file)")
  if args.track and not args.results:
    raise ValueError("--track scores tracked results: give --results DIR")
  if args.results and not args.config:
    raise ValueError("--results needs --config (the dataset and its ground truth)")
  dataset = None
  if not args.config:
    from sbpose_jax import api  # why: JAX and orbax load after parsing
    dataset = api.model_dataset(args.checkpoint)
  config = config_lib.for_model(args.config, overrides, args.checkpoint, dataset)
  cfg, eval_type = config_lib.eval_config(config, args.eval)
  apply_flags(cfg, args)
  if args.results:
    metrics = score_results(cfg, eval_type, args.results)
    if args.track:
      metrics.update(score_tracking(cfg, eval_type, args.results, args.out_dir))
  else:
    explicit = config_lib.explicit_test_keys(overrides)
    if args.no_flip:
      explicit["flip"] = "--no-flip"
    metrics = evaluate_model(cfg, eval_type, args.checkpoint, args.out_dir,
                             progress=not args.quiet, explicit=explicit)
  info = dict(config=config.name, eval_type=eval_type, checkpoint=args.checkpoint,
              results=args.results, ann_file=str(data_path(cfg, "val_ann")),
              use_gt_bbox=bool(cfg.data.use_gt_bbox), flip=bool(cfg.test.flip),
              decode=cfg.test.decode, dtype=str(cfg.model.dtype),
              test={**cfg.test.to_dict(), "input_size": list(cfg.data.input_size),
                    "heatmap_size": list(cfg.data.heatmap_size), "padding": cfg.data.padding},
              **({"gt_file": str(data_path(cfg, "gt_mat_file"))} if eval_type == "mpii" and
                 cfg.data.get("gt_mat_file") else {}),
              **({"crowdpose_ignore": cfg.test.get("crowdpose_ignore", "2020")}
                 if eval_type == "crowdpose" else {}))
  path = write_metrics(args.out_dir, metrics, info)
  print(evaluators.format_table({k: v for k, v in metrics.items()
                                 if not k.startswith("track/")}, eval_type))
  if args.track:
    # why: loads JAX and the model stack on use, so that --help answers at once
    from sbpose_jax.evaluators import posetrack_mota
    print(posetrack_mota.format_table({k[6:]: v for k, v in metrics.items()
                                       if k.startswith("track/")}))
  results_file = pathlib.Path(args.out_dir) / "keypoints.json"
  wrote = f"{results_file} and {path}" if args.checkpoint and results_file.exists() else path
  print(f"wrote {wrote}", file=sys.stderr)
  out.update(metrics)
  return 0


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
  """The command line: returns the metrics; an error is one line (cli.py) and SystemExit with a
  non-zero status."""
  metrics = {}
  status = cli.run(lambda args, rest: _command(args, rest, metrics), build_parser(), argv)
  if status:
    raise SystemExit(status)
  return metrics


if __name__ == "__main__":
  main()
