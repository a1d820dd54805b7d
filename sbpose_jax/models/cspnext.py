"""CSPNeXt backbone and CSPNeXt-PAFPN neck (RTMDet, arXiv 2212.07784) in Flax linen.

Written from MMDetection 3.x: `mmdet/models/backbones/cspnext.py`, `mmdet/models/layers/
csp_layer.py` (CSPLayer, CSPNeXtBlock), `mmdet/models/layers/se_layer.py` (ChannelAttention),
`mmdet/models/backbones/csp_darknet.py` (SPPBottleneck), `mmdet/models/necks/cspnext_pafpn.py`,
and mmcv's ConvModule / DepthwiseSeparableConvModule.

Submodules carry the MMDetection state-dict paths with `.` before an index turned into `_`
(`backbone.stage1.1.blocks.0.conv2.depthwise_conv.bn` -> `stage1_1/blocks_0/conv2/
depthwise_conv/bn`), so the converter is a name table. NHWC; every padding is an explicit pair
(torch's symmetric padding, not Flax's 'SAME'). `conv` and `norm` are partials made once by the
caller (`layers`): float32 parameters, the compute `dtype`, BatchNorm eps 1e-5 (the configs'
SyncBN; the modules' own default, 1e-3, is not what the published models were trained with).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

# torch's default conv init (kaiming uniform, a=sqrt(5)), which MMDetection's CSPNeXt keeps.
conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# CSPNeXt arch P5: (in, out, blocks, add_identity, use_spp) per stage, before widen/deepen.
ARCH_P5 = ((64, 128, 3, True, False), (128, 256, 6, True, False),
           (256, 512, 6, True, False), (512, 1024, 3, False, True))
SPP_KERNELS = (5, 9, 13)
EXPAND_RATIO = 0.5


def layers(dtype: Any, precision: Any, train: bool) -> tuple[Callable, Callable]:
  """(conv, norm) partials: float32 params, compute `dtype`, torch BatchNorm semantics."""
  conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                           precision=precision, kernel_init=conv_init)
  # Flax momentum = 1 - torch momentum (SyncBN's default 0.1); eps as the configs' SyncBN.
  norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32)
  return conv, norm


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((k // 2, k // 2), (k // 2, k // 2))


def stage_channels(widen: float) -> tuple[int, ...]:
  """Output channels of the stem and the four stages: int(c * widen) as MMDetection."""
  stem = int(ARCH_P5[0][0] * widen)
  return (stem,) + tuple(int(out * widen) for _, out, *_ in ARCH_P5)


def num_blocks(n: int, deepen: float) -> int:
  """Blocks of a CSP layer: max(round(n * deepen), 1) (Python's round, as MMDetection)."""
  return max(round(n * deepen), 1)


class ConvModule(nn.Module):
  """mmcv ConvModule as RTMDet builds it: conv (no bias) -> BatchNorm -> SiLU.

  `kernel` given (HWIO, float32): the conv uses it instead of weights of its own, and the module
  keeps only its BatchNorm (RTMDetSepBNHead's share_conv: every level runs level 0's conv).
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  groups: int = 1
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, x, kernel=None):
    k, s = self.kernel_size, (self.stride, self.stride)
    if kernel is None:
      x = self.conv(self.features, (k, k), s, padding=_pad(k), feature_group_count=self.groups,
                    name="conv")(x)
    else:
      # The same convolution as nn.Conv above, on weights owned by another module.
      probe = self.conv(self.features, (k, k), s, padding=_pad(k),
                        feature_group_count=self.groups, parent=None)
      x = probe.apply({"params": {"kernel": kernel}}, x)
    return nn.silu(self.norm(name="bn")(x))


class DepthwiseSeparableConvModule(nn.Module):
  """mmcv DepthwiseSeparableConvModule: `depthwise_conv` (k x k, groups = in) -> `pointwise_conv`
  (1x1), each a ConvModule with its own BatchNorm and SiLU."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, x):
    x = ConvModule(x.shape[-1], self.kernel_size, self.stride, groups=x.shape[-1],
                   conv=self.conv, norm=self.norm, name="depthwise_conv")(x)
    return ConvModule(self.features, 1, conv=self.conv, norm=self.norm,
                      name="pointwise_conv")(x)


def conv_module(depthwise: bool) -> type[nn.Module]:
  """The `conv` MMDetection picks with `use_depthwise`: separable or plain."""
  return DepthwiseSeparableConvModule if depthwise else ConvModule


class ChannelAttention(nn.Module):
  """se_layer.ChannelAttention: global average pool -> 1x1 conv with bias -> Hardsigmoid -> x *.

  The pool runs in float32 (the reference disables autocast around it).
  """
  conv: Callable[..., nn.Module] = nn.Conv

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
    w = self.conv(channels, (1, 1), use_bias=True, name="fc")(pooled.astype(x.dtype))
    # torch.nn.Hardsigmoid: relu6(x + 3) / 6.
    w = jnp.clip(w + 3.0, 0.0, 6.0) / 6.0
    return x * w.astype(x.dtype)


def _same_max_pool(x, k: int):
  """torch's MaxPool2d(k, stride 1, padding k // 2): padded with -inf (padded cells never win),
  then pooled VALID, keywords only: the form ONNX converters keep (jax2onnx 0.17.1 drops
  `nn.max_pool`'s explicit padding and takes no positional window; docs/ecosystem.md §7)."""
  p = k // 2
  x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, window_shape=(k, k), strides=(1, 1), padding="VALID")


