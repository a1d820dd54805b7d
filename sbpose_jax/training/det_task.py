"""The detection task of the one training loop (`training/loop.py`, `config.task="detection"`):
RTMDet trained with its published recipe (MMDetection 3.x
configs/rtmdet/rtmdet_*_8xb32-300e_coco.py).

What the loop asks of a task (loop.py `PoseTask` is the other one): check the config, read the
training data, build the model, the optimizer and its schedule, the static step settings, the
training batches from a step on, the initial variables, the jitted step, the evaluation and the
saved model. Everything else (mesh, sharding, orbax checkpoints and resume, the lock, progress
bar, logs, best/last models, one-line errors) is the loop's, shared with pose training.

The recipe:
* `DynamicSoftLabelAssigner(topk=13)`, `QualityFocalLoss(beta=2)`, `GIoULoss(loss_weight=2)`
  (training/det_assigner.py, training/det_losses.py), on every prior of the fixed S x S input;
  ground truth padded to `data.max_boxes` boxes with a mask, so the step compiles once;
* AdamW (weight decay on conv kernels only: the configs' `paramwise_cfg=dict(norm_decay_mult=0,
  bias_decay_mult=0)`), linear warmup from `warmup_ratio` x lr, flat, then cosine annealing to
  `min_lr_ratio` x lr over the second half of training (`CosineAnnealingLR(begin=max_epochs // 2,
  eta_min=base_lr * 0.05)`);
* `ExpMomentumEMA(momentum=0.0002, gamma=2000)` of the parameters, kept in the optimizer state
  (so orbax checkpoints and resumes it with everything else): the EMA weights are evaluated and
  saved (model_best / model_last), as mmengine's EMAHook swaps them in. The BatchNorm statistics
  are the live ones (mmengine also averages buffers; at this momentum the difference is small);
* the data pipeline of data/det_pipeline.py (resize, crop, HSV, flip, pad; no mosaic: see there).

Evaluation: COCO box AP (evaluators/coco_bbox.py) of the EMA model on `data.val_ann`: each
image letterboxed to S x S as the detector's test time, scores sigmoid, the `test.nms_pre` best
priors, greedy NMS at `test.iou_thr`, `test.max_per_img` boxes, mapped back to image pixels.
The saved models are detectors (`kind: "detector"`, weights/rtmdet_conversion.py DetectorMeta)
that `inference/detection.py`'s `Detector.load` reads.
"""
from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sbpose_jax import evaluators
from sbpose_jax.data import det_pipeline
from sbpose_jax.data import synthetic_video
from sbpose_jax.models import rtmdet
from sbpose_jax.training import det_assigner
from sbpose_jax.training import det_losses
from sbpose_jax.training import state as ts
from sbpose_jax.weights import rtmdet_conversion

ARCH_FIELDS = ("size", "deepen_factor", "widen_factor", "depthwise", "head_depthwise",
               "share_conv", "exp_on_reg", "num_classes")


# ------------------------------------------------------------------------------ the model

def build_arch(config) -> rtmdet.RTMDetArch:
  """The RTMDetArch of `config.model` (a published size's options unless overridden)."""
  m = config.model
  if m.size not in rtmdet.SIZES and m.size != "custom":
    raise ValueError(f"model.size={m.size!r} is not an RTMDet size; known: "
                     f"{sorted(rtmdet.SIZES)} or 'custom'")
  return rtmdet.RTMDetArch(**{k: m[k] for k in ARCH_FIELDS})


def test_settings(config) -> rtmdet.TestSettings:
  """The test pipeline of the saved detector: the training input size, BGR, MMDetection's
  mean/std and pad value, `config.test`'s thresholds."""
  t = config.test
  return rtmdet.TestSettings(input_size=int(config.data.input_size),
                             score_thr=float(t.score_thr), nms_pre=int(t.nms_pre),
                             iou_thr=float(t.iou_thr), max_per_img=int(t.max_per_img))


# ---------------------------------------------------------------------------- the optimizer

def lr_schedule(optim_cfg, total_steps: int):
  """Linear warmup (from warmup_ratio x lr over warmup_steps), flat until half of training,
  then cosine to min_lr_ratio x lr at the end (RTMDet's param_scheduler, iteration-based)."""
  base, warm = float(optim_cfg.lr), int(optim_cfg.warmup_steps)
  ratio, floor = float(optim_cfg.warmup_ratio), float(optim_cfg.min_lr_ratio) * float(optim_cfg.lr)
  half = total_steps // 2
  span = max(total_steps - half, 1)

  def schedule(count):
    i = jnp.asarray(count, jnp.float32)
    cos = floor + (base - floor) * 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip(i - half, 0, span) / span))
    lr = jnp.where(i < half, base, cos)
    if warm > 0:
      lr = jnp.where(i < warm, lr * (ratio + (1 - ratio) * i / warm), lr)
    return lr

  return schedule


