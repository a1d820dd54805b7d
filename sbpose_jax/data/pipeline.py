"""`Records` → grain datasets of numpy batches: training (shuffled, augmented, sharded,
resumable) and evaluation (every box once, in order, last batch padded and masked).

Training (`train_dataset`), per process:

  MapDataset.range(N).seed(seed).shuffle().repeat(num_epochs)   one global permutation per epoch,
    [:]                        the same on every host (an identity slice: see `train_samples`)
    .map(ImageLoader)          decode (the seam for a packed source: any map index → element)
    .random_map(RandomFlip, HalfBody, RandomScaleRotation)      data/transforms.py, seeded by
    .map(TopDownAffine, GenerateTarget, select fields)           the sample's global index
    ProcessPart(B, process_index, process_count)   this process's contiguous part of each global
    .batch(B, batch_fn=list)   batch of G = B x process_count samples (still random access)
  .to_iter_dataset(ReadOptions(num_threads, small buffer))
    .batch(1, batch_fn=StackSamples())   stack the group, into shared memory under mp_prefetch
    .mp_prefetch(MultiprocessingOptions(num_workers))

Global batch k is samples [k·G, (k+1)·G) of the global stream, augmented with the draws of their
global index; process p of P takes rows [p·G/P, (p+1)·G/P) of it. So batch k is the same set of
records, in the same order and with the same pixels, on any number of processes, devices and
data workers (tests/test_pipeline.py), and a run may resume on another topology.

Why the batch is formed on the MapDataset: `mp_prefetch` gives worker w the elements
w, w + n, w + 2n, ... of the dataset before `to_iter_dataset`. Batching after
`to_iter_dataset` (grain's usual recipe) would then put samples w, w + n, ... into one batch,
so the batches would depend on the worker count; batching after `mp_prefetch` instead ships
every sample through IPC on its own. Grouping on the MapDataset makes a worker's unit a whole
batch: the batches are the same for any `num_workers` (tests/test_pipeline.py checks 0 vs 2) and
each batch crosses the process boundary once, stacked straight into shared memory.

The iterator's `get_state()`/`set_state()` (and `grain.checkpoint.CheckpointSave/Restore` for
orbax) resume on the exact next batch, given the same records, config, seed, process layout and
`num_workers`; training instead rebuilds the stream at a batch (`start_batch`), which needs none
of them to match.

Seams:
* a packed source (data/packed.py: pre-cropped JPEGs in a TFDS/ArrayRecord dataset) replaces
  `ImageLoader` and `TopDownAffine` — `train_dataset(..., loader=..., affine=...)` — or the
  whole per-sample tail (crop, targets, field selection) by one batch-level `finish`;
* targets on the device: `host_targets=False` drops `target` from the batches; `joints`
  (B, K, 3) heatmap-space x, y, weight are always there for `heatmaps.encode_jnp`.

Worker processes are spawned: they import `__main__` and must not initialise JAX on a GPU
(google/grain#1199). `worker_init` points them at the CPU before the dataset is unpickled.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from typing import Any, Callable, Iterator, Sequence

import cv2
import grain
import numpy as np

from sbpose_jax import geometry
from sbpose_jax import keypoints
from sbpose_jax.data import transforms
from sbpose_jax.data.records import Records

Element = dict[str, Any]
TRAIN_FIELDS = ("image", "target", "target_weight", "joints")
EVAL_FIELDS = ("image", "center", "scale", "bbox_score", "index", "mask")


class BadImageError(RuntimeError):
  """An image file that is missing or cannot be decoded; the message names the file."""


def decode_image(path: str, colour_order: str = "rgb") -> np.ndarray:
  """Reads an image file into (H, W, 3) uint8 in `colour_order` ("rgb" or "bgr").

  `IMREAD_COLOR` applies EXIF orientation, as MMPose's loader (docs/reference.md §8.12).
  Raises BadImageError naming the file when it is missing or undecodable.
  """
  try:
    buf = np.fromfile(path, np.uint8)
  except OSError as e:
    raise BadImageError(f"cannot read image file {path}: {e}") from None
  img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
  if img is None:
    raise BadImageError(f"cannot decode image file {path} ({buf.size} bytes)")
  if colour_order == "rgb":
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
  if colour_order != "bgr":
    raise ValueError(f"colour_order must be 'rgb' or 'bgr', got {colour_order!r}")
  return img


@dataclasses.dataclass
class ImageLoader(grain.transforms.Map):
  """Record row → element dict with the full decoded image (the decode step; see the seam).

  With `skip_bad_images` an unreadable image is logged and the next record (in record order,
  wrapping) is loaded instead, so batches stay full; `skipped` counts the records passed over.
  """
  records: Records
  colour_order: str = "rgb"
  skip_bad_images: bool = False

  def map(self, index) -> Element:
    index = int(index)
    n = len(self.records)
    for skipped in range(n):
      row = (index + skipped) % n
      try:
        image = decode_image(self.records.image_path(row), self.colour_order)
      except BadImageError as e:
        if not self.skip_bad_images:
          raise BadImageError(f"{e} (record {row}; set data.skip_bad_images=True to skip "
                              "unreadable images)") from None
        logging.warning("skipping record %d: %s", row, e)
        continue
      r = self.records
      out = {"image": image, "center": r.center_xy[row], "scale": r.scale_wh[row],
             "joints": r.joints_xy[row], "joints_vis": r.joints_vis[row],
             "index": np.int32(row)}
      if self.skip_bad_images:
        out["skipped"] = np.int32(skipped)
      return out
    raise BadImageError(f"none of the {n} images of {self.records.image_root} can be read")


@dataclasses.dataclass
class SelectFields(grain.transforms.Map):
  """Keeps only `fields` (less to copy between processes)."""
  fields: tuple[str, ...]

  def map(self, element: Element) -> Element:
    return {k: element[k] for k in self.fields if k in element}


class StackSamples:
  """Stacks a list of element dicts into one batch dict (grain `batch_fn`).

  grain calls `enable_shared_memory_output()` in `mp_prefetch` workers; the batch is then
  written once, straight into shared memory, and handed to the parent without a copy.
  """

  def __init__(self):
    self._shared_memory = False

  def enable_shared_memory_output(self) -> None:
    self._shared_memory = True

  def __call__(self, groups: Sequence[list[Element]]) -> Element:
    samples = [s for group in groups for s in group]
    out = {}
    for key in samples[0]:
      first = np.asarray(samples[0][key])
      shape = (len(samples),) + first.shape
      dest = (grain.multiprocessing.SharedMemoryArray(shape, first.dtype)
              if self._shared_memory and first.dtype.kind not in "OUS" else None)
      out[key] = np.stack([s[key] for s in samples], out=dest)
    return out


def worker_init(worker_index: int, worker_count: int) -> None:
  """Runs in each spawned worker before the dataset is unpickled: keep JAX off the GPU, and
  leave Ctrl-C and SIGTERM to the parent (which stops the workers when it ends): no traceback
  here, and a preempted run's workers keep feeding it until its last step (a scheduler or a
  shutting-down machine signals every process)."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  os.environ["JAX_PLATFORMS"] = "cpu"
  if "jax" in sys.modules:  # imported by __main__ already: its config has read the variable
    sys.modules["jax"].config.update("jax_platforms", "cpu")
  cv2.setNumThreads(1)


