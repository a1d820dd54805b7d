"""Packed person crops: a TFDS dataset stored as ArrayRecord, one example per person instance.

Written by `python -m sbpose_jax.pack` (sbpose_jax/pack.py), read by training when
`data.source="packed"` (docs/packing.md). tensorflow-datasets builds and reads it without
TensorFlow: examples are serialised with the `FeaturesDict` below (JPEG bytes are stored as
given), and `tfds.builder_from_directory(dir).as_data_source(split)` is a random-access source.

A pack directory holds the TFDS files (`dataset_info.json`, `features.json`,
`sbpose_pack-<split>.array_record-0000i-of-0000n`), `records-<split>/` (the instances as
`Records`, image-frame values, row i = example i) and `pack-<split>.json` (what it was made from;
training refuses a pack made for other settings).

Training draws the augmentation exactly as the full-image path does, on the image-frame centre,
scale and joints of `records-<split>/` (so joints and target weights are bit-equal); only the
final warp reads the crop, through `matrix(image → output) · T⁻¹` where T (`image_to_crop`) maps
image pixels to crop pixels.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import pathlib
from typing import Any

import cv2
import grain
import numpy as np
import simplejpeg

from sbpose_jax import geometry
from sbpose_jax import heatmaps
from sbpose_jax.data import pack_geometry
from sbpose_jax.data import transforms
from sbpose_jax.data import ycc420
from sbpose_jax.data.records import Records

NAME = "sbpose_pack"
FORMAT_VERSION = 1
Element = dict[str, Any]


CHROMAS = ("yuv420", "yuv444", "planes")


def features(num_joints: int, chroma: str = "yuv420"):
  """The TFDS FeaturesDict of one example (crop-frame values unless named `image_*`).

  With `chroma="planes"` the image is one grayscale JPEG of the crop's 4:2:0 YCbCr planes
  (data/ycc420.py), (3H/2, W, 1); otherwise a colour JPEG of the crop.
  """
  import tensorflow_datasets as tfds  # why: TFDS loads only for packed crops
  f = tfds.features
  k = num_joints
  return f.FeaturesDict({
      "image": f.Image(shape=(None, None, 1 if chroma == "planes" else 3),
                       encoding_format="jpeg"),
      "joints": f.Tensor(shape=(k, 2), dtype=np.float32),        # crop pixels
      "joints_vis": f.Tensor(shape=(k,), dtype=np.float32),
      "center": f.Tensor(shape=(2,), dtype=np.float32),          # crop pixels
      "scale": f.Tensor(shape=(2,), dtype=np.float32),           # crop size / 200 in crop px
      "bbox": f.Tensor(shape=(4,), dtype=np.float32),            # x, y, w, h in crop pixels
      "image_to_crop": f.Tensor(shape=(2, 3), dtype=np.float64),  # image px -> crop px
      "image_wh": f.Tensor(shape=(2,), dtype=np.int32),          # the full image's size
      "record_index": np.int64,                                  # row of the source Records
      "ann_id": np.int64,
      "image_id": np.int64,
      "image_file": f.Text(),
  })


def example(records: Records, row: int, image: np.ndarray, pack_wh, ranges: dict,
            upper_body_ids, num_joints_half_body: int, quality: int = 95,
            chroma: str = "yuv420") -> dict:
  """One instance → its example dict (JPEG-encoded crop). `image` is the decoded image (BGR)."""
  r = records
  joints, vis = r.joints_xy[row], r.joints_vis[row]
  if not (np.isfinite(joints).all() and np.isfinite(r.center_xy[row]).all()
          and r.scale_wh[row][0] > 0):
    raise ValueError(f"annotation {int(r.ann_ids[row])} (record {row}, image "
                     f"{r.image_files[r.image_index[row]]}) has a non-finite or empty box/joints")
  h, w = image.shape[:2]
  region = pack_geometry.reachable_region(r.center_xy[row], r.scale_wh[row],
                                          r.bbox_xywh[row, 2:], joints, vis, ranges,
                                          upper_body_ids, num_joints_half_body)
  window, out_wh, t = pack_geometry.crop_transform(region, (w, h), pack_wh)
  crop = pack_geometry.cut(image, window, out_wh, pack_wh)
  # 4:2:0 chroma decodes ~25% faster; 4:4:4 keeps sharp colour edges; "planes" ships half the
  # bytes and converts to RGB on the device (docs/packing.md).
  if chroma not in CHROMAS:
    raise ValueError(f"data.pack_chroma must be one of {CHROMAS}, got {chroma!r}")
  if chroma == "planes":
    ok, jpeg = cv2.imencode(".jpg", ycc420.bgr_to_planes(crop),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
  else:
    sampling = getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{chroma[3:]}")
    ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(quality),
                                           cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling])
  if not ok:
    raise ValueError(f"cannot JPEG-encode the crop of record {row}")
  k = np.array([t[0, 0], t[1, 1]])
  box = r.bbox_xywh[row].astype(np.float64)
  return {"image": jpeg.tobytes(),
          "joints": geometry.affine_points(joints, t).astype(np.float32),
          "joints_vis": np.asarray(vis, np.float32),
          "center": geometry.affine_points(r.center_xy[row], t).astype(np.float32),
          "scale": (r.scale_wh[row] * k).astype(np.float32),
          "bbox": np.concatenate([geometry.affine_points(box[:2] - 0.5, t) + 0.5,
                                  box[2:] * k]).astype(np.float32),
          "image_to_crop": t, "image_wh": np.array([w, h], np.int32),
          "record_index": int(row), "ann_id": int(r.ann_ids[row]),
          "image_id": int(r.image_ids[r.image_index[row]]),
          "image_file": str(r.image_files[r.image_index[row]])}


# ------------------------------------------------------------------------------------------------
# What a pack was made from, and the check that training uses it with the same settings.

def file_digest(path) -> dict:
  """Size and sha256 of an annotation file, or of a folder of them (PoseTrack's per-video
  files: names and contents, sorted); what `check` compares."""
  import hashlib  # why: used by this function only
  path = pathlib.Path(path)
  files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
  h = hashlib.sha256()
  for file in files:
    if path.is_dir():
      h.update(str(file.relative_to(path)).encode() + b"\0")
    with open(file, "rb") as f:
      for block in iter(lambda f=f: f.read(1 << 20), b""):
        h.update(block)
  size = sum(f.stat().st_size for f in files)
  return {"path": str(path.resolve()), "bytes": size, "sha256": h.hexdigest()}


def pack_key(config, split: str) -> dict:
  """The settings a pack depends on: dataset, split, augmentation ranges, pack size."""
  d = config.data
  return dict(format=FORMAT_VERSION, dataset=str(d.dataset), split=split,
              ranges=pack_geometry.augmentation_ranges(d),
              pack_wh=list(pack_geometry.pack_size(d)), jpeg_quality=int(d.pack_quality),
              chroma=str(d.pack_chroma))


def default_dir(config) -> pathlib.Path:
  """`data.packed_dir`, or `<data.root>/packed/<config name>` when it is empty."""
  if config.data.packed_dir:
    return pathlib.Path(config.data.packed_dir)
  return pathlib.Path(config.data.root) / "packed" / str(config.name)


def check(pack_dir, config, split: str = "train") -> dict:
  """Reads `pack-<split>.json`; raises ValueError naming the first setting that differs."""
  pack_dir = pathlib.Path(pack_dir)
  meta_file = pack_dir / f"pack-{split}.json"
  if not meta_file.exists():
    raise FileNotFoundError(f"{meta_file} not found: make the pack with `python -m "
                            f"sbpose_jax.pack --config {config.name} --split {split} "
                            f"--out {pack_dir}`")
  meta = json.loads(meta_file.read_text())
  if not meta.get("complete"):
    raise ValueError(f"the pack in {pack_dir} is unfinished: re-run `python -m sbpose_jax.pack "
                     f"--config {config.name} --split {split} --out {pack_dir}` to finish it")
  want = pack_key(config, split)

  def flat(d, prefix=""):
    for k, v in d.items():
      yield from (flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)])

  have = dict(flat(meta["key"]))
  for k, v in flat(want):
    if have.get(k) != v:
      raise ValueError(f"the pack in {pack_dir} was made with {k}={have.get(k)!r}, the config "
                       f"{config.name} has {v!r}: re-pack (python -m sbpose_jax.pack) or fix "
                       "the config")
  ann = pathlib.Path(config.data.root) / config.data[f"{split}_ann"]
  made = meta["annotations"]
  if ann.exists():
    if file_digest(ann)["sha256"] != made["sha256"]:
      raise ValueError(f"the pack in {pack_dir} was made from another annotation file "
                       f"({made['path']}) than {ann}")
  elif pathlib.Path(made["path"]).name != ann.name:
    raise ValueError(f"the pack in {pack_dir} was made from {made['path']}, not {ann}")
  return meta


# ------------------------------------------------------------------------------------------------
# Reading.

@dataclasses.dataclass
class Pack:
  """An opened pack split: `records` (image frame, row i = example i) and the TFDS source."""
  directory: pathlib.Path
  split: str
  records: Records
  source: Any
  meta: dict

  def __len__(self) -> int:
    return len(self.records)

  @property
  def pack_wh(self) -> tuple[int, int]:
    return tuple(self.meta["key"]["pack_wh"])

  @property
  def planes(self) -> bool:
    """The crops are stored (and shipped) as 4:2:0 YCbCr planes (data/ycc420.py)."""
    return self.meta["key"].get("chroma") == "planes"


def open_pack(pack_dir, config, split: str = "train") -> Pack:
  """Checks the pack against the config and opens it (records memory-mapped)."""
  import tensorflow_datasets as tfds  # why: TFDS loads only for packed crops
  pack_dir = pathlib.Path(pack_dir)
  meta = check(pack_dir, config, split)
  records = Records.load(pack_dir / f"records-{split}", mmap=True)
  builder = tfds.builder_from_directory(str(pack_dir))
  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  if len(source) != len(records):
    raise ValueError(f"{pack_dir}: {len(source)} examples but {len(records)} records")
  return Pack(pack_dir, split, records, source, meta)


def read_jpeg(source, row: int) -> tuple[bytes, int]:
  """(JPEG bytes, record_index) of example `row`, parsing only those two features.

  TFDS's full `source[row]` converts all twelve features to numpy (~0.2 ms); training needs
  the crop alone (the rest is in the pack's records).
  """
  from tensorflow_datasets.proto import tf_example_pb2  # why: TFDS loads only for packed crops
  raw = getattr(source, "data_source", source)[row]
  feature = tf_example_pb2.Example.FromString(raw).features.feature
  return feature["image"].bytes_list.value[0], int(feature["record_index"].int64_list.value[0])


@functools.lru_cache(maxsize=256)
def _stand_in(h: int, w: int) -> np.ndarray:
  """A read-only zero-stride (h, w, 3) uint8 array: the full image's shape at no cost."""
  return np.broadcast_to(np.zeros((), np.uint8), (h, w, 3))


def decode_crop(jpeg: bytes, colour_order: str = "rgb", name: str = "crop") -> np.ndarray:
  """A packed crop's JPEG → (Hp, Wp, 3) uint8 in `colour_order`, or with colour_order
  "planes" a planes JPEG → (3Hp/2, Wp) uint8 4:2:0 YCbCr planes (data/ycc420.py).

  simplejpeg (libjpeg-turbo, decoding straight into RGB or BGR) gives the pixels of
  `cv2.imdecode` (+ BGR→RGB) in ~60% of its time (tests/test_packed.py checks the equality);
  strict, so a truncated or corrupt JPEG raises instead of decoding partly. Raises ValueError
  naming `name` when the bytes are not a decodable JPEG (or not of the expected kind).
  """
  if colour_order not in ("rgb", "bgr", "planes"):
    raise ValueError(f"colour_order must be 'rgb', 'bgr' or 'planes', got {colour_order!r}")
  space = "GRAY" if colour_order == "planes" else colour_order.upper()
  try:
    out = simplejpeg.decode_jpeg(jpeg, colorspace=space)
  except ValueError as e:
    raise ValueError(f"{name}: undecodable JPEG ({e})") from None
  return out.reshape(out.shape[:2]) if colour_order == "planes" else out


@dataclasses.dataclass
class PackedLoader(grain.transforms.Map):
  """Record row → element: image-frame centre/scale/joints (from `records`, so the augmentation
  draws equal the full-image path's), the decoded crop and its image → crop matrix.

  `image` is a zero-stride stand-in of the full image's shape: the augmentations read only its
  width (the flip). Writes pack_image (Hp, Wp, 3) uint8 in `colour_order` (with `planes`, the
  (3Hp/2, Wp) 4:2:0 planes as stored), image_to_crop (2, 3).
  """
  records: Records
  source: Any
  colour_order: str = "rgb"
  planes: bool = False

  def map(self, index) -> Element:
    row = int(index)
    jpeg, record_index = read_jpeg(self.source, row)
    r = self.records
    want = int(r.extra["pack_source_row"][row])
    if record_index != want:
      raise ValueError(f"pack example {row} is record {record_index}, expected {want}: "
                       "the pack's records do not match its examples")
    crop = decode_crop(jpeg, "planes" if self.planes else self.colour_order,
                       f"pack example {row} (record {want})")
    w, h = (int(v) for v in r.extra["pack_image_wh"][row])
    return {"image": _stand_in(h, w),
            "pack_image": crop, "image_to_crop": r.extra["pack_image_to_crop"][row],
            "center": r.center_xy[row], "scale": r.scale_wh[row], "joints": r.joints_xy[row],
            "joints_vis": r.joints_vis[row], "index": np.int32(row)}


def crop_matrix(element: Element, input_wh) -> tuple[np.ndarray, np.ndarray]:
  """(image → output matrix exactly as TopDownAffine, crop → output (2, 3) for the pixels)."""
  matrix = geometry.get_affine_transform(element["center"], element["scale"],
                                         float(element.get("rotation", 0.0)), input_wh)
  image_matrix = (geometry.fold_flip(matrix, element["image"].shape[1])
                  if element.get("flipped") else matrix)
  t = element["image_to_crop"]            # diagonal scale + shift: inverted in closed form
  k = np.array([t[0, 0], t[1, 1]])
  lin = image_matrix[:, :2] / k
  return matrix, np.concatenate([lin, (image_matrix[:, 2] - lin @ t[:, 2])[:, None]], axis=1)


def invert_affine(m: np.ndarray) -> np.ndarray:
  """Inverse of a (2, 3) affine map (as cv2.invertAffineTransform, in float64)."""
  a, b, c, d = m[0, 0], m[0, 1], m[1, 0], m[1, 1]
  det = a * d - b * c
  lin = np.array([[d, -b], [-c, a]]) / det
  return np.concatenate([lin, -(lin @ m[:, 2])[:, None]], axis=1)


class PackedAffine(grain.transforms.Map):
  """The crop step of the packed path, in place of `transforms.TopDownAffine`.

  Joints are mapped exactly as TopDownAffine maps them (the same matrix). The pixels come from
  the packed crop through `M · T⁻¹` (the mirror folded in when the sample is flipped):
  warped here with cv2 (`on_device=False`), or left to the device (`on_device=True`: `image`
  is the crop itself and `warp_matrix` (2, 3) float32 maps output pixels to crop pixels,
  for `device_warp.warp_affine`). A crop of 4:2:0 planes (`colour_order` given: the loader's
  `planes`) is converted to colour here for the host warp, and shipped as planes to the device.

  Reads image (shape), pack_image, image_to_crop, center, scale, rotation, flipped, joints,
  joints_vis; writes image, joints, flip_pending=False (and warp_matrix, flipped on device).
  """

  def __init__(self, input_wh, on_device: bool = False, planes_colour_order: str | None = None):
    self.input_wh = (int(input_wh[0]), int(input_wh[1]))
    self.on_device = bool(on_device)
    self.planes_colour_order = planes_colour_order

  def map(self, element: Element) -> Element:
    matrix, pixel_matrix = crop_matrix(element, self.input_wh)
    out = {k: v for k, v in element.items() if k not in ("pack_image", "image_to_crop")}
    out["flip_pending"] = False
    crop = element["pack_image"]
    if self.on_device:
      out["image"] = crop
      out["warp_matrix"] = invert_affine(pixel_matrix).astype(np.float32)
      out["flipped"] = np.bool_(element.get("flipped", False))
    else:
      if self.planes_colour_order:
        crop = ycc420.planes_to_colour(crop, self.planes_colour_order)
      out["image"] = cv2.warpAffine(crop, pixel_matrix, self.input_wh,
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                    borderValue=0)
    joints = np.asarray(element["joints"], np.float32)
    vis = np.asarray(element["joints_vis"]).reshape(-1)
    mapped = geometry.affine_points(joints, matrix).astype(np.float32)
    out["joints"] = np.where((vis > 0)[:, None], mapped, joints)
    return out


class PackedDeviceFinish:
  """The packed device path's batch-level tail (pipeline `finish`): for the B augmented
  elements of a batch, what `PackedAffine(on_device=True)`, `transforms.GenerateTarget` and
  the field selection give per sample, with the joint mapping and the target weights done once
  over the batch (the same float operations elementwise, so the same bits: the per-sample
  path is kept for the host warp and tests/test_device_warp.py compares the two).
  """

  def __init__(self, config, host_targets: bool, fields):
    d = config.data
    self.input_wh = (int(d.input_size[0]), int(d.input_size[1]))
    self.target = transforms.GenerateTarget(d.input_size, d.heatmap_size, d.sigma,
                                            with_heatmaps=host_targets)
    self.fields = tuple(fields)

  def __call__(self, elements: list[Element]) -> list[Element]:
    mats, warps = [], []
    for e in elements:
      matrix, pixel_matrix = crop_matrix(e, self.input_wh)
      mats.append(matrix)
      warps.append(invert_affine(pixel_matrix).astype(np.float32))
    joints = np.stack([np.asarray(e["joints"], np.float32) for e in elements])  # (B, K, 2)
    vis = np.stack([np.asarray(e["joints_vis"]).reshape(-1) for e in elements])
    mapped = geometry.affine_points(joints, np.stack(mats)).astype(np.float32)
    joints = np.where((vis > 0)[..., None], mapped, joints)
    t = self.target
    weight = heatmaps.target_weight(joints.reshape(-1, 2), vis.reshape(-1), t.heatmap_wh,
                                    t.sigma, t.stride).reshape(vis.shape)
    hm_joints = np.concatenate([joints / t.stride.astype(np.float32), weight[..., None]],
                               axis=-1).astype(np.float32)
    out = []
    for i, e in enumerate(elements):
      done = dict(e, image=e["pack_image"], warp_matrix=warps[i], flip_pending=False,
                  flipped=np.bool_(e.get("flipped", False)), target_weight=weight[i],
                  joints=hm_joints[i])
      if t.with_heatmaps:
        done["target"] = heatmaps.encode(joints[i], e["joints_vis"], t.heatmap_wh, t.sigma,
                                         t.stride)[0]
      out.append({k: done[k] for k in self.fields if k in done})
    return out


def train_dataset(pack: Pack, config, *, on_device: bool | None = None, **kwargs):
  """`pipeline.train_dataset` over a pack: same shuffle, sharding, draws and batches.

  With `on_device` (default `config.data.warp_on_device`) the batches carry the crops
  (B, Hp, Wp, 3) uint8 (a planes pack: (B, 3Hp/2, Wp) uint8 4:2:0 YCbCr planes, converted in
  the step by `ycc420.planes_to_colour_jnp`) and `warp_matrix` (B, 2, 3) float32 instead of
  the warped images.
  """
  # why: loads JAX and the model stack on use, so that --help answers at once
  from sbpose_jax.data import pipeline
  d = config.data
  on_device = bool(d.warp_on_device) if on_device is None else on_device
  if not d.flip_in_affine:
    # PackedAffine folds every flip into its matrix; a RandomFlip that mirrors would copy the
    # full-size stand-in image for nothing. The draws are the same either way.
    config = copy.deepcopy(config)
    config.data.flip_in_affine = True
  extra = tuple(kwargs.pop("extra_fields", ())) + (("warp_matrix",) if on_device else ())
  if on_device:   # the matrices, joints and target weights batched (PackedDeviceFinish)
    kwargs["finish"] = PackedDeviceFinish(config, kwargs.get("host_targets", True),
                                          pipeline.train_fields(config, extra))
  return pipeline.train_dataset(
      pack.records, config, extra_fields=extra,
      loader=lambda records: PackedLoader(records, pack.source, d.colour_order, pack.planes),
      affine=PackedAffine(d.input_size, on_device, d.colour_order if pack.planes else None),
      **kwargs)