class EmaState(NamedTuple):
  count: jax.Array
  ema: Any


def exp_momentum_ema(momentum: float = 0.0002, gamma: float = 2000.0
                     ) -> optax.GradientTransformation:
  """mmengine's ExpMomentumEMA as the last link of an optax chain: leaves the updates alone and
  keeps the average of the parameters they lead to; m_t = (1 - momentum) e^(-(1 + t) / gamma) +
  momentum, ema <- (1 - m_t) ema + m_t params."""

  def init(params):
    return EmaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.copy, params))  # own buffers

  def update(updates, state, params):
    new = optax.apply_updates(params, updates)
    m = (1 - momentum) * jnp.exp(-(1.0 + state.count) / gamma) + momentum
    ema = jax.tree.map(lambda e, p: (1 - m) * e + m * p, state.ema, new)
    return updates, EmaState(state.count + 1, ema)

  return optax.GradientTransformation(init, update)


@functools.lru_cache(maxsize=8)
def _optimizer(items: tuple, total_steps: int):
  # One tx object per recipe: repeated runs in one process reuse the compiled step.
  o = ml_collections.ConfigDict(dict(items))
  schedule = lr_schedule(o, total_steps)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax.chain(optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8,
                               weight_decay=float(o.weight_decay), mask=decay_mask),
                   exp_momentum_ema(float(o.ema_momentum), float(o.ema_gamma)))
  return tx, schedule


def make_optimizer(config, epoch_steps: int):
  items = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                       for k, v in config.optim.items()))
  return _optimizer(items, int(config.epochs) * int(epoch_steps))


def ema_variables(state: ts.TrainState) -> dict:
  """{"params": the EMA parameters, "batch_stats"} of a detection state, on the host."""
  ema = next(s for s in state.opt_state if isinstance(s, EmaState)).ema
  return jax.device_get({"params": ema, "batch_stats": state.batch_stats})


# ------------------------------------------------------------------------------- the step

class DetStepSettings(NamedTuple):
  """Static settings of the detection step (hashable)."""
  input_size: int = 256
  mean: tuple = rtmdet.TestSettings().mean
  std: tuple = rtmdet.TestSettings().std


def priors_of(size: int, width: int | None = None) -> np.ndarray:
  """(N, 4) priors of an S x S input (or `size` rows x `width` columns), levels in the order
  the head's outputs are flattened."""
  h, w = size, size if width is None else width
  return det_assigner.grid_priors([(h // s, w // s) for s in rtmdet.STRIDES], rtmdet.STRIDES)


def normalise(images, mean, std):
  return (images.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(
      std, jnp.float32)


def _flatten(levels):
  return jnp.concatenate([x.reshape(x.shape[0], -1, x.shape[-1]) for x in levels], axis=1)


@functools.partial(jax.jit, static_argnames=("model", "settings"), donate_argnums=0)
def train_step(state: ts.TrainState, batch, *, model, settings: DetStepSettings):
  """One AdamW step of RTMDet on a global batch: image (B, H, W, 3) uint8 BGR (the training
  crop: S x S, or `data.crop_size`; H, W multiples of 32), boxes (B, G, 4) xyxy input pixels,
  box_valid (B, G). Metrics as the loop sums them (loss_sum, count, visible: the GT boxes,
  grad_norm) plus loss_cls, loss_bbox."""
  x = normalise(batch["image"], settings.mean, settings.std)
  gt = batch["boxes"].astype(jnp.float32)
  valid = batch["box_valid"].astype(bool)
  priors = jnp.asarray(priors_of(*batch["image"].shape[1:3]))
  labels = jnp.zeros(valid.shape, jnp.int32)

  def loss_fn(params):
    (cls, reg), upd = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
    logits, dist = _flatten(cls), _flatten(reg)
    boxes = det_assigner.distance2bbox(priors[:, :2], dist)
    assignment = det_assigner.assign_batch(priors, boxes, logits, gt, labels, valid)
    losses = det_losses.rtmdet_loss(logits, boxes, assignment, gt)
    return losses["loss"], (losses, upd["batch_stats"])

  grads, (losses, new_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  metrics = dict(loss_sum=losses["loss"], count=jnp.float32(1.0),
                 visible=jnp.sum(valid).astype(jnp.float32), loss_cls=losses["loss_cls"],
                 loss_bbox=losses["loss_bbox"],
                 grad_norm=jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))))
  return new_state, metrics


# ------------------------------------------------------------------------------- evaluation

@functools.partial(jax.jit, static_argnames=("model", "settings", "k"))
def _candidates(variables, images, *, model, settings: DetStepSettings, k: int):
  cls, reg = model.apply(variables, normalise(images, settings.mean, settings.std))
  scores = jax.nn.sigmoid(_flatten(cls)[..., 0])
  boxes = det_assigner.distance2bbox(jnp.asarray(priors_of(settings.input_size))[:, :2],
                                     _flatten(reg))
  top, idx = jax.lax.top_k(scores, k)
  return jnp.take_along_axis(boxes, idx[..., None], axis=1), top


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float, max_out: int) -> np.ndarray:
  """Greedy NMS (mmcv's rule: suppress IoU > iou_thr), indices in descending score order."""
  order = np.argsort(-scores, kind="stable")
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  keep = []
  while order.size and len(keep) < max_out:
    i = order[0]
    keep.append(i)
    rest = order[1:]
    lt = np.maximum(boxes[i, :2], boxes[rest, :2])
    rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-6)
    order = rest[iou <= iou_thr]
  return np.asarray(keep, np.int64)


