"""Memory of COCO-train-sized annotations in data-loader worker processes: Records vs dicts.

Builds synthetic records the size of COCO train2017 person keypoints (150k instances, 118k
images, 17 joints) three ways:
  * `records`: `sbpose_jax.data.records.Records`, a few dozen numpy arrays;
  * `records-mmap`: the same saved with `Records.save` and opened with `Records.load(mmap=True)`;
  * `dicts`: the MMPose 0.x layout, one dict per instance holding small numpy arrays.
and measures the parent's RSS and each worker's private memory (USS, from /proc/<pid>/smaps
via psutil) and RSS:
  * `fork`: multiprocessing fork workers (the torch DataLoader model) that each read a shuffled
    1/n of the instances, the access pattern of one epoch;
  * `grain`: `MapDataset.source(...).shuffle().map(...).to_iter_dataset().mp_prefetch(n)` (grain
    spawns its workers and cloudpickles the dataset into each), memory read after 256 elements.
    `empty` is the same pipeline over `MapDataset.range`, the per-worker floor. The dicts go
    through grain with the first worker count only, unless --full (each spawned worker unpickles
    its own copy, so the per-worker number does not depend on the count; --full shows it).
USS counts pages mapped by this process alone; PSS splits shared pages among their users.

  python scripts/bench_memory.py                # 1 and 8 workers, under 2 min on 2 idle cores
  python scripts/bench_memory.py --full         # + dicts through 8 grain workers (~4 min)
  python scripts/bench_memory.py --instances 20000 --workers 1 2   # quick look
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np
import psutil

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from sbpose_jax.data.records import Records  # noqa: E402

MB = 2**20


def synthetic_records(n: int, num_images: int, k: int = 17, seed: int = 0) -> Records:
  """COCO-like records: random boxes and joints, image names like '000000391895.jpg'."""
  rng = np.random.default_rng(seed)
  wh = rng.integers(300, 641, (num_images, 2))
  image_index = np.sort(rng.integers(0, num_images, n))
  box = rng.uniform(0, 1, (n, 4)) * [400, 300, 200, 300] + [0, 0, 10, 10]
  return Records(
      dataset="coco", image_root="data/coco/train2017",
      image_files=np.char.mod("%012d.jpg", rng.choice(10**6, num_images, replace=False)),
      image_ids=np.arange(num_images), image_wh=wh, image_index=image_index, bbox_xywh=box,
      center_xy=(box[:, :2] + box[:, 2:] / 2).astype(np.float32),   # COCO's precision
      scale_wh=(box[:, 2:] / 200 * 1.25).astype(np.float32),
      joints_xy=rng.uniform(0, 600, (n, k, 2)), joints_vis=rng.integers(0, 2, (n, k)),
      bbox_score=np.ones(n), area=box[:, 2] * box[:, 3] * 0.6, ann_ids=np.arange(n))


def as_dicts(rec: Records) -> list[dict]:
  """The same instances as MMPose 0.x's `self.db`: a list of dicts of small arrays."""
  out = []
  for i in range(len(rec)):
    joints = np.zeros((rec.num_joints, 3), np.float32)
    joints[:, :2] = rec.joints_xy[i]
    vis = np.zeros((rec.num_joints, 3), np.float32)
    vis[:, :2] = rec.joints_vis[i, :, None]
    out.append({
        "image_file": os.path.join(rec.image_root, str(rec.image_files[rec.image_index[i]])),
        "center": rec.center_xy[i].copy(), "scale": rec.scale_wh[i].copy(),
        "bbox": rec.bbox_xywh[i].tolist(), "rotation": 0, "joints_3d": joints,
        "joints_3d_visible": vis, "dataset": "coco", "bbox_score": 1, "bbox_id": i})
  return out


class RecordSource:
  """grain random-access source over Records: element i = instance i's fields."""

  def __init__(self, records: Records):
    self.records = records

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i):
    r = self.records
    return {"image_file": str(r.image_files[r.image_index[i]]), "center": r.center_xy[i],
            "scale": r.scale_wh[i], "joints": r.joints_xy[i], "vis": r.joints_vis[i]}


def _element_sum(element) -> float:
  """What a transform does with an element: read its arrays (and so their refcounts)."""
  if isinstance(element, dict) and "joints_3d" in element:
    return float(element["joints_3d"][0, 0] + element["center"][0] + len(element["image_file"]))
  return float(element["joints"][0, 0] + element["center"][0] + len(element["image_file"]))


def _mem(proc: psutil.Process) -> tuple[float, float, float]:
  info = proc.memory_full_info()
  return info.rss / MB, info.uss / MB, info.pss / MB


# ----------------------------------------------------------------------------- fork workers
_DATA = None   # set in the parent before forking; children inherit it copy-on-write


def _fork_worker(worker: int, num_workers: int, seed: int, queue) -> None:
  order = np.random.default_rng(seed).permutation(len(_DATA))[worker::num_workers]
  source = RecordSource(_DATA) if isinstance(_DATA, Records) else _DATA
  total = 0.0
  for i in order:
    total += _element_sum(source[int(i)])
  queue.put(_mem(psutil.Process()))


