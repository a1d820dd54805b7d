"""PoseResNet (Simple Baselines): ResNet backbone + transposed-conv head -> K heatmaps at 1/4.

Submodule names follow the PyTorch keys of the original code: backbone `conv1`, `bn1`,
`layer{s}_{b}`; head `deconv_layers_{3i}` (ConvTranspose), `deconv_layers_{3i+1}` (BatchNorm;
index 3i+2 is the ReLU), `final_layer`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sbpose_jax.models import resnet

# torch ConvTranspose2d (padding, output_padding) per kernel size, as in the reference head.
DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}
HEAD_INIT = nn.initializers.normal(0.001)  # deconv and final conv weights N(0, 0.001^2)


def deconv_padding(kernel: int) -> tuple[int, int]:
  """Flax explicit padding (lo, hi) equal to torch's ConvTranspose2d(k, s=2, p, op).

  With transpose_kernel=True Flax dilates the input and convolves with the flipped kernel, so
  torch's (p, op) becomes (k - 1 - p, k - 1 - p + op). 'SAME' agrees for k = 2, 4 only.
  """
  if kernel not in DECONV_PADDING:
    raise ValueError(f"deconv kernel {kernel} not supported; choose from {sorted(DECONV_PADDING)}")
  p, op = DECONV_PADDING[kernel]
  return (kernel - 1 - p, kernel - 1 - p + op)


class PoseResNet(nn.Module):
  """Simple Baselines pose network.

  Attributes:
    depth: ResNet depth, 18/34/50/101/152.
    num_joints: K, output channels.
    style: "pytorch" (stride on the 3x3 conv) or "caffe" (stride on the first 1x1 conv).
    num_deconv_layers, deconv_filters, deconv_kernels: the head's transposed convs (stride 2).
    final_conv_kernel: 1 or 3.
    dtype: compute dtype (params stay float32).
    precision: passed to every conv (e.g. "highest" to rule out TF32 on GPUs).
  """
  depth: int = 50
  num_joints: int = 17
  style: str = "pytorch"
  num_deconv_layers: int = 3
  deconv_filters: Sequence[int] = (256, 256, 256)
  deconv_kernels: Sequence[int] = (4, 4, 4)
  final_conv_kernel: int = 1
  dtype: Any = jnp.float32
  precision: Any = None

  def _check(self):
    if len(self.deconv_filters) != self.num_deconv_layers or len(
        self.deconv_kernels) != self.num_deconv_layers:
      raise ValueError(
          f"num_deconv_layers={self.num_deconv_layers} but deconv_filters={self.deconv_filters} "
          f"and deconv_kernels={self.deconv_kernels}: lengths must match")
    if self.final_conv_kernel not in (1, 3):
      raise ValueError(f"final_conv_kernel must be 1 or 3, got {self.final_conv_kernel}")

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: (B, H, W, 3) normalised image -> heatmaps (B, H/4, W/4, K) float32.

    (Exactly H/4 when H is a multiple of 32 and the head has 3 stride-2 layers.)
    """
    self._check()
    conv, norm = resnet.layers(self.dtype, self.precision, train)
    x = resnet.resnet_features(x.astype(self.dtype), depth=self.depth, style=self.style,
                               conv=conv, norm=norm)
    for i, (f, k) in enumerate(zip(self.deconv_filters, self.deconv_kernels)):
      pad = deconv_padding(k)
      x = nn.ConvTranspose(f, (k, k), (2, 2), padding=(pad, pad), transpose_kernel=True,
                           use_bias=False, kernel_init=HEAD_INIT, dtype=self.dtype,
                           param_dtype=jnp.float32, precision=self.precision,
                           name=f"deconv_layers_{3 * i}")(x)
      x = nn.relu(norm(name=f"deconv_layers_{3 * i + 1}")(x))
    p = self.final_conv_kernel // 2
    x = nn.Conv(self.num_joints, (self.final_conv_kernel,) * 2, padding=((p, p), (p, p)),
                kernel_init=HEAD_INIT, bias_init=nn.initializers.zeros, dtype=self.dtype,
                param_dtype=jnp.float32, precision=self.precision, name="final_layer")(x)
    return x.astype(jnp.float32)


HEAD_PREFIXES = ("deconv_layers_", "final_layer")


def is_head_key(name: str) -> bool:
  """True for the top-level variable names of the head; everything else is the backbone."""
  return name.startswith(HEAD_PREFIXES)