def prepare_multiprocessing() -> None:
  """`mp_prefetch` outside `absl.app.run` needs parsed absl flags (google/grain#1355)."""
  from absl import flags  # why: only grain worker processes need absl flags parsed
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def unlink_shared_memory(batch: Element) -> Element:
  """Removes the name of each shared-memory array of a batch the moment this process has it.

  The memory itself lives on until the arrays are freed (POSIX unlink semantics), but no name
  is left for the resource tracker to report as "leaked" at exit: grain unlinks a received
  array only when its object is deleted, which the interpreter's shutdown may skip
  (google/grain#398; measured: 6 names, one evaluation batch, after every evaluation).
  """
  for value in batch.values():
    if isinstance(value, grain.multiprocessing.SharedMemoryArray) and getattr(
        value, "_unlink_on_del", False):
      value.shm.unlink()
      value._unlink_on_del = False
  return batch


def _prefetch(ds: grain.IterDataset, num_workers: int, buffer_size: int = 2):
  if num_workers <= 0:
    return ds
  prepare_multiprocessing()
  return ds.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=num_workers, per_worker_buffer_size=buffer_size),
      worker_init_fn=worker_init).map(unlink_shared_memory)


def prefetch(ds: grain.IterDataset, num_workers: int, buffer_size: int = 2):
  """`ds` read ahead by `num_workers` spawned worker processes (0: in this process)."""
  return _prefetch(ds, num_workers, buffer_size)


