"""Models: `build(config.model, num_joints)` -> a PoseResNet; `RTMDet` (models/rtmdet.py), the
person detector, with its size table `RTMDET_SIZES`."""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from sbpose_jax.models.pose_resnet import PoseResNet, export_form, is_head_key
from sbpose_jax.models.resnet import DEPTHS, ResNet
from sbpose_jax.models.rtmdet import SIZES as RTMDET_SIZES
from sbpose_jax.models.rtmdet import RTMDet, RTMDetArch

__all__ = ["PoseResNet", "ResNet", "DEPTHS", "build", "export_form", "is_head_key", "RTMDet",
           "RTMDetArch", "RTMDET_SIZES"]


def build(model_config: Mapping[str, Any], num_joints: int, *, precision: Any = None,
          **overrides) -> PoseResNet:
  """Makes a PoseResNet from a `config.model` section (every field given; see configs/common.py).

  Args:
    model_config: ConfigDict or dict with depth, style, width, num_deconv_layers, deconv_filters,
      deconv_kernels, final_conv_kernel, deconv_impl and dtype (a string such as "bfloat16").
    num_joints: K, the dataset's joint count.
    precision: passed to every conv (e.g. "highest" to rule out TF32 on GPUs).
    **overrides: fields replacing the config's (e.g. dtype="float32" for parity checks).
  """
  cfg = {**model_config, **overrides}
  try:
    dtype = jnp.dtype(cfg["dtype"])
  except TypeError:
    raise ValueError(f"model.dtype: unknown dtype {cfg['dtype']!r}") from None
  return PoseResNet(
      depth=int(cfg["depth"]),
      num_joints=int(num_joints),
      style=str(cfg["style"]),
      width=int(cfg["width"]),
      num_deconv_layers=int(cfg["num_deconv_layers"]),
      deconv_filters=tuple(int(f) for f in cfg["deconv_filters"]),
      deconv_kernels=tuple(int(k) for k in cfg["deconv_kernels"]),
      final_conv_kernel=int(cfg["final_conv_kernel"]),
      deconv_impl=str(cfg["deconv_impl"]),
      dtype=dtype,
      precision=precision,
  )
