"""Models: `build(config.model, num_joints)` -> a PoseResNet."""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from sbpose_jax.models.pose_resnet import PoseResNet, is_head_key
from sbpose_jax.models.resnet import DEPTHS, ResNet

__all__ = ["PoseResNet", "ResNet", "DEPTHS", "build", "is_head_key"]


def build(model_config: Mapping[str, Any], num_joints: int, **overrides) -> PoseResNet:
  """Makes a PoseResNet from the `config.model` section (see configs/common.py).

  Args:
    model_config: ConfigDict or dict with depth, style, width, num_deconv_layers, deconv_filters,
      deconv_kernels, final_conv_kernel and dtype (a string such as "bfloat16"; optional).
    num_joints: K, the dataset's joint count.
    **overrides: fields replacing the config's (e.g. dtype="float32" for parity checks).
  """
  cfg = dict(model_config)
  cfg.update(overrides)
  dtype = cfg.get("dtype", "float32")
  try:
    dtype = jnp.dtype(dtype)
  except TypeError:
    raise ValueError(f"model.dtype: unknown dtype {dtype!r}") from None
  return PoseResNet(
      depth=int(cfg.get("depth", 50)),
      num_joints=int(num_joints),
      style=str(cfg.get("style", "pytorch")),
      width=int(cfg.get("width", 64)),
      num_deconv_layers=int(cfg.get("num_deconv_layers", 3)),
      deconv_filters=tuple(int(f) for f in cfg.get("deconv_filters", (256, 256, 256))),
      deconv_kernels=tuple(int(k) for k in cfg.get("deconv_kernels", (4, 4, 4))),
      final_conv_kernel=int(cfg.get("final_conv_kernel", 1)),
      deconv_impl=str(cfg.get("deconv_impl", "transpose")),
      dtype=dtype,
      precision=cfg.get("precision"),
  )