def _read_options(num_threads: int) -> grain.ReadOptions:
  # Elements are whole batches here: grain's default buffer of 500 would hold 500 batches.
  return grain.ReadOptions(num_threads=max(1, num_threads),
                           prefetch_buffer_size=max(2, 2 * num_threads))


def shifted_records(records: Records, config, seed: int) -> Records:
  """Applies the 2020 centre shift, drawn once from `seed` (geometry.frozen_center_shift).

  The box size is `bbox_xywh`, the clean box in float64 as the 2020 reader had it.
  """
  if config.data.shift_prob <= 0:
    return records
  rng = np.random.default_rng(seed)
  center = geometry.frozen_center_shift(records.center_xy, records.bbox_xywh[:, 2:], rng,
                                        config.data.shift_prob, config.data.shift_factor)
  return dataclasses.replace(records, center_xy=center)


def augmentations(config, info: keypoints.KeypointInfo) -> list:
  """The random training transforms of docs/reference.md §3 (after the decode), in order."""
  d = config.data
  steps = [transforms.RandomFlip(info.flip_pairs, d.flip_prob,
                                 fold_into_affine=d.flip_in_affine)]
  if d.half_body_prob > 0:   # MPII's pipeline has no half-body step, and draws nothing for it
    steps.append(transforms.HalfBody(info.upper_body_ids, d.input_size,
                                     info.num_joints_half_body, d.half_body_prob,
                                     d.half_body_padding))
  return steps + [transforms.RandomScaleRotation(d.scale_factor, d.rot_factor, d.rot_prob)]


def train_fields(config, extra_fields: Sequence[str] = ()) -> tuple[str, ...]:
  """The element keys a training batch keeps."""
  skipped = ("skipped",) if config.data.skip_bad_images else ()
  return TRAIN_FIELDS + skipped + tuple(extra_fields)


def crop_and_target(config, host_targets: bool = True, extra_fields: Sequence[str] = (),
                    affine: grain.transforms.Map | None = None) -> list:
  """The deterministic transforms after the augmentations: crop (`affine`, default
  TopDownAffine; data/packed.py passes its own), targets, field selection."""
  d = config.data
  fields = train_fields(config, extra_fields)
  return [affine or transforms.TopDownAffine(d.input_size),
          transforms.GenerateTarget(d.input_size, d.heatmap_size, d.sigma,
                                    with_heatmaps=host_targets),
          SelectFields(fields)]


def train_samples(records: Records, config, *, seed: int, process_index: int = 0,
                  process_count: int = 1, num_epochs: int | None = None,
                  batch_size: int = 1, host_targets: bool = True,
                  extra_fields: Sequence[str] = (),
                  loader: Callable[[Records], grain.transforms.Map] | None = None,
                  affine: grain.transforms.Map | None = None,
                  per_sample_tail: bool = True) -> grain.MapDataset:
  """The per-sample MapDataset of `train_dataset` (before batching); see there for arguments.
  Without `per_sample_tail` the samples stop after the augmentations (a `finish` does the rest)."""
  d = config.data
  info = keypoints.get(records.dataset)
  records = shifted_records(records, config, seed)
  ds = grain.MapDataset.range(len(records)).seed(seed).shuffle().repeat(num_epochs)
  global_batch = batch_size * process_count
  if num_epochs is not None:
    usable = len(ds) // global_batch * global_batch
    if usable == 0:
      raise ValueError(f"{len(records)} records x {num_epochs} epochs cannot fill one global "
                       f"batch of {global_batch} ({batch_size} on each of {process_count} "
                       "processes)")
    ds = ds[:usable]
  # An identity slice where the per-process slice of earlier versions was: grain derives the
  # default seed of each random map from its depth below `.seed()`, so keeping the depth keeps
  # the draws, and every 1-process stream, as they were (the demo's numbers included).
  ds = ds[:]
  ds = ds.map(loader(records) if loader else
              ImageLoader(records, d.colour_order, d.skip_bad_images))
  for t in augmentations(config, info):
    ds = ds.random_map(t)
  for t in crop_and_target(config, host_targets, extra_fields, affine) if per_sample_tail else ():
    ds = ds.map(t)
  return ProcessPart(ds, batch_size, process_index, process_count)


