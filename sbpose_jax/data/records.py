"""`Records`: every dataset's person instances as one set of compact numpy arrays.

N instances, I images, K joints. There are no per-instance Python objects, so a worker process
holds a few dozen arrays instead of N dicts. Forked workers share the pages (reading an array
touches one refcount, not N), and spawned workers (grain's `mp_prefetch`) each unpickle a copy
of the arrays, about 300 bytes per COCO instance (twice that while grain holds the pickle).
`Records.load(path, mmap=True)` goes further: the arrays are memory-mapped
and pickle as their file, so every worker maps the same page-cache pages; this survives
`dataclasses.replace` (unchanged arrays stay mapped), while `select` copies
(numbers in docs/benchmarks.md, "Records memory").

Fields (the contract in docs/design.md):

| field | shape, dtype | meaning |
|---|---|---|
| dataset | str | key of `keypoints.DATASETS` |
| image_root | str | folder the file names are relative to |
| image_files | (I,) <U | file names relative to image_root |
| image_ids | (I,) int64 | dataset image ids |
| image_wh | (I, 2) int32 | width, height from the annotation file (0 if unknown) |
| image_index | (N,) int32 | row of the image tables for each instance |
| bbox_xywh | (N, 4) float64 | sanitised GT box or detector box as is; zeros for MPII/TRB |
| center_xy | (N, 2) float32* | crop centre, image pixels |
| scale_wh | (N, 2) float32* | crop size / 200 px, aspect-fixed and padded |
| joints_xy | (N, K, 2) float32 | joints in image pixels (0-based; MPII already -1) |
| joints_vis | (N, K) float32 | 0/1 target weight (all 0 for detector boxes: no GT joints) |
| bbox_score | (N,) float32 | detector score, 1 for GT boxes |
| area | (N,) float32 | GT area for OKS: the annotation's `area` (COCO, WholeBody, OCHuman), |
|   |   | 0.53*w*h of the raw GT box (AIC, CrowdPose: the metric's use_area=False); 0 where |
|   |   | the file has no area (PoseTrack18), for detector boxes and for MPII/TRB |
| ann_ids | (N,) int64 | annotation id; -1 for detector boxes; MPII: row of the json list |
| extra | dict of (N, ...) | dataset-specific, below |
| image_extra | dict of (I, ...) | dataset-specific per-image data, below (an extension of the |
|   |   | design's contract: empty unless listed) |

Precision is the reference's (2020 MMPose readers), because crops depend on it: `bbox_xywh` is
float64 (the clean box the frozen centre shift scales, from the json's floats); * centre and
scale are float32, except where the 2020 code kept float64 (MPII centre and scale, MPII-TRB
scale): a float64 array given for them stays float64, anything else becomes float32.

`extra` keys:
  * `headbox` (N, 4) float32, x1 y1 x2 y2. MPII-TRB: the json's `headbox` (NaN where absent);
    MPII: `headboxes_src` of `mpii_gt_val.mat` when `read_mpii(gt_mat_file=...)` is given
    (MATLAB 1-based, as the PCKh code uses it).
  * `jnt_missing` (N, K) bool, `pos_gt_src` (N, K, 2) float32 (1-based): MPII with gt_mat_file.
  * `track_id` (N,) int64: PoseTrack18 GT track id, -1 for detector boxes.
  * `bbox_head` (N, 4) float32 xywh: PoseTrack18 GT head box, zeros for detector boxes.
  * `crowd_index` (N,) float32: CrowdPose, the crowdIndex of the instance's image.
`image_extra` keys:
  * `crowd_index` (I,) float32: CrowdPose.
  * `frame_id` (I,) int64, `vid_id` (I,) <U, `nframes` (I,) int32, `sequence` (I,) <U: PoseTrack18;
    `sequence` is the folder of the frame (= the stem of its per-video json file).
"""
from __future__ import annotations

import dataclasses
import json
import mmap
import pathlib
from typing import Iterable, Mapping

import numpy as np

from sbpose_jax import keypoints

# name -> (dtype, trailing shape; "K" = num_joints). Leading dim: I for image_*, N otherwise.
_IMAGE_FIELDS = {"image_files": (None, ()), "image_ids": (np.int64, ()),
                 "image_wh": (np.int32, (2,))}