class SPPBottleneck(nn.Module):
  """csp_darknet.SPPBottleneck: conv1 (1x1 to in/2), max pools 5/9/13 (stride 1, padding k//2)
  concatenated with their input, conv2 (1x1)."""
  features: int
  kernels: Sequence[int] = SPP_KERNELS
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, x):
    x = ConvModule(x.shape[-1] // 2, 1, conv=self.conv, norm=self.norm, name="conv1")(x)
    pools = [_same_max_pool(x, k) for k in self.kernels]
    x = jnp.concatenate([x] + pools, axis=-1)
    return ConvModule(self.features, 1, conv=self.conv, norm=self.norm, name="conv2")(x)


class CSPNeXtBlock(nn.Module):
  """csp_layer.CSPNeXtBlock (expansion 1.0, as CSPLayer builds it): conv1 3x3 (separable with
  `depthwise`), conv2 a 5x5 depthwise-separable conv, identity added when `add_identity`."""
  features: int
  add_identity: bool = True
  depthwise: bool = False
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, x):
    y = conv_module(self.depthwise)(self.features, 3, conv=self.conv, norm=self.norm,
                                    name="conv1")(x)
    y = DepthwiseSeparableConvModule(self.features, 5, conv=self.conv, norm=self.norm,
                                     name="conv2")(y)
    return y + x if self.add_identity and x.shape[-1] == self.features else y


class CSPLayer(nn.Module):
  """csp_layer.CSPLayer with CSPNeXt blocks: main_conv -> blocks, short_conv; concatenated
  (main first), channel attention when set, final_conv."""
  features: int
  num_blocks: int = 1
  add_identity: bool = True
  depthwise: bool = False
  channel_attention: bool = False
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, x):
    mid = int(self.features * EXPAND_RATIO)
    short = ConvModule(mid, 1, conv=self.conv, norm=self.norm, name="short_conv")(x)
    main = ConvModule(mid, 1, conv=self.conv, norm=self.norm, name="main_conv")(x)
    for i in range(self.num_blocks):
      main = CSPNeXtBlock(mid, self.add_identity, self.depthwise, conv=self.conv,
                          norm=self.norm, name=f"blocks_{i}")(main)
    x = jnp.concatenate([main, short], axis=-1)
    if self.channel_attention:
      x = ChannelAttention(conv=self.conv, name="attention")(x)
    return ConvModule(self.features, 1, conv=self.conv, norm=self.norm, name="final_conv")(x)


