"""ResNet-18/34/50/101/152 backbone in Flax linen, numerically identical to torchvision / MMPose.

Submodules carry the PyTorch state_dict names with `.` before an index turned into `_`
(`layer1.0.downsample.1` -> `layer1_0/downsample_1`), so the converter is a name table.
Every padding is an explicit pair: Flax's 'SAME' pads a stride-2 conv asymmetrically ((0, 1)
instead of torch's (1, 1)), which silently changes the function.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

# depth -> (block type, blocks per stage). Block type "basic" has two 3x3 convs (expansion 1),
# "bottleneck" 1x1-3x3-1x1 (expansion 4).
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STYLES = ("pytorch", "caffe")
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}

# torchvision's ResNet init: kaiming normal, fan_out, gain for ReLU.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def out_channels(depth: int, width: int = 64) -> int:
  """Channels of the last stage (C5): 512 for ResNet-18/34, 2048 for ResNet-50/101/152."""
  block, _ = DEPTHS[depth]
  return STAGE_WIDTHS[-1] * width // 64 * EXPANSION[block]


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  p = k // 2
  return ((p, p), (p, p))


class BasicBlock(nn.Module):
  """3x3 -> 3x3 residual block (ResNet-18/34). `style` does not apply: the stride is on conv1."""
  planes: int
  stride: int = 1
  downsample: bool = False
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, x):
    s = (self.stride, self.stride)
    y = self.conv(self.planes, (3, 3), s, padding=_pad(3), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.planes, (3, 3), padding=_pad(3), name="conv2")(y)
    y = self.norm(name="bn2")(y)
    if self.downsample:
      x = self.conv(self.planes, (1, 1), s, padding=_pad(1), name="downsample_0")(x)
      x = self.norm(name="downsample_1")(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 residual block (ResNet-50/101/152), expansion 4.

  style "pytorch" (torchvision, "v1.5") puts the stride on the 3x3 conv2, "caffe" on the 1x1
  conv1. The two have identical parameter shapes, so a file cannot tell which one it is.
  """
  planes: int
  stride: int = 1
  downsample: bool = False
  style: str = "pytorch"
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, x):
    s1, s2 = (self.stride, 1) if self.style == "caffe" else (1, self.stride)
    y = self.conv(self.planes, (1, 1), (s1, s1), padding=_pad(1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.planes, (3, 3), (s2, s2), padding=_pad(3), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.planes * 4, (1, 1), padding=_pad(1), name="conv3")(y)
    y = self.norm(name="bn3")(y)
    if self.downsample:
      s = (self.stride, self.stride)
      x = self.conv(self.planes * 4, (1, 1), s, padding=_pad(1), name="downsample_0")(x)
      x = self.norm(name="downsample_1")(x)
    return nn.relu(x + y)


def layers(dtype: Any, precision: Any, train: bool):
  """(conv, norm) partials shared by the backbone and the head: float32 params, given dtype."""
  conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                           precision=precision, kernel_init=conv_init)
  # Flax momentum is 1 - torch momentum (0.1); eps as torch.
  norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32)
  return conv, norm


POOL_IMPLS = ("window", "pad")


def max_pool_3x3_s2(x, impl: str = "window"):
  """The stem's 3x3 stride-2 max pool with torch's padding 1 (padded cells never win).

  "window" is `nn.max_pool` with explicit padding; "pad" pads with -inf and pools VALID: the
  same function, written so that ONNX converters keep the padding (jax2onnx 0.17 silently drops
  `nn.max_pool`'s explicit padding; docs/ecosystem.md §7).
  """
  if impl == "window":
    return nn.max_pool(x, (3, 3), (2, 2), padding=_pad(3))
  if impl != "pad":
    raise ValueError(f"max-pool impl must be one of {POOL_IMPLS}, got {impl!r}")
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="VALID")


def resnet_features(x, *, depth: int, style: str, conv, norm, width: int = 64,
                    pool_impl: str = "window"):
  """Stem + four stages, creating submodules in the calling module's `@nn.compact` scope.

  A function rather than a submodule, so the parameters sit at the top level of the caller
  (`conv1`, `layer1_0`, ...) exactly as in the PyTorch state_dict.

  Args:
    x: (B, H, W, 3) normalised image.
    width: channels of the stem and the first stage (64 in every published ResNet); stage s
      has width * 2**(s-1) planes. Smaller values make thin ResNets for CPU demos and tests.
    pool_impl: how the stem's max pool is written (`max_pool_3x3_s2`); the same function.
  Returns:
    (B, ceil(H/32), ceil(W/32), out_channels(depth)) C5 features.
  """
  if depth not in DEPTHS:
    raise ValueError(f"unsupported ResNet depth {depth}; choose from {sorted(DEPTHS)}")
  if style not in STYLES:
    raise ValueError(f"unknown ResNet style {style!r}; choose from {STYLES}")
  block_type, counts = DEPTHS[depth]
  if width < 1:
    raise ValueError(f"ResNet width must be positive, got {width}")
  x = conv(width, (7, 7), (2, 2), padding=_pad(7), name="conv1")(x)
  x = nn.relu(norm(name="bn1")(x))
  x = max_pool_3x3_s2(x, pool_impl)
  in_ch = width
  for stage, (planes, n) in enumerate(zip(STAGE_WIDTHS, counts), start=1):
    planes = planes * width // 64
    out_ch = planes * EXPANSION[block_type]
    for b in range(n):
      stride = 2 if (b == 0 and stage > 1) else 1
      down = b == 0 and (stride != 1 or in_ch != out_ch)
      name = f"layer{stage}_{b}"
      if block_type == "basic":
        blk = BasicBlock(planes, stride, down, conv=conv, norm=norm, name=name)
      else:
        blk = Bottleneck(planes, stride, down, style=style, conv=conv, norm=norm, name=name)
      x = blk(x)
      in_ch = out_ch
  return x


class ResNet(nn.Module):
  """The backbone alone (no avgpool/fc): (B, H, W, 3) -> C5 features (B, H/32, W/32, C)."""
  depth: int = 50
  style: str = "pytorch"
  width: int = 64
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv, norm = layers(self.dtype, self.precision, train)
    x = resnet_features(x.astype(self.dtype), depth=self.depth, style=self.style,
                        conv=conv, norm=norm, width=self.width)
    return x.astype(jnp.float32)