def fork_run(data, num_workers: int) -> list[tuple[float, float]]:
  global _DATA
  _DATA = data
  ctx = mp.get_context("fork")
  queue = ctx.Queue()
  procs = [ctx.Process(target=_fork_worker, args=(w, num_workers, 0, queue))
           for w in range(num_workers)]
  for p in procs:
    p.start()
  out = [queue.get() for _ in procs]
  for p in procs:
    p.join()
  _DATA = None
  return out


# ---------------------------------------------------------------------------- grain workers
def _first(x):
  return x


def grain_run(source, num_workers: int, elements: int = 256) -> list[tuple[float, float]]:
  import grain  # why: only this test or script needs it
  from absl import flags  # why: only this test or script needs it
  flags.FLAGS.mark_as_parsed()   # mp_prefetch outside absl.app.run (docs/ecosystem.md §1)
  ds = grain.MapDataset.source(source).seed(0).shuffle().map(_first)
  it = iter(ds.to_iter_dataset().mp_prefetch(
      grain.multiprocessing.MultiprocessingOptions(num_workers=num_workers)))
  total = 0.0
  for _ in range(elements):
    element = next(it)
    total += float(element) if np.isscalar(element) else _element_sum(element)
  workers = [p for p in psutil.Process().children(recursive=True)
             if "spawn_main" in " ".join(p.cmdline())]
  out = [_mem(p) for p in workers]
  it.close()
  del it
  gc.collect()
  return out


# ---------------------------------------------------------------------------------- driver
def _row(table, mode, data, workers, run):
  start = time.time()
  rss, uss, pss = np.asarray(run(), np.float64).reshape(-1, 3).T
  if len(rss) != workers:
    raise RuntimeError(f"found {len(rss)} worker processes, expected {workers}")
  table.append((mode, data, workers, uss.mean(), uss.sum(), pss.mean(), rss.mean()))
  print(f"{mode:5s} {data:12s} workers={workers}  USS/worker {uss.mean():7.1f} MB  "
        f"USS total {uss.sum():8.1f} MB  PSS/worker {pss.mean():7.1f} MB  "
        f"RSS/worker {rss.mean():7.1f} MB  ({time.time() - start:.0f} s)", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--instances", type=int, default=150_000)
  parser.add_argument("--images", type=int, default=118_287)
  parser.add_argument("--workers", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--skip-grain", action="store_true")
  parser.add_argument("--full", action="store_true",
                      help="also the list of dicts through grain with every worker count (slow: "
                      "each worker unpickles 150k dicts), not only with the first")
  args = parser.parse_args()
  start = time.time()
  me = psutil.Process()
  print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}, numpy {np.__version__}")
  base = me.memory_info().rss / MB
  rec = synthetic_records(args.instances, args.images)
  nbytes = sum(getattr(rec, f).nbytes for f in (
      "image_files", "image_ids", "image_wh", "image_index", "bbox_xywh", "center_xy",
      "scale_wh", "joints_xy", "joints_vis", "bbox_score", "area", "ann_ids"))
  after_rec = me.memory_info().rss / MB
  dicts = as_dicts(rec)
  after_dicts = me.memory_info().rss / MB
  print(f"{len(rec)} instances, {rec.num_images} images: Records arrays {nbytes / MB:.1f} MB "
        f"(parent RSS +{after_rec - base:.0f} MB); list of dicts: parent RSS "
        f"+{after_dicts - after_rec:.0f} MB")
  tmp = tempfile.TemporaryDirectory()
  rec.save(tmp.name)
  mapped = Records.load(tmp.name, mmap=True)
  table = []
  for n in args.workers:
    _row(table, "fork", "records", n, lambda: fork_run(rec, n))
    _row(table, "fork", "dicts", n, lambda: fork_run(dicts, n))
  if not args.skip_grain:
    import grain  # why: only this test or script needs it
    for j, n in enumerate(args.workers):
      _row(table, "grain", "empty", n, lambda: grain_run(grain.MapDataset.range(len(rec)), n))
      _row(table, "grain", "records", n, lambda: grain_run(RecordSource(rec), n))
      _row(table, "grain", "records-mmap", n, lambda: grain_run(RecordSource(mapped), n))
      if j == 0 or args.full:
        _row(table, "grain", "dicts", n, lambda: grain_run(dicts, n))
  print("\n| workers | mode | data | USS / worker | USS, all workers | PSS / worker "
        "| RSS / worker |")
  print("|---|---|---|---|---|---|---|")
  for mode, data, n, uss, uss_sum, pss, rss in table:
    print(f"| {n} | {mode} | {data} | {uss:.0f} | {uss_sum:.0f} | {pss:.0f} | {rss:.0f} |")
  print(f"\ntotal {time.time() - start:.0f} s")
  tmp.cleanup()


if __name__ == "__main__":
  main()