class ProcessPart(grain.MapDataset):
  """Process p's contiguous part of every global batch: its element j is element
  (j // B)·G + p·B + j % B of the global stream (G = B·P), so that global batch k is samples
  [k·G, (k+1)·G) of the stream whatever the number of processes. Only whole global batches."""

  def __init__(self, parent: grain.MapDataset, batch_size: int, process_index: int = 0,
               process_count: int = 1):
    super().__init__(parent)
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    self._b, self._p, self._n = int(batch_size), int(process_index), int(process_count)
    self._length = len(parent) // (self._b * self._n) * self._b

  def __len__(self) -> int:
    return self._length

  def _global_index(self, index: int) -> int:
    k, i = divmod(int(index), self._b)
    return (k * self._n + self._p) * self._b + i

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._global_index(index)]

  def _getitems(self, indices: Sequence[int]):
    return self._parent._getitems([self._global_index(i) for i in indices])

  def __str__(self) -> str:
    return f"ProcessPart(batch={self._b}, process={self._p} of {self._n})"


def train_dataset(records: Records, config, *, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  num_epochs: int | None = None, num_workers: int | None = None,
                  num_threads: int = 1, host_targets: bool = True,
                  extra_fields: Sequence[str] = (),
                  loader: Callable[[Records], grain.transforms.Map] | None = None,
                  affine: grain.transforms.Map | None = None,
                  finish: Callable[[list[Element]], list[Element]] | None = None,
                  start_batch: int = 0) -> grain.IterDataset:
  """The training input of one process: an IterDataset of batches (numpy dicts).

  Args:
    records: the training instances (GT boxes), identical on every process.
    config: the run config (`config.data.*` fields of configs/common.py).
    batch_size: per-process batch size B (the global batch is B x process_count).
    seed: shuffle, augmentation and frozen-shift seed; the same on every process.
    process_index, process_count: this process takes rows [p·B, (p+1)·B) of each global batch
      (ProcessPart): the global batches do not depend on the number of processes.
    num_epochs: None repeats forever; else the stream ends after that many epochs, cut to a
      multiple of the global batch so that every process yields the same number of batches.
    num_workers: worker processes (default config.data.num_workers); 0 = in this process.
    num_threads: threads per worker (>= 1; 0 serialises, docs/ecosystem.md §1).
    host_targets: False leaves `target` out (heatmaps built on the device from `joints`).
    extra_fields: element keys to keep beyond the contract (e.g. "index", "center").
    loader: factory records → grain Map from a record row to an element (the packed-source
      seam); default `ImageLoader`.
    affine: the crop transform in place of `TopDownAffine` (the packed source's).
    finish: in place of the per-sample crop, targets and field selection: a function from
      the B augmented elements of a batch to its B finished samples (the packed device path
      computes them batched; it must give what the per-sample steps give).
    start_batch: begin at this batch of the stream (a resumed run: batch k is the same for any
      num_workers, so the position needs no saved iterator state).

  Returns:
    IterDataset of dicts: image (B, H, W, 3) uint8 (config colour order), target
    (B, Hh, Wh, K) float32 (if host_targets), target_weight (B, K) float32, joints (B, K, 3)
    float32 heatmap-space x, y, weight; `skipped` (B,) int32 when data.skip_bad_images.
  """
  num_workers = config.data.num_workers if num_workers is None else num_workers
  ds = train_samples(records, config, seed=seed, process_index=process_index,
                     process_count=process_count, num_epochs=num_epochs,
                     batch_size=batch_size, host_targets=host_targets,
                     extra_fields=extra_fields, loader=loader, affine=affine,
                     per_sample_tail=finish is None)
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=finish or list)
  if start_batch:
    ds = ds[int(start_batch):]
  it = ds.to_iter_dataset(_read_options(num_threads)).batch(1, batch_fn=StackSamples())
  return _prefetch(it, num_workers)


# ------------------------------------------------------------------------------------------------
# Evaluation.

