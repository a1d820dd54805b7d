"""Training-input throughput: the grain pipeline against the bare loop on the same files.

  python scripts/bench_input.py                       # synthetic + COCO fixture, 1 and ncpu workers
  python scripts/bench_input.py --data fixture --workers 1 2 4 --batches 20 --layouts

Rows (images/s, steady state after --warmup batches; the parent only touches each batch):
  * bare x1: one process, no framework: decode → flip/half-body/scale-rotation → warp →
    targets → stack, the same transform objects as the pipeline, called in a plain loop;
  * bare xN: N such loops in N forked processes at once, summed: the floor for N workers;
  * pipeline w=0: `pipeline.train_dataset(..., num_workers=0)` (in-process, one read thread);
  * pipeline w=N: N spawned grain workers, one read thread each.
  Overhead = 1 − pipeline(w=N) / bare(xN); the target is ≤ 15%.
With --paths full packed device it also times the packed person crops (docs/packing.md):
  * full: today's path, the full image decoded and warped on the host;
  * packed: `python -m sbpose_jax.pack` crops of the same records, warped on the host;
  * device: the same crops shipped with their warp matrices (`data.warp_on_device`): the host
    only decodes; the warp runs in the jitted step (not timed here: host CPU only).
    `--config.data.pack_chroma=planes` packs (and ships) 4:2:0 planes instead (data/ycc420.py).
With --layouts it also times two other places to batch (the design choice in
data/pipeline.py): `iterbatch` (grain's recipe: `to_iter_dataset().batch().mp_prefetch()`,
batches depend on the worker count) and `after` (`mp_prefetch()` then `.batch()`: every
sample crosses the process boundary on its own).

Data: `synthetic` (the generator's 256x192 images, small to decode) and `fixture` (the 4 COCO
val2017 images of ../shared/fixtures/coco, 500x333-640x429, as COCO train is). Both are
presented as --virtual-size records (rows repeated) so that grain's shuffle costs what it
costs on COCO train (docs/ecosystem.md §1: index_shuffle is ~1/n per lookup).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import multiprocessing as mp
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import grain  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from sbpose_jax.commands import config as config_lib  # noqa: E402
from sbpose_jax import keypoints  # noqa: E402
from sbpose_jax.data import pipeline  # noqa: E402
from sbpose_jax.data import readers  # noqa: E402
from sbpose_jax.data import synthetic  # noqa: E402

FIXTURES = REPO.parent / "shared" / "fixtures" / "coco"


# ------------------------------------------------------------------------------------------------
# Data.

class _ModSource:
  """A pack's raw ArrayRecord source presented as `size` examples (example i is i mod n)."""

  def __init__(self, source, size: int):
    self.source, self.size = source, size

  def __len__(self):
    return self.size

  def __getitem__(self, i):
    return self.source[int(i) % len(self.source)]


def packed_view(records, config, virtual_size: int, out: pathlib.Path, ann_file):
  """Packs `records` into `out` (once) and returns the pack presented as virtual_size rows."""
  import copy  # why: only this test or script needs it
  from sbpose_jax.commands import pack as pack_lib  # why: only this test or script needs it
  from sbpose_jax.data import packed  # why: only this test or script needs it
  config = copy.deepcopy(config)
  config.data.root, config.data.train_ann = str(ann_file.parent), ann_file.name
  pack_lib.write_pack(records, config, "train", out, progress_bar=False)
  pack = packed.open_pack(out, config)
  rows = np.arange(virtual_size) % len(pack)
  return packed.Pack(pack.directory, "train", pack.records.select(rows),
                     _ModSource(pack.source.data_source, virtual_size), pack.meta)


def load_records(kind: str, config, virtual_size: int, synthetic_root: pathlib.Path,
                 base: bool = False):
  if kind == "synthetic":
    root = synthetic.ensure_synthetic(synthetic_root, {"train": 200, "val": 1}, seed=0)
    records = readers.read_coco(root / "annotations/person_keypoints_train.json",
                                root / "train", input_size=tuple(config.data.input_size))
  elif kind == "fixture":
    if not FIXTURES.is_dir():
      raise SystemExit(f"{FIXTURES} is absent")
    records = readers.read_coco(FIXTURES / "test_coco.json", FIXTURES,
                                input_size=tuple(config.data.input_size))
  else:
    raise SystemExit(f"unknown --data {kind!r}")
  if base:
    return records
  return records.select(np.arange(virtual_size) % len(records))