def detect(variables, model, settings: rtmdet.TestSettings, images: np.ndarray,
           scales: np.ndarray, image_wh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Letterboxed BGR batch (B, S, S, 3) -> boxes (B, M, 4) image pixels, scores (B, M), count
  (B,): the `nms_pre` best priors above `score_thr`, greedy NMS, `max_per_img` boxes."""
  size = int(settings.input_size)
  k = min(int(settings.nms_pre), len(priors_of(size)))
  boxes, scores = jax.device_get(_candidates(variables, images, model=model,
                                             settings=DetStepSettings(size), k=k))
  m = int(settings.max_per_img)
  out_b, out_s = np.zeros((len(images), m, 4), np.float32), np.zeros((len(images), m), np.float32)
  count = np.zeros(len(images), np.int32)
  for b in range(len(images)):
    ok = scores[b] > float(settings.score_thr)
    w, h = image_wh[b]
    bx = np.clip(boxes[b][ok] / scales[b], 0, np.array([w, h, w, h], np.float32))
    keep = nms(bx, scores[b][ok], float(settings.iou_thr), m)
    count[b] = len(keep)
    out_b[b, :len(keep)], out_s[b, :len(keep)] = bx[keep], scores[b][ok][keep]
  return out_b, out_s, count


def detect_images(variables, model, settings: rtmdet.TestSettings, images_bgr,
                  batch_size: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
  """(boxes (n, 4) xyxy, scores (n,)) per BGR image, batched (the last batch padded)."""
  out = []
  size = int(settings.input_size)
  for start in range(0, len(images_bgr), batch_size):
    chunk = list(images_bgr[start:start + batch_size])
    boxed = [det_pipeline.letterbox(im, size) for im in chunk]
    n = len(chunk)
    pad = batch_size - n
    images = np.stack([b[0] for b in boxed] + [boxed[-1][0]] * pad)
    scales = np.asarray([b[1] for b in boxed] + [boxed[-1][1]] * pad, np.float32)
    wh = np.asarray([(im.shape[1], im.shape[0]) for im in chunk] + [(chunk[-1].shape[1],
                                                                    chunk[-1].shape[0])] * pad)
    boxes, scores, count = detect(variables, model, settings, images, scales, wh)
    out += [(boxes[i, :count[i]], scores[i, :count[i]]) for i in range(n)]
  return out


def evaluate_detector(variables, model, config, records: det_pipeline.DetRecords, evaluator,
                      out_dir: str | None = None) -> dict[str, float]:
  """Every image of `records` through `detect` into `evaluator`; its metrics."""
  size, batch = int(config.data.input_size), int(config.test.batch_size)
  for b in det_pipeline.eval_batches(records, size, batch):
    boxes, scores, count = detect(variables, model, test_settings(config), b["image"],
                                  b["scale"], records.image_wh[b["index"]])
    evaluator.process(dict(image_id=records.image_ids[b["index"]], boxes=boxes, scores=scores,
                           count=count, mask=b["mask"]))
  return evaluator.compute(out_dir)


# ------------------------------------------------------------------------------- the task

class DetectionTask:
  """RTMDet person detection (the module docstring); the loop's task interface."""
  name = "detection"
  train_keys = ("image", "boxes", "box_valid")
  step = staticmethod(train_step)

  def __init__(self):
    self._val: dict[str, det_pipeline.DetRecords] = {}

  def check(self, config) -> None:
    size = int(config.data.input_size)
    if size % 32 or size < 32:
      raise ValueError(f"data.input_size must be a positive multiple of 32 (RTMDet's largest "
                       f"stride), got {size}")
    crop = det_pipeline.crop_wh(config.data)
    if any(v % 32 or v < 32 for v in crop):
      raise ValueError(f"data.crop_size (width, height) must be positive multiples of 32 "
                       f"(RTMDet's largest stride), got {crop}")
    if int(config.data.max_boxes) < 1:
      raise ValueError(f"data.max_boxes must be positive, got {config.data.max_boxes}")
    build_arch(config)

  def prepare_data(self, config) -> det_pipeline.DetRecords:
    s = config.synthetic
    if s.enabled:
      synthetic_video.ensure(config.data.root, "stills",
                             num_images={"train": int(s.num_train), "val": int(s.num_val)},
                             seed=int(s.seed), frame_size=tuple(s.frame_size),
                             max_people=int(s.max_people))
    return det_pipeline.read_split(config.data, "train")

  def build_model(self, config):
    return rtmdet.build(build_arch(config), config.model.dtype)

  def input_hw(self, config) -> tuple[int, int]:
    size = int(config.data.input_size)
    return size, size

  def make_optimizer(self, config, epoch_steps: int):
    return make_optimizer(config, epoch_steps)

  def step_settings(self, config, bn_group: int) -> DetStepSettings:
    if bn_group:
      raise ValueError("the detection task computes BatchNorm statistics over the global batch: "
                       "set --config.bn_group_size=0")
    return DetStepSettings(int(config.data.input_size))

  def train_iterator(self, records, config, start_step: int = 0):
    return iter(det_pipeline.train_dataset(
        records, config, batch_size=int(config.global_batch_size) // jax.process_count(),
        seed=int(config.seed), process_index=jax.process_index(),
        process_count=jax.process_count(), start_batch=start_step))

  def initial_variables(self, config, model, seed: int) -> dict | None:
    """None (a random init, made by the loop), or `init_checkpoint`'s variables: a saved
    detector directory or an MMDetection RTMDet .pth (converted in memory; person class)."""
    path = str(config.init_checkpoint)
    if not path:
      return None
    if os.path.isdir(path):
      variables, meta = rtmdet_conversion.load_detector(path)
    elif os.path.isfile(path):
      variables, meta = rtmdet_conversion.load_pth(path, verify_hash=False)
    else:
      raise FileNotFoundError(f"init_checkpoint {path} does not exist")
    want = build_arch(config)
    diff = [f"{k}: checkpoint {getattr(meta.arch, k)!r}, config {getattr(want, k)!r}"
            for k in ARCH_FIELDS if k != "size" and getattr(meta.arch, k) != getattr(want, k)]
    if diff:
      raise ValueError(f"init_checkpoint {path} is an RTMDet-{meta.arch.size} that config "
                       f"{config.name} does not build ({'; '.join(diff)}); set "
                       f"--config.model.size={meta.arch.size} and its factors, or use "
                       "another checkpoint")
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

  def _records(self, config, name: str) -> det_pipeline.DetRecords:
    if name not in self._val:
      self._val[name] = det_pipeline.read_split(config.data, "val")
    return self._val[name]

  def evaluate(self, run, state, step: int, names) -> dict[str, dict[str, float]]:
    variables = ema_variables(state)
    out = {}
    for name in names:
      ev = run.config.evals[name]
      records = self._records(run.config, name)
      evaluator = evaluators.EVALUATORS[ev.type](records, run.config)
      out_dir = (pathlib.Path(run.workdir) / "eval" / f"{name}_{step:07d}"
                 if jax.process_index() == 0 else None)
      metrics = evaluate_detector(variables, run.model, run.config, records, evaluator,
                                  str(out_dir) if out_dir else None)
      out[name] = {k: float(v) for k, v in metrics.items()}
      run.logger.eval_line(step, name, out[name])
    return out

  def saved_model(self, config, state, step: int):
    """(EMA variables, DetectorMeta) of the detector at `step`."""
    variables = ema_variables(state)
    meta = rtmdet_conversion.DetectorMeta(
        arch=build_arch(config), settings=test_settings(config), num_file_classes=1,
        classes_kept=(0,), source=f"sbpose_jax.train {config.name} step {step}", step=int(step))
    return jax.tree.map(np.asarray, variables), meta
