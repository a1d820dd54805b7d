"""Person-detector data: COCO boxes -> grain datasets of fixed-shape numpy batches (RTMDet's).

Training (`train_dataset`), per process, as `pipeline.train_dataset` (same stream rules: one
global permutation per epoch from the seed, `[process_index::process_count]`, batches grouped
on the MapDataset so they are the same for any worker count, `start_batch` for a resumed run):

Not yet the topology-free stream of pose training (pipeline.ProcessPart, issue 24): the
processes stride the permutation, so a detector run resumed on another process count reads
another (equally valid) stream; on one process the stream is a function of the step alone.

  load (cv2, BGR)  ->  RandomResize  ->  RandomCrop  ->  YOLOXHSVRandomAug  ->  RandomFlip
  ->  Pad(S, 114)  ->  boxes padded to `data.max_boxes` rows + a `box_valid` mask

which is the second-stage (no-mosaic) pipeline of MMDetection's RTMDet configs
(configs/rtmdet/rtmdet_tiny_8xb32-300e_coco.py `train_pipeline_stage2`: RandomResize(scale=
(S, S), ratio_range, keep_ratio) -> RandomCrop(crop_size=(S, S)) -> YOLOXHSVRandomAug ->
RandomFlip(0.5) -> Pad(S, 114)). Left out: CachedMosaic and MixUp (the first stage). Mosaic
puts four images' objects at half scale into one; the synthetic stills already hold 1 to 6 people
over a range of scales, and on 2 CPU cores each mosaic sample costs four decodes: it was not
measured to pay here (docs/benchmarks.md, "Detector").

`data.crop_size` (width, height), when set, replaces the S x S of RandomCrop and Pad (as
`crop_size` and `size` of those MMDetection transforms): the network is fully convolutional, so
it can train on W x H crops at the test time's scale (RandomResize still fits the image into
S x S) and still test on the S x S letterbox. A 4:3 frame letterboxed to S x S is a quarter
padding; a 4:3 crop spends no time on it (docs/benchmarks.md, "Detector").

Every augmentation moves the boxes with the pixels: resize scales them, the crop shifts and
clips them (a box left with a side under `min_box_size` pixels is dropped, as RandomCrop drops
empty boxes), the flip mirrors them (x1' = S_w - x2), the pad leaves them. Boxes are xyxy in
input pixels, float32.

Evaluation (`eval_batches`): each image resized keeping its ratio to fit S x S and padded
bottom/right with 114, as the detector's test time (mmcv.imrescale + Pad); with the scale
factor to map boxes back. Batches are padded to a fixed size (mask False on the padding).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator

import cv2
import grain
import numpy as np

from sbpose_jax.data import pipeline

PAD_VALUE = 114


@dataclasses.dataclass(frozen=True)
class DetRecords:
  """The images of a COCO-format person dataset and their boxes, as flat numpy arrays.

  image_files (I,) relative to image_root; image_ids (I,); image_wh (I, 2); boxes (M, 4) xyxy
  float32 of every non-crowd person box with positive size; box_start (I + 1,) int64: image i's
  boxes are boxes[box_start[i]:box_start[i + 1]].
  """
  image_root: str
  image_files: np.ndarray
  image_ids: np.ndarray
  image_wh: np.ndarray
  boxes: np.ndarray
  box_start: np.ndarray
  ann_file: str = ""

  def __len__(self) -> int:
    return len(self.image_files)

  def boxes_of(self, i: int) -> np.ndarray:
    return self.boxes[self.box_start[i]:self.box_start[i + 1]]


def read_coco_boxes(ann_file: str, image_root: str, category: int | None = None) -> DetRecords:
  """The person boxes of a COCO annotation file (category `category`, default the one named
  "person", else the first). Crowd boxes and boxes without area are left out."""
  try:
    with open(ann_file) as f:
      coco = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"annotation file {ann_file} does not exist") from None
  except ValueError as e:
    raise ValueError(f"{ann_file}: not valid JSON ({e})") from None
  for key in ("images", "annotations", "categories"):
    if key not in coco:
      raise ValueError(f"{ann_file}: not a COCO annotation file (no {key!r})")
  if category is None:
    named = [c["id"] for c in coco["categories"] if c.get("name") == "person"]
    category = named[0] if named else coco["categories"][0]["id"]
  images = sorted(coco["images"], key=lambda im: im["id"])
  row = {im["id"]: i for i, im in enumerate(images)}
  per_image: list[list] = [[] for _ in images]
  for a in coco["annotations"]:
    if a.get("category_id") != category or a.get("iscrowd", 0) or a["image_id"] not in row:
      continue
    x, y, w, h = (float(v) for v in a["bbox"])
    if w > 0 and h > 0:
      per_image[row[a["image_id"]]].append((x, y, x + w, y + h))
  counts = np.array([len(b) for b in per_image], np.int64)
  flat = [b for bs in per_image for b in bs]
  return DetRecords(
      image_root=image_root,
      image_files=np.array([im["file_name"] for im in images]),
      image_ids=np.array([im["id"] for im in images], np.int64),
      image_wh=np.array([(im.get("width", 0), im.get("height", 0)) for im in images], np.int32),
      boxes=np.asarray(flat, np.float32).reshape(-1, 4),
      box_start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
      ann_file=ann_file)


def read_split(data, split: str) -> DetRecords:
  """`read_coco_boxes` of a config's `data.<split>_ann` / `data.<split>_images`."""
  return read_coco_boxes(os.path.join(data.root, data[f"{split}_ann"]),
                         os.path.join(data.root, data[f"{split}_images"]))


