"""Convert and evaluate every published checkpoint; print ours beside the published numbers.

  python scripts/reproduce_table.py --checkpoints ~/Downloads/mmpose --data-root data \
      [--out-dir out/reproduce] [--rows 'coco_*'] [--batch-size 64]

--checkpoints holds the .pth files under their published names (e.g.
res50_coco_256x192-ec54d7f3_20200709.pth; see docs/published.md or ROWS below); a folder
with a file's stem holding an already converted saved model is used as is. --data-root holds
one folder per dataset as the configs expect (coco/, ochuman/, aic/, mpii/, crowdpose/,
posetrack18/: `data.root` = DATA_ROOT/<last part of the config's root>). Rows whose checkpoint,
config or data is missing are listed as skipped. Evaluation runs in float32 (parity), flip test
on, like the published numbers. `--override DATASET:KEY=VALUE` changes a config field for the
rows of one dataset (`all:` for every row), e.g. to point at differently named files.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# (config, published checkpoint file, published values in the order of the evaluation type's
# published columns, evaluators.EVALUATORS[type].published_columns).
_C = {50: "res50_coco_256x192-ec54d7f3_20200709", 5038: "res50_coco_384x288-e6f795e9_20200709",
      101: "res101_coco_256x192-6e6babf0_20200708", 10138: "res101_coco_384x288-8c71bdc9_20200709",
      152: "res152_coco_256x192-f6e307c2_20200709", 15238: "res152_coco_384x288-3860d4c9_20200709"}
ROWS = [
    ("coco_res50", _C[50], ".718 .898 .795 .773 .937"),
    ("coco_res50_384x288", _C[5038], ".731 .900 .799 .783 .931"),
    ("coco_res101", _C[101], ".726 .899 .806 .781 .939"),
    ("coco_res101_384x288", _C[10138], ".748 .905 .817 .798 .940"),
    ("coco_res152", _C[152], ".735 .905 .812 .790 .943"),
    ("coco_res152_384x288", _C[15238], ".750 .908 .821 .800 .942"),
    ("coco_wholebody_res50", "res50_coco_wholebody_256x192-9e37ed88_20201004",
     ".652 .739 .614 .746 .608 .716 .460 .584 .457 .578"),
    ("coco_wholebody_res50_384x288", "res50_coco_wholebody_384x288-ce11e294_20201004",
     ".666 .747 .635 .763 .732 .812 .537 .647 .573 .671"),
    ("coco_wholebody_res101", "res101_coco_wholebody_256x192-7325f982_20201004",
     ".670 .754 .640 .767 .611 .723 .463 .589 .533 .647"),
    ("coco_wholebody_res101_384x288", "res101_coco_wholebody_384x288-6c137b9a_20201004",
     ".692 .770 .680 .798 .747 .822 .549 .658 .597 .692"),
    ("coco_wholebody_res152", "res152_coco_wholebody_256x192-5de8ae23_20201004",
     ".682 .764 .662 .788 .624 .728 .482 .606 .548 .661"),
    ("coco_wholebody_res152_384x288", "res152_coco_wholebody_384x288-eab8caa8_20201004",
     ".703 .780 .693 .813 .751 .825 .559 .667 .610 .705"),
    ("ochuman_res50", _C[50], ".546 .726 .593 .592 .755"),
    ("ochuman_res50_384x288", _C[5038], ".539 .723 .574 .588 .756"),
    ("ochuman_res101", _C[101], ".559 .724 .606 .605 .751"),
    ("ochuman_res101_384x288", _C[10138], ".571 .715 .615 .615 .748"),
    ("ochuman_res152", _C[152], ".570 .725 .617 .616 .754"),
    ("ochuman_res152_384x288", _C[15238], ".582 .723 .627 .627 .752"),
    ("aic_res101", "res101_aic_256x192-79b35445_20200826", ".650 .947 .726 .680 .954"),
    ("mpii_res50", "res50_mpii_256x256-418ffc88_20200812", ".882 .329"),
    ("mpii_res101", "res101_mpii_256x256-416f5d71_20200812", ".887 .333"),
    ("mpii_res152", "res152_mpii_256x256-3ecba29d_20200812", ".890 .347"),
    ("mpii_trb_res50", "res50_mpii_trb_256x256-896036b8_20200812", ".887 .858 .868"),
    ("mpii_trb_res101", "res101_mpii_trb_256x256-cfad2f05_20200812", ".890 .863 .873"),
    ("mpii_trb_res152", "res152_mpii_trb_256x256-dd369ce6_20200812", ".897 .868 .879"),
    ("crowdpose_res50", "res50_crowdpose_256x192-f1ddd03a_20201017",
     ".634 .805 .689 .742 .646 .503"),
    ("crowdpose_res101", "res101_crowdpose_256x192-ad003be3_20201017",
     ".647 .814 .703 .748 .658 .518"),
    ("crowdpose_res101_320x256", "res101_crowdpose_320x256-7723ede3_20201017",
     ".659 .819 .713 .757 .669 .536"),
    ("crowdpose_res152", "res152_crowdpose_256x192-a6507ad0_20201017",
     ".653 .815 .710 .751 .665 .526"),
    ("posetrack18_res50", "res50_posetrack18_256x192-a62807c7_20201028",
     "86.5 87.5 82.3 75.6 79.9 78.6 74.0 81.0"),
    ("posetrack18_res50_det", "res50_posetrack18_256x192-a62807c7_20201028",
     "78.9 81.9 77.8 70.8 75.3 73.2 66.4 75.2"),
]

# Published values known to be off (docs/reference.md §0); shown under the table.
NOTES = {
    "coco_wholebody_res50": "published Whole AP/AR 0.457/0.578 is probably a typo; MMPose's "
                            "later README gives 0.520/0.633 for the same checkpoint",
}


def parse_overrides(items) -> list[tuple[str, str, str]]:
  out = []
  for item in items or ():
    if ":" not in item or "=" not in item:
      raise SystemExit(f"--override {item!r} must look like DATASET:KEY=VALUE")
    scope, rest = item.split(":", 1)
    key, value = rest.split("=", 1)
    out.append((scope, key.removeprefix("config."), value))
  return out


def row_config(name: str, args, overrides):
  """The evaluation config of one row (data root, float32, CLI-level overrides)."""
  from sbpose_jax.commands import config as config_lib  # why: only this test or script needs it
  cfg, eval_type = config_lib.eval_config(config_lib.load(name, args.config_overrides))
  cfg.model.dtype = args.dtype
  if args.data_root:
    cfg.data.root = str(pathlib.Path(args.data_root) / pathlib.PurePath(cfg.data.root).name)
  if args.batch_size:
    cfg.test.batch_size = args.batch_size
  for scope, key, value in overrides:
    if scope in ("all", cfg.data.dataset, name):
      config_lib.apply_override(cfg, key, config_lib._parse_value(value))
  return cfg, eval_type


def model_for(stem: str, args) -> pathlib.Path:
  """A saved model for checkpoint `stem`: given pre-converted, cached, or converted now."""
  from sbpose_jax.weights import conversion  # why: only this test or script needs it
  from sbpose_jax.weights import saved_model
  ready = pathlib.Path(args.checkpoints) / stem
  if saved_model.is_saved_model(ready):
    return ready
  dst = pathlib.Path(args.out_dir) / "models" / stem
  if saved_model.is_saved_model(dst):
    return dst
  src = pathlib.Path(args.checkpoints) / f"{stem}.pth"
  if not src.is_file():
    raise FileNotFoundError(f"checkpoint {src.name} not in {args.checkpoints}")
  print(f"converting {src.name}", file=sys.stderr)
  conversion.convert(src, dst, verify_hash=not args.no_verify_hash)
  return dst


def run_row(name: str, stem: str, published: str, args, overrides) -> dict:
  from sbpose_jax import evaluators  # why: only this test or script needs it
  from sbpose_jax.commands import evaluate
  cfg, eval_type = row_config(name, args, overrides)
  evaluate.check_inputs(cfg)
  model = model_for(stem, args)
  t = time.perf_counter()
  metrics = evaluate.evaluate_model(cfg, eval_type, model, pathlib.Path(args.out_dir) / name,
                                    progress=not args.quiet)
  cols = evaluators.EVALUATORS[eval_type].published_columns
  pub = [float(v) for v in published.split()]
  ours = [metrics.get(key, float("nan")) for _, key in cols]
  return dict(config=name, checkpoint=stem, eval_type=eval_type,
              columns=[label for label, _ in cols],
              published=pub, ours=ours, seconds=round(time.perf_counter() - t, 1))


def format_row(r: dict) -> str:
  cells = []
  for c, o, p in zip(r["columns"], r["ours"], r["published"]):
    digits = 1 if p > 1 else 3
    cells.append(f"{c} {o:.{digits}f} / {p:.{digits}f} ({o - p:+.{digits}f})")
  return f"| {r['config']} | " + " | ".join(cells) + " |"


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 2)[2])
  p.add_argument("--checkpoints", required=True, help="folder of the published .pth files")
  p.add_argument("--data-root", help="folder holding coco/, mpii/, ... (default: the configs')")
  p.add_argument("--out-dir", default="out/reproduce_table")
  p.add_argument("--rows", default="*", help="fnmatch pattern(s) on config names, comma separated")
  p.add_argument("--batch-size", type=int)
  p.add_argument("--dtype", default="float32", help="compute dtype (float32 for parity)")
  p.add_argument("--override", action="append", help="DATASET:KEY=VALUE (repeatable)")
  p.add_argument("--no-verify-hash", action="store_true", help="skip the sha256 file-name check")
  p.add_argument("--quiet", action="store_true")
  args, rest = p.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    p.error(f"unrecognised arguments: {' '.join(bad)}")
  args.config_overrides = rest
  overrides = parse_overrides(args.override)
  patterns = args.rows.split(",")
  done, skipped = [], []
  for name, stem, published in ROWS:
    if not any(fnmatch.fnmatch(name, pat) for pat in patterns):
      continue
    try:
      done.append(run_row(name, stem, published, args, overrides))
      print(format_row(done[-1]), flush=True)
    except (FileNotFoundError, ValueError) as e:
      skipped.append((name, str(e)))
      print(f"skipped {name}: {e}", file=sys.stderr, flush=True)
  print("\nours / published (difference)")
  for r in done:
    print(format_row(r))
  for name, why in skipped:
    print(f"| {name} | skipped: {why} |")
  for r in done:
    if r["config"] in NOTES:
      print(f"note: {r['config']}: {NOTES[r['config']]}")
  out = pathlib.Path(args.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "table.json").write_text(json.dumps(dict(rows=done, skipped=skipped), indent=1))
  return done


if __name__ == "__main__":
  main()
