"""PoseResNet (Simple Baselines): ResNet backbone + transposed-conv head -> K heatmaps at 1/4.

Submodule names follow the PyTorch keys of the original code: backbone `conv1`, `bn1`,
`layer{s}_{b}`; head `deconv_layers_{3i}` (ConvTranspose, or its sub-pixel form `Deconv`),
`deconv_layers_{3i+1}` (BatchNorm; index 3i+2 is the ReLU), `final_layer`.
"""
from __future__ import annotations

import itertools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbpose_jax.models import resnet

# torch ConvTranspose2d (padding, output_padding) per kernel size, as in the reference head.
DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}
HEAD_INIT = nn.initializers.normal(0.001)  # deconv and final conv weights N(0, 0.001^2)
DECONV_IMPLS = ("transpose", "subpixel", "dilated")


def torch_deconv_padding(kernel: int) -> tuple[int, int]:
  """torch ConvTranspose2d (padding, output_padding) of the reference head for kernel k."""
  if kernel not in DECONV_PADDING:
    raise ValueError(f"deconv kernel {kernel} not supported; choose from {sorted(DECONV_PADDING)}")
  return DECONV_PADDING[kernel]


def deconv_padding(kernel: int) -> tuple[int, int]:
  """Flax explicit padding (lo, hi) equal to torch's ConvTranspose2d(k, s=2, p, op).

  With transpose_kernel=True Flax dilates the input and convolves with the flipped kernel, so
  torch's (p, op) becomes (k - 1 - p, k - 1 - p + op). 'SAME' agrees for k = 2, 4 only.
  """
  p, op = torch_deconv_padding(kernel)
  return (kernel - 1 - p, kernel - 1 - p + op)


def subpixel_taps(kernel: int) -> list[tuple[int, int, int]]:
  """(phase a, tap t, offset d) with out[2m + a] += x[m + d] * w[t], per spatial axis.

  For torch's ConvTranspose2d(k, stride 2, padding p): out[o] = sum over o = 2i - p + t of
  x[i] w[t], so output phase a = o % 2 reads input m + (a + p - t) / 2 when a + p - t is even.
  """
  p, _ = torch_deconv_padding(kernel)
  return [(a, t, (a + p - t) // 2) for a in (0, 1) for t in range(kernel) if (a + p - t) % 2 == 0]


class Deconv(nn.Module):
  """A stride-2 transposed conv computed as one ordinary conv + depth-to-space (sub-pixel).

  The same function and the same parameter (`kernel`, (k, k, out, in), as nn.ConvTranspose
  with transpose_kernel=True, i.e. torch's weight transposed (2, 3, 1, 0)). The 2x2 output
  phases of a stride-2 transposed conv each read a few neighbours of the undilated input, so one
  conv with 4*out channels on the input computes all of them: no multiplications with inserted
  zeros, and XLA:CPU's fast conv path (3.7x faster forward+backward than conv_transpose there).
  It does 2.25x the multiply-adds of a transposed conv (4 of the 9 taps per phase are zero), so
  accelerators, whose transposed convs are efficient, keep the default "transpose".
  """
  features: int
  kernel_size: int = 4
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    k, out, inp = self.kernel_size, self.features, x.shape[-1]
    taps = subpixel_taps(k)
    kernel = self.param("kernel", HEAD_INIT, (k, k, out, inp), jnp.float32)
    kernel = kernel.astype(self.dtype)
    lo = -min(d for *_, d in taps)
    n = max(d for *_, d in taps) + lo + 1
    # Weights moving x[m + d] to output phase (ay, ax), per (dy, dx, ay, ax); zero if none.
    source = {(dy + lo, dx + lo, ay, ax): (ty, tx) for ay, ty, dy in taps for ax, tx, dx in taps}
    zero = jnp.zeros((inp, out), self.dtype)
    sub = jnp.stack([kernel[source[key]].T if key in source else zero
                     for key in itertools.product(range(n), range(n), (0, 1), (0, 1))])
    sub = sub.reshape(n, n, 2, 2, inp, out).transpose(0, 1, 4, 2, 3, 5).reshape(
        n, n, inp, 4 * out)
    pad = (lo, n - 1 - lo)
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), sub, (1, 1), (pad, pad),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=self.precision)
    b, h, w, _ = y.shape
    return y.reshape(b, h, w, 2, 2, out).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, out)