class CSPNeXt(nn.Module):
  """The CSPNeXt P5 backbone: (B, H, W, 3) -> C3, C4, C5 at strides 8, 16, 32.

  Parameters `stem_{0,1,2}`, `stage{s}_{i}` (i: the stride-2 conv, in stage 4 the SPP
  bottleneck, then the CSP layer), as `backbone.stem.0`, `backbone.stage4.1`, ...
  """
  deepen_factor: float = 1.0
  widen_factor: float = 1.0
  depthwise: bool = False
  channel_attention: bool = True
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, x):
    kw = dict(conv=self.conv, norm=self.norm)
    # int(64 * widen // 2): float floor division, as MMDetection writes it.
    half = int(ARCH_P5[0][0] * self.widen_factor // 2)
    x = ConvModule(half, 3, 2, name="stem_0", **kw)(x)
    x = ConvModule(half, 3, 1, name="stem_1", **kw)(x)
    x = ConvModule(int(ARCH_P5[0][0] * self.widen_factor), 3, 1, name="stem_2", **kw)(x)
    outs = []
    for s, (_, out, n, add_identity, use_spp) in enumerate(ARCH_P5, start=1):
      out = int(out * self.widen_factor)
      x = conv_module(self.depthwise)(out, 3, 2, name=f"stage{s}_0", **kw)(x)
      i = 1
      if use_spp:
        x = SPPBottleneck(out, name=f"stage{s}_1", **kw)(x)
        i = 2
      x = CSPLayer(out, num_blocks(n, self.deepen_factor), add_identity, self.depthwise,
                   self.channel_attention, name=f"stage{s}_{i}", **kw)(x)
      if s >= 2:
        outs.append(x)
    return tuple(outs)


def upsample_nearest_2x(x):
  """nn.Upsample(scale_factor=2, mode='nearest') on NHWC."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class CSPNeXtPAFPN(nn.Module):
  """cspnext_pafpn.CSPNeXtPAFPN for three inputs: top-down (`reduce_layers`, nearest x2,
  `top_down_blocks`), bottom-up (`downsamples`, `bottom_up_blocks`), then `out_convs`.

  Its CSP layers have no channel attention and no identity; `depthwise` makes the downsamples,
  the out convs and the blocks' first convs separable (nano).
  """
  out_channels: int
  num_csp_blocks: int = 3
  depthwise: bool = False
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, inputs):
    kw = dict(conv=self.conv, norm=self.norm)
    chans = [f.shape[-1] for f in inputs]
    levels = len(inputs)
    inner = [inputs[-1]]
    for idx in range(levels - 1, 0, -1):
      j = levels - 1 - idx
      high = ConvModule(chans[idx - 1], 1, name=f"reduce_layers_{j}", **kw)(inner[0])
      inner[0] = high
      x = jnp.concatenate([upsample_nearest_2x(high), inputs[idx - 1]], axis=-1)
      inner.insert(0, CSPLayer(chans[idx - 1], self.num_csp_blocks, add_identity=False,
                               depthwise=self.depthwise, name=f"top_down_blocks_{j}", **kw)(x))
    outs = [inner[0]]
    for idx in range(levels - 1):
      down = conv_module(self.depthwise)(chans[idx], 3, 2, name=f"downsamples_{idx}",
                                         **kw)(outs[-1])
      x = jnp.concatenate([down, inner[idx + 1]], axis=-1)
      outs.append(CSPLayer(chans[idx + 1], self.num_csp_blocks, add_identity=False,
                           depthwise=self.depthwise, name=f"bottom_up_blocks_{idx}", **kw)(x))
    return tuple(conv_module(self.depthwise)(self.out_channels, 3, name=f"out_convs_{i}",
                                             **kw)(o) for i, o in enumerate(outs))
