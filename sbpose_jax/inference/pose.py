"""Test-time inference: normalisation, jitted forward, flip test, on-device decoding.

Numerics follow docs/reference.md §5 (MMPose 0.x `TopDown.forward_test` +
`keypoints_from_heatmaps`):

* the uint8 crop is normalised on the device with the ImageNet mean/std, applied channel by
  index in the channel order the checkpoint was trained with (MSRA weights: BGR, MMPose: RGB);
* flip test: the *normalised* crop is mirrored, its heatmaps are flipped back (flip-pair channel
  swap + W mirror), shifted one heatmap pixel to the right and averaged with the plain ones;
* 'default' decoding (argmax + quarter offset) runs on the device, 'unbiased' (DARK) on the host;
* heatmap coordinates are mapped to the image with the centre/scale formula of §2.4.

`make_predict_fn` builds the function that `evaluators.loop.run_evaluation` calls on every batch
of the evaluation pipeline.
"""
from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sbpose_jax import geometry
from sbpose_jax import heatmaps as heatmaps_lib
from sbpose_jax import keypoints

PredictFn = Callable[[Mapping[str, np.ndarray]], Any]


def normalize(images: jax.Array, data_order: str = "rgb", model_order: str = "rgb") -> jax.Array:
  """uint8 crops in `data_order` → float32 network input in `model_order`.

  Args:
    images: (B, H, W, 3) uint8 (or float in 0..255).
    data_order: channel order of `images`, "rgb" or "bgr".
    model_order: channel order the weights expect, "rgb" or "bgr".
  Returns:
    (B, H, W, 3) float32, `(x / 255 - mean) / std` per channel index.
  """
  for order in (data_order, model_order):
    if order not in ("rgb", "bgr"):
      raise ValueError(f"colour order must be 'rgb' or 'bgr', got {order!r}")
  x = images.astype(jnp.float32)
  if data_order != model_order:
    x = x[..., ::-1]
  # MSRA checkpoints were trained on BGR data normalised with these RGB-ordered constants
  # applied channel by index, so they are never permuted (docs/checkpoints.md §4).
  mean = jnp.asarray(geometry.IMAGENET_MEAN_RGB, jnp.float32)
  std = jnp.asarray(geometry.IMAGENET_STD_RGB, jnp.float32)
  return (x / 255.0 - mean) / std


def flip_test_heatmaps(apply_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                       flip_index: np.ndarray, shift: bool = True) -> jax.Array:
  """Averages the heatmaps of `x` and of its mirror image (docs/reference.md §5.1).

  Both halves go through the network as one batch of 2B, which keeps the accelerator busier
  than two calls of B.

  Args:
    apply_fn: normalised (N, H, W, 3) → heatmaps (N, Hh, Wh, K).
    x: (B, H, W, 3) normalised crops.
    flip_index: (K,) channel permutation of the flip pairs.
    shift: apply the one-pixel right shift to the flipped-back maps.
  Returns:
    (B, Hh, Wh, K) float32.
  """
  both = apply_fn(jnp.concatenate([x, x[:, :, ::-1, :]], axis=0)).astype(jnp.float32)
  # A reshape rather than both[:b], both[b:]: it converts to ONNX with a symbolic batch.
  both = both.reshape((2, x.shape[0]) + both.shape[1:])
  h1, h2 = both[0], heatmaps_lib.flip_back_jnp(both[1], flip_index, shift)
  return (h1 + h2) * 0.5


class InferenceSettings(collections.namedtuple(
    "InferenceSettings", "flip shift decode blur_kernel flip_index heatmap_wh data_order "
    "model_order")):
  """Static test-time settings, read once from the config and the checkpoint meta."""


def settings_from_config(config, meta=None, num_joints: int | None = None) -> InferenceSettings:
  """Reads config.test / config.data (and the checkpoint's colour order) into settings."""
  info = keypoints.get(config.data.dataset)
  if num_joints is not None and num_joints != info.num_joints:
    raise ValueError(f"the model predicts {num_joints} joints but dataset "
                     f"{config.data.dataset!r} has {info.num_joints}")
  flip_index = info.flip_index
  decode = config.test.decode
  if decode not in ("default", "unbiased"):
    raise ValueError(f"config.test.decode must be 'default' or 'unbiased', got {decode!r}")
  model_order = getattr(meta, "colour_order", None) or config.data.colour_order
  return InferenceSettings(
      flip=bool(config.test.flip), shift=bool(config.test.shift_heatmap), decode=decode,
      blur_kernel=int(config.test.blur_kernel), flip_index=tuple(int(i) for i in flip_index),
      heatmap_wh=tuple(int(v) for v in config.data.heatmap_size),
      data_order=config.data.colour_order, model_order=model_order)