def load_image(path: str) -> np.ndarray:
  image = cv2.imread(path, cv2.IMREAD_COLOR)
  if image is None:
    raise FileNotFoundError(f"cannot read image {path}")
  return image


# ------------------------------------------------------------------------------ augmentations

def random_resize(image, boxes, rng: np.random.Generator, size: int, ratio_range):
  """RandomResize(scale=(S, S), ratio_range, keep_ratio=True): target scale S * r, r uniform in
  `ratio_range`, the image fitted into it keeping its aspect ratio (mmcv.imrescale)."""
  r = rng.uniform(*ratio_range)
  h, w = image.shape[:2]
  factor = size * r / max(h, w)
  new_w, new_h = max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))
  image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
  return image, boxes * np.array([new_w / w, new_h / h] * 2, np.float32)


def random_crop(image, boxes, rng: np.random.Generator, size, min_box_size: float):
  """RandomCrop(crop_size): a random window of `size` (S for S x S, or (width, height); the
  whole side where the image is shorter); boxes shifted, clipped to it, and dropped when a side
  falls under `min_box_size` pixels."""
  cw, ch = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
  h, w = image.shape[:2]
  y0 = int(rng.integers(0, max(h - ch, 0) + 1))
  x0 = int(rng.integers(0, max(w - cw, 0) + 1))
  image = image[y0:y0 + ch, x0:x0 + cw]
  ch, cw = image.shape[:2]
  boxes = boxes - np.array([x0, y0, x0, y0], np.float32)
  boxes = np.clip(boxes, 0, np.array([cw, ch, cw, ch], np.float32))
  keep = ((boxes[:, 2] - boxes[:, 0]) >= min_box_size) & ((boxes[:, 3] - boxes[:, 1])
                                                          >= min_box_size)
  return image, boxes[keep]


def hsv_augment(image, rng: np.random.Generator, deltas=(5, 30, 30)):
  """YOLOXHSVRandomAug(hue_delta, saturation_delta, value_delta) on a BGR uint8 image."""
  gains = rng.uniform(-1, 1, 3) * np.asarray(deltas, np.float64)
  gains = (gains * rng.integers(0, 2, 3)).astype(np.int16)
  hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.int16)
  hsv[..., 0] = (hsv[..., 0] + gains[0]) % 180
  hsv[..., 1] = np.clip(hsv[..., 1] + gains[1], 0, 255)
  hsv[..., 2] = np.clip(hsv[..., 2] + gains[2], 0, 255)
  return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


def flip(image, boxes):
  """Horizontal flip of the image and its xyxy boxes."""
  w = image.shape[1]
  out = boxes.copy()
  out[:, 0] = w - boxes[:, 2]
  out[:, 2] = w - boxes[:, 0]
  return image[:, ::-1], out


def pad_to(image, size, value: int = PAD_VALUE) -> np.ndarray:
  """Pad(size, pad_val=value): the image at the top left of a canvas of `size` (S for S x S,
  or (width, height))."""
  w, h = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
  out = np.full((h, w, 3), value, np.uint8)
  h, w = min(image.shape[0], h), min(image.shape[1], w)
  out[:h, :w] = image[:h, :w]
  return out


