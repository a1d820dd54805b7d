"""The RTMDet person detector's test time, as MMDetection's (docs/detection.md).

Public API
----------
    det = Detector.load("models/rtmdet_m")   # a saved detector (python -m sbpose_jax.convert)
    found = det([image, ...])                 # HxWx3 uint8 RGB (colour="bgr": cv2's)
    found[i].boxes, found[i].scores           # (N, 4) xyxy image pixels, (N,) descending

    prepared = prepare(image_bgr, settings)   # host: resize + pad (numpy/cv2, pure)
    boxes, scores, count = detect_batch(variables, padded, valid_hw, scale_factors, spec)

`detect_batch` is pure and jittable (`spec` static): uint8 (B, S, S, 3) images as `prepare`
pads them in (in the network's channel order, BGR), then on the device the data preprocessor's
normalisation, the network, the priors, decoding, sigmoid scores, the score threshold, the
top `nms_pre` per level, the boxes mapped back to the original images, `min_bbox_size`,
class-aware NMS and `max_per_img`, with no host round trip per image. Out: boxes (B, M, 4),
scores (B, M) (M = max_per_img; zeros past count), count (B,). `candidates` is the same
program stopped before NMS (for the parity tests).

What MMDetection does (`mmcv.imrescale` + `Pad`, `DetDataPreprocessor`, `MlvlPointGenerator`,
`base_dense_head._predict_by_feat_single` / `_bbox_post_process`, `distance2bbox`, mmcv's
`batched_nms`) and where we differ, only in the order of exactly equal scores: docs/detection.md.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, NamedTuple, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from sbpose_jax.inference import nms as nms_lib
from sbpose_jax.models import rtmdet
from sbpose_jax.weights import rtmdet_conversion

DEFAULT_BATCH_SIZES = (1, 4, 16)


@dataclasses.dataclass(frozen=True)
class DetectSpec:
  """Everything static about a detection program: hashable, a `jit` static argument.

  arch: the network. settings: the test pipeline. dtype: compute dtype ("float32" is
  float32 throughout, for MMDetection's numbers; "bfloat16" is faster).
  """
  arch: rtmdet.RTMDetArch
  settings: rtmdet.TestSettings
  dtype: str = "float32"


class Prepared(NamedTuple):
  """One image as the test pipeline feeds it: padded (S, S, 3) uint8, valid_hw (2,) the
  resized image's (h, w) before padding, scale_factor (2,) (new_w / w, new_h / h)."""
  padded: np.ndarray
  valid_hw: np.ndarray
  scale_factor: np.ndarray


class Detections(NamedTuple):
  """People found in one image: boxes (N, 4) x1, y1, x2, y2 in image pixels, scores (N,)."""
  boxes: np.ndarray
  scores: np.ndarray


# --- Host: resize and pad ------------------------------------------------------------------------


def rescale_size(hw: tuple[int, int], size: int) -> tuple[int, int]:
  """mmcv.imrescale's new (h, w) for scale (size, size): factor min(S / long, S / short),
  each side int(side * factor + 0.5)."""
  h, w = hw
  factor = min(size / max(h, w), size / min(h, w))
  return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def prepare(image: np.ndarray, settings: rtmdet.TestSettings) -> Prepared:
  """Resize(keep_ratio, cv2 INTER_LINEAR) + Pad(S, bottom/right, pad_value) of one image.

  image: (H, W, 3) uint8, any channel order (the pad value is the same in every channel).
  Raises ValueError (one line) for an image that is empty, not HxWx3 uint8, or so thin that
  a side becomes 0 pixels at the input size.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
    raise ValueError(f"the detector takes HxWx3 uint8 images, got {image.dtype} {image.shape}")
  size = settings.input_size
  new_h, new_w = rescale_size(image.shape[:2], size)
  if new_h < 1 or new_w < 1:
    raise ValueError(f"a {image.shape[0]}x{image.shape[1]} image is {new_h}x{new_w} pixels at "
                     f"the detector's {size}x{size} input: too thin to detect people in")
  resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
  padded = np.full((size, size, 3), int(settings.pad_value), np.uint8)
  padded[:new_h, :new_w] = resized
  h, w = image.shape[:2]
  return Prepared(padded, np.array([new_h, new_w], np.int32),
                  np.array([new_w / w, new_h / h], np.float64))


# --- Device: the jitted test time ----------------------------------------------------------------


def grid_priors(size: int) -> list[np.ndarray]:
  """MlvlPointGenerator(offset=0, strides 8/16/32): per level (H*W, 2) x, y, row-major."""
  out = []
  for s in rtmdet.STRIDES:
    n = size // s
    ys, xs = np.meshgrid(np.arange(n) * s, np.arange(n) * s, indexing="ij")
    out.append(np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32))
  return out


def normalise(images, spec: DetectSpec):
  """uint8 (B, S, S, 3) in the network's channel order -> float32 (x - mean) / std."""
  x = images.astype(jnp.float32)
  return (x - jnp.asarray(spec.settings.mean, jnp.float32)) / jnp.asarray(spec.settings.std,
                                                                          jnp.float32)


def _level_topk(cls, reg, priors, spec: DetectSpec):
  """filter_scores_and_topk of one level: scores > score_thr, the top nms_pre (prior, class)
  pairs. cls (B, HW, C) logits, reg (B, HW, 4) -> scores, labels, prior index, distances, points,
  valid, each (B, k, ...)."""
  b, hw, c = cls.shape
  scores = jax.nn.sigmoid(cls).reshape(b, hw * c)
  thr = jnp.float32(spec.settings.score_thr)
  k = min(spec.settings.nms_pre, hw * c)
  top, idx = jax.lax.top_k(jnp.where(scores > thr, scores, -1.0), k)
  prior, label = idx // c, idx % c
  dist = jnp.take_along_axis(reg, prior[..., None], axis=1)
  return top, label, prior, dist, jnp.asarray(priors)[prior], top > thr


def distance2bbox(points, dist, valid_hw):
  """x1 = px - left, ..., clipped to the resized image (h, w) as MMDetection's decode."""
  h = valid_hw[:, None, 0].astype(jnp.float32)
  w = valid_hw[:, None, 1].astype(jnp.float32)
  x1 = jnp.clip(points[..., 0] - dist[..., 0], 0, w)
  y1 = jnp.clip(points[..., 1] - dist[..., 1], 0, h)
  x2 = jnp.clip(points[..., 0] + dist[..., 2], 0, w)
  y2 = jnp.clip(points[..., 1] + dist[..., 3], 0, h)
  return jnp.stack([x1, y1, x2, y2], -1)


@functools.partial(jax.jit, static_argnames="spec")
def candidates(variables, padded_images, valid_hw, scale_factors, spec: DetectSpec):
  """The boxes that reach NMS, in original-image pixels.

  Args:
    variables: {"params", "batch_stats"} of spec.arch.
    padded_images: (B, S, S, 3) uint8 as `prepare` makes them, in the network's channel
      order (spec.settings.colour_order: BGR for MMDetection's RTMDets).
    valid_hw: (B, 2) int, the resized images' (h, w). scale_factors: (B, 2) (sx, sy).
  Returns:
    dict of boxes (B, N, 4), scores (B, N), labels (B, N), index (B, N) (level offset + prior),
    valid (B, N) (passed the score threshold and min_bbox_size); N = sum of the levels' top k.
  """
  model = rtmdet.build(spec.arch, spec.dtype)
  cls_levels, reg_levels = model.apply(variables, normalise(padded_images, spec))
  parts, offset = [], 0
  for cls, reg, priors in zip(cls_levels, reg_levels, grid_priors(padded_images.shape[1])):
    b, h, w, c = cls.shape
    top, label, prior, dist, points, ok = _level_topk(cls.reshape(b, h * w, c),
                                                      reg.reshape(b, h * w, 4), priors, spec)
    parts.append((distance2bbox(points, dist, valid_hw), top, label, prior + offset, ok))
    offset += h * w
  boxes, scores, labels, index, valid = (jnp.concatenate(p, axis=1) for p in zip(*parts))
  # _bbox_post_process: boxes * (1 / scale_factor) (float32, as scale_boxes), then min size.
  inv = (1.0 / scale_factors.astype(jnp.float32))
  boxes = boxes * jnp.tile(inv, 2)[:, None, :]
  wh = boxes[..., 2:] - boxes[..., :2]
  valid = valid & jnp.all(wh > spec.settings.min_bbox_size, axis=-1)
  return dict(boxes=boxes, scores=jnp.where(valid, scores, 0.0), labels=labels, index=index,
              valid=valid)


def _nms_one(boxes, scores, labels, valid, spec: DetectSpec):
  # batched_nms: labels apart by label * (max coordinate + 1) (no-op for one class).
  top = jnp.max(jnp.where(valid[:, None], boxes, 0.0))  # no candidate: no offset needed
  moved = boxes + (labels.astype(jnp.float32) * (top + 1.0))[:, None]
  keep, count = nms_lib.nms_fixed(moved, scores, valid, spec.settings.iou_thr,
                                  spec.settings.max_per_img)
  live = jnp.arange(keep.shape[0]) < count
  safe = jnp.where(live, keep, 0)
  return (jnp.where(live[:, None], boxes[safe], 0.0), jnp.where(live, scores[safe], 0.0),
          count)


@functools.partial(jax.jit, static_argnames="spec")
def select(c: dict, spec: DetectSpec):
  """Class-aware NMS and max_per_img on `candidates`' output, per image on the device."""
  return jax.vmap(functools.partial(_nms_one, spec=spec))(c["boxes"], c["scores"], c["labels"],
                                                          c["valid"])


def detect_batch(variables, padded_images, valid_hw, scale_factors, spec: DetectSpec):
  """The whole test time for a batch (arguments as `candidates`): `select(candidates(...))`,
  two jitted programs with no host round trip between them; `jax.jit(detect_batch,
  static_argnames="spec")` makes it one (for export).

  Returns boxes (B, M, 4) xyxy in original-image pixels, scores (B, M) descending, count (B,)
  int32: image b's detections are boxes[b, :count[b]]; M = spec.settings.max_per_img.
  """
  return select(candidates(variables, padded_images, valid_hw, scale_factors, spec), spec)


# --- The detector object ------------------------------------------------------------------------


class Detector:
  """A loaded detector: `detector(images)` -> a list of Detections, one per image.

  Images are padded to the input size on the host and batched to a few compiled batch sizes
  (`batch_sizes`; a longer list is split by the largest), one jitted `detect_batch` per batch.
  """

  def __init__(self, variables: dict, meta: rtmdet_conversion.DetectorMeta,
               dtype: str = "float32", batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES):
    if not batch_sizes or min(batch_sizes) < 1:
      raise ValueError(f"batch_sizes must be positive, got {batch_sizes}")
    self.meta = meta
    self.variables = jax.device_put(variables)
    self.batch_sizes = tuple(sorted({int(b) for b in batch_sizes}))
    self.spec = DetectSpec(meta.arch, meta.settings, str(dtype))

  @classmethod
  def load(cls, path: str | os.PathLike, dtype: str = "float32",
           batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, **settings: Any) -> "Detector":
    """A saved detector; `settings` replace recorded test settings (e.g. score_thr=0.3).

    A pose model (or anything else) at `path` raises ValueError in one line naming it.
    """
    variables, meta = rtmdet_conversion.load_detector(path)
    if settings:
      meta = dataclasses.replace(meta, settings=dataclasses.replace(meta.settings, **settings))
    return cls(variables, meta, dtype, batch_sizes)

  @property
  def settings(self) -> rtmdet.TestSettings:
    return self.meta.settings

  def __call__(self, images: Sequence[np.ndarray], colour: str = "rgb") -> list[Detections]:
    """images: HxWx3 uint8 arrays in `colour` order ("rgb", or "bgr" as cv2 reads them)."""
    if colour not in ("rgb", "bgr"):
      raise ValueError(f"colour must be 'rgb' or 'bgr', got {colour!r}")
    flip = colour != self.settings.colour_order
    # The pad value is grey: flipping the channels after padding is the same as before.
    prepared = [p._replace(padded=p.padded[..., ::-1]) if flip else p
                for p in (prepare(img, self.settings) for img in images)]
    out: list[Detections] = []
    biggest = self.batch_sizes[-1]
    for start in range(0, len(prepared), biggest):
      out.extend(self._run(prepared[start:start + biggest]))
    return out

  def _run(self, chunk: list[Prepared]) -> list[Detections]:
    size = next(b for b in self.batch_sizes if b >= len(chunk))
    filled = chunk + [chunk[0]] * (size - len(chunk))  # repeated images, results dropped
    boxes, scores, count = jax.device_get(detect_batch(
        self.variables, np.stack([p.padded for p in filled]),
        np.stack([p.valid_hw for p in filled]), np.stack([p.scale_factor for p in filled]),
        self.spec))
    return [Detections(boxes[i, :count[i]].copy(), scores[i, :count[i]].copy())
            for i in range(len(chunk))]
