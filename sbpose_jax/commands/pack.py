"""Packing: `python -m sbpose_jax.pack --config NAME [--split train|val] [--out DIR] [--skip-bad]`.

Turns a split's `Records` into a TFDS dataset stored as ArrayRecord, one example per person
instance: a JPEG of the region every training augmentation of the config can reach, at one
fixed size per config, plus joints, centre/scale and box in the crop's frame and the ids tying
it back to the annotation (data/packed.py, docs/packing.md). Training reads it with
`--config.data.source=packed`.

Shards are made in parallel (one worker process per core by default), each written under a
temporary name and renamed when complete, so re-running the command finishes an interrupted
pack. A bad image or annotation stops the run with one line naming it, or, with `--skip-bad`,
is left out and counted.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import multiprocessing as mp
import os
import pathlib
import shutil
import sys

import numpy as np

from sbpose_jax.commands import cli
from sbpose_jax.commands import config as config_lib
from sbpose_jax import keypoints
from sbpose_jax.data.records import Records

# `sbpose_jax.data.packed` imports grain (and JAX): each function that needs it imports it, so
# that `--help` answers at once.


class PackError(cli.UserError):
  """A bad image or annotation (the message names it)."""


def shard_size(num_records: int) -> int:
  """Instances per shard: at least 64 shards of at most 1,024 (fixed by N alone, so an
  interrupted pack resumes with any worker count)."""
  return int(min(1024, max(16, math.ceil(num_records / 64))))


def shard_name(split: str, i: int, n: int) -> str:
  from sbpose_jax.data import packed  # why: grain loads on use, not for --help
  return f"{packed.NAME}-{split}.array_record-{i:05d}-of-{n:05d}"


# Worker state, set once per process by `_init` (the records arrive pickled with it).
_STATE: dict = {}


def _init(state: dict) -> None:
  import cv2  # why: OpenCV only for this function; grain workers import the module
  cv2.setNumThreads(1)
  _STATE.update(state)


def _pack_shard(i: int) -> tuple[int, int]:
  """Writes shard i; returns (i, instances handled). Raises PackError unless skip_bad."""
  from array_record.python import array_record_module  # why: loaded on use only
  # why: loads JAX and the model stack on use, so that --help answers at once
  from sbpose_jax.data import packed, pipeline
  s = _STATE
  records, split, out, progress = s["records"], s["split"], s["out"], s["progress"]
  lo, hi = i * s["chunk"], min(len(records), (i + 1) * s["chunk"])
  info = keypoints.get(records.dataset)
  feats = packed.features(records.num_joints, s["chroma"])
  path = out / shard_name(split, i, s["num_shards"])
  tmp = path.with_name(path.name + ".tmp")
  writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1")
  kept, skipped, image_cache = [], [], {}
  for row in range(lo, hi):
    try:
      img_idx = int(records.image_index[row])
      if img_idx not in image_cache:
        image_cache.clear()
        image_cache[img_idx] = pipeline.decode_image(records.image_path(row), "bgr")
      ex = packed.example(records, row, image_cache[img_idx], s["pack_wh"], s["ranges"],
                          info.upper_body_ids, info.num_joints_half_body, s["quality"],
                          s["chroma"])
    except (pipeline.BadImageError, ValueError) as e:
      if not s["skip_bad"]:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise PackError(f"{e} (record {row}; --skip-bad leaves it out)") from None
      skipped.append({"row": row, "reason": str(e)})
      continue
    writer.write(feats.serialize_example(ex))
    kept.append({"row": row, "image_to_crop": ex["image_to_crop"].tolist(),
                 "image_wh": ex["image_wh"].tolist()})
  writer.close()
  os.replace(tmp, path)
  marker = progress / f"shard-{i:05d}.json"
  marker.with_suffix(".tmp").write_text(json.dumps({"kept": kept, "skipped": skipped}))
  os.replace(marker.with_suffix(".tmp"), marker)
  return i, hi - lo


def _plan(records: Records, config, split: str, out: pathlib.Path) -> dict:
  from sbpose_jax.data import packed  # why: grain loads on use, not for --help
  ann = pathlib.Path(config.data.root) / config.data[f"{split}_ann"]
  chunk = shard_size(len(records))
  return dict(key=packed.pack_key(config, split), annotations=packed.file_digest(ann),
              image_root=str(pathlib.Path(records.image_root).resolve()),
              num_records=len(records), chunk=chunk,
              num_shards=max(1, math.ceil(len(records) / chunk)))


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def pack_differences(old: dict, new: dict) -> str:
  """`key.pack_wh: [96, 128] -> [48, 64]; annotations: <the file changed>` between two plans."""
  keys = ("key", "annotations", "image_root", "num_records")
  a = _flat({k: old.get(k) for k in keys})
  b = _flat({k: new.get(k) for k in keys})
  diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  shown = []
  for k in diff[:5]:
    if k.startswith("annotations"):
      shown.append("the annotation file changed")
    else:
      shown.append(f"{k.removeprefix('key.')}: {a.get(k, '<absent>')} -> "
                   f"{b.get(k, '<absent>')}")
  return "; ".join(dict.fromkeys(shown)) + (" ..." if len(diff) > 5 else "") if shown else \
      "the settings differ"


def write_pack(records: Records, config, split: str, out, *, workers: int | None = None,
               skip_bad: bool = False, progress_bar: bool = True) -> dict:
  """Packs `records` into `out` (resuming an interrupted pack); returns `pack-<split>.json`.

  Raises PackError naming a bad image/annotation (unless skip_bad), ValueError when `out`
  holds an unfinished pack of other settings.
  """
  out = pathlib.Path(out)
  progress = out / f".progress-{split}"
  plan = _plan(records, config, split, out)
  finished = out / f"pack-{split}.json"
  if finished.exists():
    meta = json.loads(finished.read_text())
    if (meta["key"], meta["annotations"]) != (plan["key"], plan["annotations"]):
      raise ValueError(f"{out} holds a {split} pack of other settings ({finished}): "
                       f"{pack_differences(meta, plan)}; use another --out or delete it")
    return meta
  progress.mkdir(parents=True, exist_ok=True)
  plan_file = progress / "plan.json"
  if plan_file.exists():
    old = json.loads(plan_file.read_text())
    if old != plan:
      raise ValueError(f"{out} holds an unfinished {split} pack of other settings "
                       f"({plan_file}): {pack_differences(old, plan)}; use another --out or "
                       "delete it")
  else:
    plan_file.write_text(json.dumps(plan, indent=1))
  n = plan["num_shards"]
  todo = [i for i in range(n) if not ((progress / f"shard-{i:05d}.json").exists()
                                      and (out / shard_name(split, i, n)).exists())]
  state = dict(records=records, split=split, out=out, progress=progress, chunk=plan["chunk"],
               num_shards=n, pack_wh=plan["key"]["pack_wh"], ranges=plan["key"]["ranges"],
               quality=plan["key"]["jpeg_quality"], chroma=plan["key"]["chroma"],
               skip_bad=skip_bad)
  from tqdm import tqdm  # why: a progress bar only when asked for
  done_rows = len(records) - sum(min(len(records), (i + 1) * plan["chunk"]) - i * plan["chunk"]
                                 for i in todo)
  bar = tqdm(total=len(records), initial=done_rows, unit="inst", disable=not progress_bar,
             desc=f"packing {split}")
  workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
  if workers <= 1:
    _init(state)
    for i in todo:
      bar.update(_pack_shard(i)[1])
  else:
    # Spawned, not forked: a fork of a process whose OpenCV (or JAX) thread pool is running
    # copies locks held by threads that do not exist in the child, which then hangs in its
    # first cv2 call (seen: `cv2.setNumThreads` in a pack run from a test process).
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(state,)) as pool:
      for _, count in pool.imap_unordered(_pack_shard, todo):
        bar.update(count)
  bar.close()
  return _finish(records, config, split, out, plan)


def _finish(records: Records, config, split: str, out: pathlib.Path, plan: dict) -> dict:
  """Records of the kept rows, TFDS metadata of every finished split, `pack-<split>.json`."""
  import tensorflow_datasets as tfds  # why: TFDS loads only for packed crops
  from sbpose_jax.data import packed  # why: grain loads on use, not for --help
  progress = out / f".progress-{split}"
  n = plan["num_shards"]
  parts = [json.loads((progress / f"shard-{i:05d}.json").read_text()) for i in range(n)]
  kept_items = [k for p in parts for k in p["kept"]]
  kept = np.array([k["row"] for k in kept_items], np.int64)
  skipped = [s for p in parts for s in p["skipped"]]
  if not len(kept):
    raise PackError(f"every instance of {split} was skipped as bad; nothing to pack")
  sub = records.select(kept)
  sub = dataclasses.replace(sub, extra={
      **sub.extra, "pack_source_row": kept,
      "pack_image_to_crop": np.array([k["image_to_crop"] for k in kept_items], np.float64),
      "pack_image_wh": np.array([k["image_wh"] for k in kept_items], np.int32)})
  rec_dir, tmp_dir = out / f"records-{split}", out / f"records-{split}.tmp"
  shutil.rmtree(tmp_dir, ignore_errors=True)
  sub.save(tmp_dir)
  shutil.rmtree(rec_dir, ignore_errors=True)
  os.replace(tmp_dir, rec_dir)
  shard_lengths = [len(p["kept"]) for p in parts]
  meta = dict(complete=True, key=plan["key"], annotations=plan["annotations"],
              image_root=plan["image_root"], config=str(config.name),
              num_examples=int(len(kept)), num_skipped=len(skipped), skipped=skipped,
              shard_lengths=shard_lengths,
              created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
  (out / f"pack-{split}.json").write_text(json.dumps(meta, indent=1))
  splits = []
  for other in ("train", "val"):
    f = out / f"pack-{other}.json"
    if f.exists():
      m = json.loads(f.read_text())
      size = sum((out / shard_name(other, i, len(m["shard_lengths"]))).stat().st_size
                 for i in range(len(m["shard_lengths"])))
      splits.append(tfds.core.SplitInfo(name=other, shard_lengths=m["shard_lengths"],
                                        num_bytes=size))
  tfds.folder_dataset.write_metadata(
      data_dir=str(out), features=packed.features(records.num_joints, plan["key"]["chroma"]),
      split_infos=splits,
      filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", check_data=False,
      description=f"sbpose_jax packed person crops of config {config.name} "
                  "(python -m sbpose_jax.pack)")
  shutil.rmtree(progress, ignore_errors=True)
  return meta


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m sbpose_jax.pack",
                              description=__doc__.split("\n\n")[0],
                              epilog="Any --config.a.b=value overrides a config field.")
  p.add_argument("--config", default="demo", help="config name or path (default: demo)")
  p.add_argument("--split", choices=("train", "val"), default="train",
                 help="which split of the config's data to pack (default train)")
  p.add_argument("--out", help="pack directory (default: data.packed_dir, else "
                               "<data.root>/packed/<config name>)")
  p.add_argument("--skip-bad", action="store_true",
                 help="leave out (and count) bad images/annotations instead of stopping")
  p.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  return p


def _command(args, rest) -> int:
  from sbpose_jax.data import packed, readers, synthetic  # why: grain and TFDS: not for --help
  config = config_lib.load(args.config, rest)
  synthetic.ensure_from_config(config)
  records = readers.read_split(config.data, args.split)
  out = pathlib.Path(args.out) if args.out else packed.default_dir(config)
  meta = write_pack(records, config, args.split, out, workers=args.workers or None,
                    skip_bad=args.skip_bad, progress_bar=not args.no_progress)
  wh = meta["key"]["pack_wh"]
  print(f"{out}: {meta['num_examples']} {args.split} crops of {wh[0]}x{wh[1]} "
        f"({meta['num_skipped']} skipped as bad); wrote {out / f'pack-{args.split}.json'}, "
        f"{out / f'records-{args.split}'} and {len(meta['shard_lengths'])} shards")
  return 0


def main(argv=None) -> int:
  """The command line; an error is one line (cli.py), the traceback only with --debug."""
  return cli.run(_command, build_parser(), argv)


if __name__ == "__main__":
  sys.exit(main())