class DilatedDeconv(nn.Module):
  """A stride-2 transposed conv written as `lax.conv_general_dilated` with lhs dilation 2.

  The same function and parameter (`kernel`, (k, k, out, in)) as nn.ConvTranspose with
  transpose_kernel=True, which flips the kernel spatially and dilates the input. ONNX
  converters that refuse `ConvTranspose(transpose_kernel=True)` (jax2onnx 0.17) export this
  form exactly (docs/ecosystem.md §7); `export_form` uses it.
  """
  features: int
  kernel_size: int = 4
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", HEAD_INIT, (k, k, self.features, x.shape[-1]), jnp.float32)
    rhs = jnp.swapaxes(kernel[::-1, ::-1], 2, 3).astype(self.dtype)      # HWIO
    pad = deconv_padding(k)
    return jax.lax.conv_general_dilated(x.astype(self.dtype), rhs, (1, 1), (pad, pad),
                                        lhs_dilation=(2, 2),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=self.precision)


class PoseResNet(nn.Module):
  """Simple Baselines pose network.

  Attributes:
    depth: ResNet depth, 18/34/50/101/152.
    num_joints: K, output channels.
    style: "pytorch" (stride on the 3x3 conv) or "caffe" (stride on the first 1x1 conv).
    width: backbone base width (64 for every published model; see resnet.resnet_features).
    num_deconv_layers, deconv_filters, deconv_kernels: the head's transposed convs (stride 2).
    deconv_impl: how they are computed, the same function either way: "transpose"
      (nn.ConvTranspose), "subpixel" (`Deconv`, faster to train on CPUs) or "dilated"
      (`DilatedDeconv`, for ONNX export).
    pool_impl: the stem's max pool, "window" or "pad" (the same function; "pad" for ONNX).
    final_conv_kernel: 1 or 3.
    dtype: compute dtype (params stay float32).
    precision: passed to every conv (e.g. "highest" to rule out TF32 on GPUs).
  """
  depth: int = 50
  num_joints: int = 17
  style: str = "pytorch"
  width: int = 64
  num_deconv_layers: int = 3
  deconv_filters: Sequence[int] = (256, 256, 256)
  deconv_kernels: Sequence[int] = (4, 4, 4)
  final_conv_kernel: int = 1
  deconv_impl: str = "transpose"
  pool_impl: str = "window"
  dtype: Any = jnp.float32
  precision: Any = None

  def _check(self):
    if len(self.deconv_filters) != self.num_deconv_layers or len(
        self.deconv_kernels) != self.num_deconv_layers:
      raise ValueError(
          f"num_deconv_layers={self.num_deconv_layers} but deconv_filters={self.deconv_filters} "
          f"and deconv_kernels={self.deconv_kernels}: lengths must match")
    if self.deconv_impl not in DECONV_IMPLS:
      raise ValueError(f"deconv_impl must be one of {DECONV_IMPLS}, got {self.deconv_impl!r}")
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
                               conv=conv, norm=norm, width=self.width,
                               pool_impl=self.pool_impl)
    for i, (f, k) in enumerate(zip(self.deconv_filters, self.deconv_kernels)):
      name = f"deconv_layers_{3 * i}"
      if self.deconv_impl == "subpixel":
        x = Deconv(f, k, dtype=self.dtype, precision=self.precision, name=name)(x)
      elif self.deconv_impl == "dilated":
        x = DilatedDeconv(f, k, dtype=self.dtype, precision=self.precision, name=name)(x)
      else:
        pad = deconv_padding(k)
        x = nn.ConvTranspose(f, (k, k), (2, 2), padding=(pad, pad), transpose_kernel=True,
                             use_bias=False, kernel_init=HEAD_INIT, dtype=self.dtype,
                             param_dtype=jnp.float32, precision=self.precision, name=name)(x)
      x = nn.relu(norm(name=f"deconv_layers_{3 * i + 1}")(x))
    p = self.final_conv_kernel // 2
    x = nn.Conv(self.num_joints, (self.final_conv_kernel,) * 2, padding=((p, p), (p, p)),
                kernel_init=HEAD_INIT, bias_init=nn.initializers.zeros, dtype=self.dtype,
                param_dtype=jnp.float32, precision=self.precision, name="final_layer")(x)
    return x.astype(jnp.float32)


def export_form(model: PoseResNet) -> PoseResNet:
  """The same network (same variables, same function) in the form ONNX converters export
  exactly: pad + VALID max pool, deconvolutions as lax dilated convolutions."""
  return model.clone(deconv_impl="dilated", pool_impl="pad")


HEAD_PREFIXES = ("deconv_layers_", "final_layer")


def is_head_key(name: str) -> bool:
  """True for the top-level variable names of the head; everything else is the backbone."""
  return name.startswith(HEAD_PREFIXES)
