"""Packed crops: crop size against JPEG bytes, decode time and the pixel difference to the
full-image path (docs/packing.md).

  python scripts/bench_pack.py --config coco_res50 --scales 0.6 0.8 1.0 \
      [--data fixture|synthetic] [--epochs 10]

For each `data.pack_scale` it packs the data (a temporary directory), then draws the same
training samples (same seed) through the full-image path and the packed path with the warp on
the host, and reports: pack size, mean JPEG KB, decode ms per crop (the loader's decode,
`packed.decode_crop`: simplejpeg to RGB, or to 4:2:0 planes with `data.pack_chroma=planes`;
one thread, CPU time; `--cv2-decode` times cv2.imdecode + BGR→RGB instead, as before),
joints and target-weight max |difference| (px), and the pixel |difference| (mean, 99th
percentile, max, grey levels) with the config's half-body probability, with none (0) and
with half-body on every eligible sample (1).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from sbpose_jax.commands import config as config_lib  # noqa: E402
from sbpose_jax.commands import pack as pack_lib  # noqa: E402
from sbpose_jax.data import packed  # noqa: E402
from sbpose_jax.data import pipeline  # noqa: E402
from sbpose_jax.data import readers  # noqa: E402
from sbpose_jax.data import synthetic  # noqa: E402

FIXTURES = REPO.parent / "shared" / "fixtures" / "coco"


def data_overrides(kind: str, tmp: pathlib.Path) -> list[str]:
  """Config overrides pointing `data` at the COCO fixture or a synthetic set."""
  if kind == "fixture":
    root, ann, images = FIXTURES, "test_coco.json", "."
  else:
    root = synthetic.ensure_synthetic(tmp / "syn", {"train": 40, "val": 1}, seed=0,
                                      image_size=(640, 480))
    ann, images = "annotations/person_keypoints_train.json", "train"
  return [f"--config.data.root={root}", f"--config.data.train_ann={ann}",
          f"--config.data.train_images={images}", "--config.data.num_workers=0"]


def compare(records, pack, config, epochs: int) -> dict:
  """Same draws through both paths: max joint/weight difference, pixel differences."""
  kw = dict(batch_size=1, seed=0, num_workers=0, host_targets=False, num_epochs=epochs)
  full = list(pipeline.train_dataset(records, config, **kw))
  pk = list(packed.train_dataset(pack, config, on_device=False, **kw))
  dj = max(float(np.abs(a["joints"] - b["joints"]).max()) for a, b in zip(full, pk))
  dw = max(float(np.abs(a["target_weight"] - b["target_weight"]).max())
           for a, b in zip(full, pk))
  d = np.concatenate([np.abs(a["image"].astype(np.int16) - b["image"]).ravel()
                      for a, b in zip(full, pk)])
  return dict(joints=dj, weights=dw, mean=float(d.mean()), p99=float(np.percentile(d, 99)),
              max=int(d.max()))


def decode_ms(pack, use_cv2: bool = False) -> tuple[float, float]:
  """(mean JPEG KB, CPU ms per decode as the loader decodes) over the pack's crops."""
  blobs = [packed.read_jpeg(pack.source, i)[0] for i in range(len(pack.source))]
  if use_cv2:
    decode = lambda b: cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR),
                                    cv2.COLOR_BGR2RGB)
  else:
    decode = lambda b: packed.decode_crop(b, "planes" if pack.planes else "rgb")
  for b in blobs:
    decode(b)
  reps = max(1, 200 // len(blobs))
  t0 = time.process_time()
  for _ in range(reps):
    for b in blobs:
      decode(b)
  ms = 1e3 * (time.process_time() - t0) / (reps * len(blobs))
  return float(np.mean([len(b) for b in blobs])) / 1024, ms


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="coco_res50")
  p.add_argument("--data", default="fixture", choices=("fixture", "synthetic"))
  p.add_argument("--scales", type=float, nargs="+", default=[0.6, 0.8, 1.0])
  p.add_argument("--epochs", type=int, default=10, help="draws per instance")
  p.add_argument("--cv2-decode", action="store_true", help="time cv2's decode instead")
  args, overrides = p.parse_known_args(argv)
  cv2.setNumThreads(1)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_pack_"))
  base = data_overrides(args.data, tmp) + overrides
  print(f"# {args.config} on {args.data}; {args.epochs} draws per instance")
  print("| pack_scale | crop WxH | JPEG KB | decode ms | joints / weights max diff | "
        "pixels mean / p99 / max (half-body cfg) | no half-body | half-body p=1 |")
  print("|---|---|---|---|---|---|---|---|")
  for scale in args.scales:
    config = config_lib.load(args.config, base + [f"--config.data.pack_scale={scale}"])
    records = readers.read_split(config.data, "train")
    out = tmp / f"pack_{scale}"
    pack_lib.write_pack(records, config, "train", out, workers=1, progress_bar=False)
    pack = packed.open_pack(out, config)
    kb, ms = decode_ms(pack, args.cv2_decode)
    cells = []
    for hb in (None, 0.0, 1.0):
      cfg = config if hb is None else config_lib.load(
          args.config, base + [f"--config.data.pack_scale={scale}",
                               f"--config.data.half_body_prob={hb}"])
      cells.append(compare(records, pack, cfg, args.epochs))
    wh = pack.pack_wh
    print(f"| {scale} | {wh[0]}x{wh[1]} | {kb:.0f} | {ms:.2f} | "
          f"{cells[0]['joints']:.1e} / {cells[0]['weights']:.0e} | "
          + " | ".join(f"{c['mean']:.2f} / {c['p99']:.0f} / {c['max']}" for c in cells) + " |",
          flush=True)


if __name__ == "__main__":
  main()