@dataclasses.dataclass
class _EvalPlan:
  """Random-access source: batch j → record rows (B,) and mask (B,), in record order.

  Padding rows (past the last record) repeat the last record and get mask False; with
  process_count > 1 the batch count is rounded up so every process runs the same number.
  """
  num_records: int
  batch_size: int
  num_batches: int

  def __len__(self) -> int:
    return self.num_batches

  def __getitem__(self, j):
    rows = np.arange(j * self.batch_size, (j + 1) * self.batch_size)
    mask = rows < self.num_records
    return np.minimum(rows, self.num_records - 1).astype(np.int32), mask


@dataclasses.dataclass
class EvalBatchLoader(grain.transforms.Map):
  """(rows, mask) → list of per-box crops; each image is decoded once per batch.

  With `skip_bad_images` the boxes of an unreadable image get an all-zero crop and mask False
  (logged), so every other box is still evaluated exactly once.
  """
  records: Records
  input_size: tuple[int, int]
  colour_order: str = "rgb"
  skip_bad_images: bool = False

  def map(self, plan) -> list[Element]:
    rows, mask = plan
    affine = transforms.TopDownAffine(self.input_size)
    images: dict[int, np.ndarray | None] = {}
    out = []
    for row, valid in zip(rows, mask):
      img_idx = int(self.records.image_index[row])
      if img_idx not in images:
        images[img_idx] = self._decode(int(row))
      image = images[img_idx]
      center, scale = self.records.center_xy[row], self.records.scale_wh[row]
      if image is None:
        crop = np.zeros((self.input_size[1], self.input_size[0], 3), np.uint8)
        valid = False
      else:
        crop = affine.map({"image": image, "center": center, "scale": scale})["image"]
      out.append({"image": crop, "center": center, "scale": scale,
                  "bbox_score": self.records.bbox_score[row], "index": np.int32(row),
                  "mask": np.bool_(valid)})
    return out

  def _decode(self, row: int) -> np.ndarray | None:
    try:
      return decode_image(self.records.image_path(row), self.colour_order)
    except BadImageError as e:
      if not self.skip_bad_images:
        raise BadImageError(f"{e} (record {row}; set data.skip_bad_images=True to skip "
                            "unreadable images)") from None
      logging.warning("evaluation: masking the boxes of an unreadable image: %s", e)
      return None


def eval_num_batches(num_records: int, batch_size: int, process_count: int = 1) -> int:
  """Batches per process of `eval_dataset` (all processes run the same number)."""
  total = -(-num_records // batch_size)
  return -(-total // process_count)


def eval_dataset(records: Records, config, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1, num_workers: int | None = None,
                 num_threads: int = 1) -> grain.IterDataset:
  """Evaluation batches: no augmentation, every record exactly once, in record order.

  Batch j of process p holds records [(j·P + p)·B, (j·P + p + 1)·B); the last batches are
  padded (repeating the last record) with mask False. One pass; no shuffling.

  Returns:
    IterDataset of dicts: image (B, H, W, 3) uint8, center (B, 2), scale (B, 2), bbox_score
    (B,) float32, index (B,) int32 record row, mask (B,) bool.
  """
  if len(records) == 0:
    raise ValueError("eval_dataset: no records to evaluate")
  d = config.data
  num_workers = d.num_workers if num_workers is None else num_workers
  per_process = eval_num_batches(len(records), batch_size, process_count)
  plan = _EvalPlan(len(records), batch_size, per_process * process_count)
  ds = grain.MapDataset.source(plan)[process_index::process_count]
  ds = ds.map(EvalBatchLoader(records, tuple(d.input_size), d.colour_order, d.skip_bad_images))
  it = ds.to_iter_dataset(_read_options(num_threads)).batch(1, batch_fn=StackSamples())
  return _prefetch(it, num_workers)


# ------------------------------------------------------------------------------------------------
# Host → device.

def global_batches(batches: Iterator[Element], sharding) -> Iterator[Element]:
  """Per-process numpy batches → global jax Arrays sharded as `sharding` (e.g. P('data')).

  Each process passes its own batch; `jax.make_array_from_process_local_data` assembles the
  global batch (process_count × B rows). JAX is imported here only, so that worker processes,
  which import this module, never load it.
  """
  import jax  # why: grain workers import this module and must not load JAX
  for batch in batches:
    yield {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
           for k, v in batch.items()}