_INSTANCE_FIELDS = {
    "image_index": (np.int32, ()), "bbox_xywh": (np.float64, (4,)),
    "center_xy": (np.float32, (2,)), "scale_wh": (np.float32, (2,)),
    "joints_xy": (np.float32, ("K", 2)), "joints_vis": (np.float32, ("K",)),
    "bbox_score": (np.float32, ()), "area": (np.float32, ()), "ann_ids": (np.int64, ())}
_ARRAY_FIELDS = {**_IMAGE_FIELDS, **_INSTANCE_FIELDS}
# float32 unless given as float64 (the reference's precision, see the module docstring).
_FLOAT32_OR_64 = ("center_xy", "scale_wh")


@dataclasses.dataclass(frozen=True, eq=False)
class Records:
  """Person instances of one dataset as numpy arrays (see the module docstring for fields)."""
  dataset: str
  image_root: str
  image_files: np.ndarray
  image_ids: np.ndarray
  image_wh: np.ndarray
  image_index: np.ndarray
  bbox_xywh: np.ndarray
  center_xy: np.ndarray
  scale_wh: np.ndarray
  joints_xy: np.ndarray
  joints_vis: np.ndarray
  bbox_score: np.ndarray
  area: np.ndarray
  ann_ids: np.ndarray
  extra: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  image_extra: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    num_joints = keypoints.get(self.dataset).num_joints  # raises on an unknown dataset
    if not isinstance(self.image_root, str):
      object.__setattr__(self, "image_root", str(self.image_root))
    for name, (dtype, _) in _ARRAY_FIELDS.items():
      value = getattr(self, name)
      if name == "image_files":
        # Fixed-width unicode, never an object array (that would bring back per-item objects).
        arr = np.asanyarray(value) if len(value) else np.zeros((0,), "<U1")
        if arr.dtype.kind != "U":
          arr = arr.astype(str)
      else:
        if name in _FLOAT32_OR_64 and np.asanyarray(value).dtype == np.float64:
          dtype = np.float64
        arr = np.asanyarray(value, dtype=dtype)  # keeps np.memmap (see load)
      object.__setattr__(self, name, arr)
    n, i = len(self.image_index), len(self.image_files)
    for name, (_, trailing) in _ARRAY_FIELDS.items():
      lead = i if name in _IMAGE_FIELDS else n
      want = (lead,) + tuple(num_joints if d == "K" else d for d in trailing)
      if getattr(self, name).shape != want:
        raise ValueError(f"Records.{name} has shape {getattr(self, name).shape}, expected {want} "
                         f"({self.dataset}: N={n}, I={i}, K={num_joints})")
    if n and (self.image_index.min() < 0 or self.image_index.max() >= i):
      raise ValueError(f"Records.image_index out of range [0, {i})")
    for kind, table, lead in (("extra", self.extra, n), ("image_extra", self.image_extra, i)):
      table = {k: np.asanyarray(v) for k, v in table.items()}
      for k, v in table.items():
        if v.ndim == 0 or len(v) != lead:
          raise ValueError(f"Records.{kind}[{k!r}] has shape {v.shape}, leading dim must be {lead}")
      object.__setattr__(self, kind, table)

  def __len__(self) -> int:
    return len(self.image_index)

  @property
  def num_joints(self) -> int:
    return self.joints_xy.shape[1]

  @property
  def num_images(self) -> int:
    return len(self.image_files)

  def image_path(self, i: int) -> str:
    """Full path of instance i's image."""
    return str(pathlib.Path(self.image_root) / str(self.image_files[self.image_index[i]]))

  def select(self, indices) -> "Records":
    """Instances `indices` (ints or a boolean mask); the image tables are kept whole."""
    idx = np.asarray(indices)
    if idx.dtype != bool:
      idx = idx.astype(np.int64)
    sub = {name: getattr(self, name)[idx] for name in _INSTANCE_FIELDS}
    extra = {k: v[idx] for k, v in self.extra.items()}
    return dataclasses.replace(self, **sub, extra=extra)

  def __reduce__(self):
    # Arrays memory-mapped from a file (Records.load(mmap=True)) pickle as a reference to that
    # file, so spawned workers re-map the same page-cache pages instead of receiving a copy.
    fields = self._as_dict()
    for name in _ARRAY_FIELDS:
      fields[name] = _MmapRef.wrap(fields[name])
    for kind in ("extra", "image_extra"):
      fields[kind] = {k: _MmapRef.wrap(v) for k, v in fields[kind].items()}
    return (_rebuild, (fields,))

  def _as_dict(self) -> dict:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def save(self, path) -> None:
    """Writes one .npy per array plus meta.json into the directory `path`."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in _ARRAY_FIELDS:
      np.save(path / f"{name}.npy", getattr(self, name))
    for kind in ("extra", "image_extra"):
      for k, v in getattr(self, kind).items():
        np.save(path / f"{kind}.{k}.npy", v)
    meta = dict(dataset=self.dataset, image_root=self.image_root,
                extra=sorted(self.extra), image_extra=sorted(self.image_extra))
    (path / "meta.json").write_text(json.dumps(meta, indent=1))

  @staticmethod
  def load(path, mmap: bool = True) -> "Records":
    """Reads a directory written by `save`; with mmap the arrays are read-only memory maps."""
    path = pathlib.Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
      raise FileNotFoundError(f"not a saved Records directory (no meta.json): {path}")
    meta = json.loads(meta_file.read_text())
    mode = "r" if mmap else None
    arrays = {name: np.load(path / f"{name}.npy", mmap_mode=mode) for name in _ARRAY_FIELDS}
    tables = {kind: {k: np.load(path / f"{kind}.{k}.npy", mmap_mode=mode) for k in meta[kind]}
              for kind in ("extra", "image_extra")}
    return Records(meta["dataset"], meta["image_root"], **arrays, **tables)


@dataclasses.dataclass(frozen=True)
class _MmapRef:
  """Where a whole-file np.memmap lives; `open` maps it again (read-only)."""
  filename: str
  offset: int
  dtype: str
  shape: tuple
  order: str

  @staticmethod
  def wrap(array):
    # Only a memmap over a whole mapping (what np.load returns): slices and copies go by value.
    if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename:
      return _MmapRef(array.filename, array.offset, array.dtype.str, array.shape,
                      "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C")
    return array

  def open(self) -> np.memmap:
    return np.memmap(self.filename, np.dtype(self.dtype), "r", self.offset, self.shape,
                     self.order)


def _rebuild(fields: dict) -> Records:
  def unwrap(v):
    return v.open() if isinstance(v, _MmapRef) else v
  fields = {k: unwrap(v) for k, v in fields.items()}
  for kind in ("extra", "image_extra"):
    fields[kind] = {k: unwrap(v) for k, v in fields[kind].items()}
  return Records(**fields)


def concat(parts: Iterable[Records]) -> Records:
  """Concatenates records of one dataset and image root (image tables appended, re-indexed)."""
  parts = list(parts)
  if not parts:
    raise ValueError("concat needs at least one Records")
  first = parts[0]
  for p in parts[1:]:
    if (p.dataset, p.image_root) != (first.dataset, first.image_root):
      raise ValueError(f"cannot concat records of {p.dataset!r} at {p.image_root!r} with "
                       f"{first.dataset!r} at {first.image_root!r}")
    if set(p.extra) != set(first.extra) or set(p.image_extra) != set(first.image_extra):
      raise ValueError("cannot concat records with different extra keys")
  offsets = np.cumsum([0] + [p.num_images for p in parts[:-1]])
  fields = {}
  for name in _ARRAY_FIELDS:
    arrays = [getattr(p, name) for p in parts]
    if name == "image_index":
      arrays = [a + o for a, o in zip(arrays, offsets)]
    fields[name] = np.concatenate(arrays)
  extra = {k: np.concatenate([p.extra[k] for p in parts]) for k in first.extra}
  image_extra = {k: np.concatenate([p.image_extra[k] for p in parts]) for k in first.image_extra}
  return Records(first.dataset, first.image_root, **fields, extra=extra,
                 image_extra=image_extra)