# ------------------------------------------------------------------------------------------------
# The bare loop.

def bare_loop(records, config, num: int, batch_size: int, seed: int = 0,
              host_targets: bool = True):
  """(images/s, CPU ms per image) of decode + augment + warp + target + stack, plain loop."""
  cv2.setNumThreads(1)
  info = keypoints.get(records.dataset)
  load = pipeline.ImageLoader(records, config.data.colour_order)
  random_ts = pipeline.augmentations(config, info)
  maps = pipeline.crop_and_target(config, host_targets)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(records))
  batch, t0 = [], None
  for n in range(num + batch_size):
    if n == batch_size:  # the first batch warms caches and the allocator
      t0, c0 = time.perf_counter(), time.process_time()
    e = load.map(order[n % len(order)])
    for t in random_ts:
      e = t.random_map(e, rng)
    for t in maps:
      e = t.map(e)
    batch.append(e)
    if len(batch) == batch_size:
      pipeline.StackSamples()([batch])
      batch = []
  return num / (time.perf_counter() - t0), 1e3 * (time.process_time() - c0) / num


def _bare_worker(args):
  return bare_loop(*args)


def bare_parallel(records, config, num: int, batch_size: int, procs: int, host_targets: bool):
  """`procs` concurrent bare loops (forked): (summed images/s, mean CPU ms per image)."""
  if procs == 1:
    return bare_loop(records, config, num, batch_size, 0, host_targets)
  with mp.get_context("fork").Pool(procs) as pool:
    out = pool.map(_bare_worker, [(records, config, num, batch_size, s, host_targets)
                                  for s in range(procs)])
  return float(sum(r for r, _ in out)), float(np.mean([c for _, c in out]))


def _cpu_seconds() -> float:
  """user + system CPU of this process and its live children (the grain workers)."""
  total = 0.0
  me = psutil.Process()
  for proc in [me] + me.children(recursive=True):
    try:
      t = proc.cpu_times()
      total += t.user + t.system
    except psutil.NoSuchProcess:
      pass
  return total


# ------------------------------------------------------------------------------------------------
# Pipelines.

def _layout(records, config, layout: str, batch_size: int, workers: int, host_targets: bool):
  if layout in ("packed", "device"):
    from sbpose_jax.data import packed  # why: only this test or script needs it
    return packed.train_dataset(records, config, on_device=layout == "device",
                                batch_size=batch_size, seed=0, num_workers=workers,
                                host_targets=host_targets)
  if layout == "mapbatch":
    return pipeline.train_dataset(records, config, batch_size=batch_size, seed=0,
                                  num_workers=workers, host_targets=host_targets)
  samples = pipeline.train_samples(records, config, seed=0, host_targets=host_targets)
  it = samples.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                 prefetch_buffer_size=2 * batch_size))
  opts = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)
  pipeline.prepare_multiprocessing()
  if layout == "iterbatch":
    it = it.batch(batch_size, drop_remainder=True)
    return it.mp_prefetch(opts, worker_init_fn=pipeline.worker_init) if workers else it
  if layout == "after":
    if workers:
      it = it.mp_prefetch(opts, worker_init_fn=pipeline.worker_init)
    return it.batch(batch_size, drop_remainder=True)
  raise ValueError(layout)


def time_pipeline(records, config, layout: str, workers: int, batch_size: int,
                  batches: int, warmup: int, host_targets: bool) -> tuple[float, float, float]:
  """(steady-state images/s, CPU ms per image over all processes, seconds to first batch)."""
  t_start = time.perf_counter()
  it = iter(_layout(records, config, layout, batch_size, workers, host_targets))
  b = next(it)
  first = time.perf_counter() - t_start
  for _ in range(warmup - 1):
    b = next(it)
  t0, c0 = time.perf_counter(), _cpu_seconds()
  for _ in range(batches):
    b = next(it)
    float(b["image"].flat[0])  # touch, as a host-to-device copy would
  rate = batches * batch_size / (time.perf_counter() - t0)
  cpu_ms = 1e3 * (_cpu_seconds() - c0) / (batches * batch_size)
  del b
  if hasattr(it, "close"):
    it.close()
  del it
  gc.collect()
  return rate, cpu_ms, first


# ------------------------------------------------------------------------------------------------