def pad_boxes(boxes: np.ndarray, max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
  """(max_boxes, 4) float32 boxes (zeros past the real ones) and a (max_boxes,) bool mask; with
  more real boxes than rows, the largest are kept."""
  if len(boxes) > max_boxes:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    boxes = boxes[np.sort(np.argsort(-area, kind="stable")[:max_boxes])]
  out = np.zeros((max_boxes, 4), np.float32)
  out[:len(boxes)] = boxes
  return out, np.arange(max_boxes) < len(boxes)


class LoadSample(grain.transforms.Map):
  """Record row -> {"image": BGR uint8, "boxes": (n, 4) xyxy}."""

  def __init__(self, records: DetRecords):
    self.records = records

  def map(self, i):
    i = int(i)
    path = os.path.join(self.records.image_root, str(self.records.image_files[i]))
    return {"image": load_image(path), "boxes": self.records.boxes_of(i).copy()}


class Augment(grain.transforms.RandomMap):
  """The whole training augmentation of one sample (module docstring), fixed-shape out."""

  def __init__(self, size: int, max_boxes: int, ratio_range=(0.5, 1.5), flip_prob=0.5,
               hsv=(5, 30, 30), min_box_size=1.0, crop_size=None):
    self.size, self.max_boxes = int(size), int(max_boxes)
    # the (width, height) of the crop and of the padded output (`crop_wh`); S x S by default
    self.crop = (self.size, self.size) if crop_size is None else (
        int(crop_size[0]), int(crop_size[1]))
    self.ratio_range = tuple(float(r) for r in ratio_range)
    self.flip_prob, self.hsv, self.min_box_size = float(flip_prob), tuple(hsv), min_box_size

  def random_map(self, element, rng: np.random.Generator):
    image, boxes = element["image"], np.asarray(element["boxes"], np.float32).reshape(-1, 4)
    image, boxes = random_resize(image, boxes, rng, self.size, self.ratio_range)
    image, boxes = random_crop(image, boxes, rng, self.crop, self.min_box_size)
    if any(self.hsv):
      image = hsv_augment(image, rng, self.hsv)
    if rng.random() < self.flip_prob:
      image, boxes = flip(image, boxes)
    padded, valid = pad_boxes(boxes, self.max_boxes)
    return {"image": pad_to(np.ascontiguousarray(image), self.crop), "boxes": padded,
            "box_valid": valid}


def crop_wh(data) -> tuple[int, int]:
  """The training crop's (width, height): `data.crop_size`, or S x S where it is (0, 0) or
  absent."""
  crop = tuple(int(v) for v in data.get("crop_size", None) or (0, 0))
  size = int(data.input_size)
  return (size, size) if not all(crop) else crop


def augment_from_config(config) -> Augment:
  d = config.data
  return Augment(int(d.input_size), int(d.max_boxes), tuple(d.resize_ratio), float(d.flip_prob),
                 tuple(d.hsv_deltas), float(d.min_box_size), crop_wh(d))


def train_dataset(records: DetRecords, config, *, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  num_workers: int | None = None, start_batch: int = 0) -> grain.IterDataset:
  """The training batches of one process: image (B, H, W, 3) uint8 BGR (the crop, S x S by
  default), boxes (B, G, 4)
  float32 xyxy input pixels, box_valid (B, G) bool; endless; batch k is a function of the
  seed and k alone (any num_workers)."""
  if len(records) == 0:
    raise ValueError(f"{records.ann_file}: no training images")
  num_workers = int(config.data.num_workers) if num_workers is None else num_workers
  ds = grain.MapDataset.range(len(records)).seed(seed).shuffle().repeat(None)
  ds = ds[process_index::process_count]
  ds = ds.map(LoadSample(records)).random_map(augment_from_config(config))
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=list)
  if start_batch:
    ds = ds[int(start_batch):]
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  it = it.batch(1, batch_fn=pipeline.StackSamples())
  return pipeline.prefetch(it, num_workers)


# ------------------------------------------------------------------------------- evaluation

def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
  """Keep-ratio resize to fit S x S (mmcv.imrescale's rounding) + Pad(114) -> (S, S, 3), the
  scale factor (input pixels per image pixel)."""
  h, w = image.shape[:2]
  factor = min(size / max(h, w), size / min(h, w))
  new_h, new_w = int(h * factor + 0.5), int(w * factor + 0.5)
  resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
  return pad_to(resized, size), factor


def eval_batches(records: DetRecords, size: int, batch_size: int) -> Iterator[dict[str, Any]]:
  """Every image once, in order: image (B, S, S, 3) uint8 BGR, scale (B,) float32, index (B,)
  int32 record row, mask (B,) bool (False on the padding of the last batch)."""
  n = len(records)
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    mask = rows < n
    rows = np.minimum(rows, n - 1)
    images, scales = [], []
    for i in rows:
      image, factor = letterbox(load_image(os.path.join(records.image_root,
                                                        str(records.image_files[i]))), size)
      images.append(image)
      scales.append(factor)
    yield {"image": np.stack(images), "scale": np.asarray(scales, np.float32),
           "index": rows.astype(np.int32), "mask": mask}