def predict_heatmaps(apply_fn, images, s: InferenceSettings) -> jax.Array:
  """uint8 crops (B, H, W, 3) → flip-averaged (or plain) heatmaps (B, Hh, Wh, K) float32."""
  x = normalize(images, s.data_order, s.model_order)
  if s.flip:
    return flip_test_heatmaps(apply_fn, x, np.asarray(s.flip_index), s.shift)
  return apply_fn(x).astype(jnp.float32)


def predict_keypoints(apply_fn, images, center, scale, s: InferenceSettings) -> jax.Array:
  """Full on-device path for 'default' decoding: (B, K, 3) image x, y and maxval."""
  hm = predict_heatmaps(apply_fn, images, s)
  coords, maxvals = heatmaps_lib.decode_default_jnp(hm)
  xy = heatmaps_lib.transform_preds_jnp(coords, center, scale, s.heatmap_wh)
  return jnp.concatenate([xy, maxvals[..., None].astype(jnp.float32)], axis=-1)


def decode_on_host(hm: np.ndarray, center: np.ndarray, scale: np.ndarray,
                   s: InferenceSettings) -> np.ndarray:
  """'unbiased' (DARK) decoding with numpy/cv2: (B, Hh, Wh, K) → (B, K, 3)."""
  coords, maxvals = heatmaps_lib.decode_unbiased(np.asarray(hm, np.float32), s.blur_kernel)
  xy = geometry.transform_preds(coords, np.asarray(center, np.float32),
                                np.asarray(scale, np.float32), s.heatmap_wh)
  return np.concatenate([xy, np.asarray(maxvals, np.float32).reshape(xy.shape[:2] + (1,))],
                        axis=-1).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def _predict_device(variables, images, center, scale, *, model, settings: InferenceSettings):
  """Jitted per batch; module-level so that repeated evaluations (training) reuse the compile."""
  apply_fn = functools.partial(_apply, model, variables)
  if settings.decode == "default":
    return predict_keypoints(apply_fn, images, center, scale, settings)
  return predict_heatmaps(apply_fn, images, settings)


def _apply(model, variables, x):
  return model.apply(variables, x, train=False)


def make_predict_fn(model, variables, config, meta=None) -> PredictFn:
  """Returns `predict(batch) -> keypoints (B, K, 3)` (image x, y, maxval) for eval batches.

  For 'default' decoding the result is a device array returned without waiting for it (call
  `np.asarray` when it is needed), so the host can prepare the next batch meanwhile. With more
  than one local device the batch is split over a ("data",) mesh when its size allows and the
  variables are replicated.

  Args:
    model: a flax module, `model.apply(variables, x, train=False)` → (B, Hh, Wh, K).
    variables: {"params", "batch_stats"}.
    config: the evaluation's config (config.test.*, config.data.{dataset, heatmap_size,
      colour_order}).
    meta: the checkpoint's ModelMeta; its colour_order (the order the weights expect) wins
      over config.data.colour_order (the order the pipeline delivers).
  """
  settings = settings_from_config(config, meta, getattr(model, "num_joints", None))
  return make_predict_fn_from_settings(model, variables, settings)


def make_predict_fn_from_settings(model, variables, settings: InferenceSettings) -> PredictFn:
  """`make_predict_fn` with the settings given directly (the Python API builds them itself)."""
  devices = jax.local_devices()
  batch_sharding = None
  if len(devices) > 1:
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    variables = jax.device_put(variables, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
  else:
    variables = jax.device_put(variables, devices[0])

  def predict(batch):
    images = batch["image"]
    center = np.asarray(batch["center"], np.float32)
    scale = np.asarray(batch["scale"], np.float32)
    if batch_sharding is not None and images.shape[0] % len(devices) == 0:
      images, center, scale = jax.device_put((images, center, scale), batch_sharding)
    out = _predict_device(variables, images, center, scale, model=model, settings=settings)
    if settings.decode == "default":
      return out
    return decode_on_host(np.asarray(out), batch["center"], batch["scale"], settings)

  predict.settings = settings
  return predict