def _cpu_name() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="coco_res50")
  p.add_argument("--data", nargs="+", default=["synthetic", "fixture"])
  p.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
  p.add_argument("--warmup", type=int, default=4, help="untimed batches (worker start-up)")
  p.add_argument("--repeats", type=int, default=2, help="median of this many measurements")
  p.add_argument("--virtual-size", type=int, default=150_000)
  p.add_argument("--layouts", action="store_true", help="also time the other batch layouts")
  p.add_argument("--paths", nargs="+", default=["full"], choices=("full", "packed", "device"),
                 help="input paths: full images, packed + host warp, packed + device warp")
  p.add_argument("--pack-root", default=str(pathlib.Path(tempfile.gettempdir()) /
                                             "sbpose_bench_pack"))
  p.add_argument("--device-targets", action="store_true",
                 help="no heatmaps on the host (host_targets=False), for bare and pipeline")
  p.add_argument("--synthetic-root", default=str(pathlib.Path(tempfile.gettempdir()) /
                                                  "sbpose_bench_synthetic"))
  args, overrides = p.parse_known_args(argv)
  config = config_lib.load(args.config, overrides)
  cv2.setNumThreads(1)
  print(f"# {datetime.date.today()} {_cpu_name()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; config {args.config}, input {tuple(config.data.input_size)}, "
        f"batch {args.batch_size}, {args.batches} timed batches, median of {args.repeats}, "
        f"targets on the {'device' if args.device_targets else 'host'}")
  layouts = (["mapbatch"] if "full" in args.paths else []) + (
      ["iterbatch", "after"] if args.layouts else [])
  num = args.batches * args.batch_size
  print("| data | run | img/s | spread | CPU ms/img | first batch s |")
  print("|---|---|---|---|---|---|")
  for kind in args.data:
    records = load_records(kind, config, args.virtual_size, pathlib.Path(args.synthetic_root))
    sources = {layout: records for layout in layouts}
    for path in ("packed", "device"):
      if path in args.paths:
        base = load_records(kind, config, args.virtual_size, pathlib.Path(args.synthetic_root),
                            base=True)
        d = config.data
        pack_dir = pathlib.Path(args.pack_root) / (
            f"{kind}_{args.config}_{len(base)}_{d.pack_scale}_{d.pack_quality}_{d.pack_chroma}")
        ann = (FIXTURES / "test_coco.json" if kind == "fixture" else
               pathlib.Path(args.synthetic_root) / "annotations/person_keypoints_train.json")
        sources[path] = packed_view(base, config, args.virtual_size, pack_dir, ann)
    rows = {}

    def report(name, runs):
      rates = [r[0] for r in runs]
      med, cpu = statistics.median(rates), statistics.median(r[1] for r in runs)
      rows[name] = (med, cpu)
      spread = f"{min(rates):.0f}-{max(rates):.0f}" if len(rates) > 1 else ""
      first_s = f"{statistics.median(r[2] for r in runs):.1f}" if len(runs[0]) > 2 else ""
      print(f"| {kind} | {name} | {med:.0f} | {spread} | {cpu:.2f} | {first_s} |", flush=True)

    # Interleaved repeats, so that a burst of load on the shared box hits every row alike.
    runs: dict[str, list] = {}
    # The bare loop has no in-process variant of its own: `--workers 0` adds nothing there.
    bare_procs = sorted({w for w in args.workers if w > 0}) if "full" in args.paths else []
    for _ in range(args.repeats):
      for procs in bare_procs:
        runs.setdefault(f"bare x{procs}", []).append(
            bare_parallel(records, config, num, args.batch_size, procs, not args.device_targets))
      for layout, source in sources.items():
        for workers in sorted({0, *args.workers}):
          runs.setdefault(f"{layout} w={workers}", []).append(time_pipeline(
              source, config, layout, workers, args.batch_size, args.batches, args.warmup,
              not args.device_targets))
    for name, values in runs.items():
      report(name, values)
    for workers in bare_procs:
      (floor, floor_cpu), (got, got_cpu) = rows[f"bare x{workers}"], rows[f"mapbatch w={workers}"]
      print(f"| {kind} | overhead w={workers} vs bare x{workers} | {100 * (1 - got / floor):+.0f}% "
            f"| | {100 * (got_cpu / floor_cpu - 1):+.0f}% CPU | |")
    for path in ("packed", "device"):
      for workers in sorted({0, *args.workers}):
        a, c = rows.get(f"mapbatch w={workers}"), rows.get(f"{path} w={workers}")
        if a and c:
          print(f"| {kind} | CPU {path} / full w={workers} | | | {c[1] / a[1]:.2f} | |")


if __name__ == "__main__":
  main()
