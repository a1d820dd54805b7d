"""RTMDet (arXiv 2212.07784): CSPNeXt + CSPNeXt-PAFPN + RTMDetSepBNHead, in Flax linen.

Written from MMDetection 3.x (`mmdet/models/dense_heads/rtmdet_head.py: RTMDetSepBNHead`,
`configs/rtmdet/rtmdet_{tiny,s,m,l,x}_8xb32-300e_coco.py`) and MMPose's person detectors
(`demo/mmdetection_cfg/rtmdet_{nano_320,m_640}-8xb32_coco-person.py`). The parameter tree is the
MMDetection state dict with `.` before an index turned into `_`: `backbone.stem.0.conv.weight`
-> params["backbone"]["stem_0"]["conv"]["kernel"], `bbox_head.cls_convs.1.0.bn.running_mean`
-> batch_stats["bbox_head"]["cls_convs_1_0"]["bn"]["mean"].

This module is the network only: `RTMDet.__call__` returns the head's raw outputs per level.
The test time (priors, decoding, NMS) is `sbpose_jax.inference.detection`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from sbpose_jax.models import cspnext

STRIDES = (8, 16, 32)
STACKED_CONVS = 2
HEAD_INIT = nn.initializers.normal(0.01)
# mmengine bias_init_with_prob(0.01): the classifier starts at a 1% foreground probability.
CLS_BIAS_INIT = -math.log((1 - 0.01) / 0.01)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RTMDetArch:
  """What a published RTMDet is, as its config says.

  size: the name in SIZES (nano, tiny, s, m, l, x). deepen_factor, widen_factor: CSPNeXt's.
  depthwise: separable convs in the backbone and the neck's downsamples (nano).
  head_depthwise: separable head convs (nano's `bbox_head.use_depthwise`).
  share_conv: every level runs level 0's head convs, BatchNorm stays per level (tiny and up).
  exp_on_reg: the box distances are exp(rtm_reg(x)) * stride, else rtm_reg(x) * stride (m and up).
  num_classes: 1 for the person detectors, 80 for MMDetection's COCO files.
  """
  size: str = "custom"
  deepen_factor: float = 1.0
  widen_factor: float = 1.0
  depthwise: bool = False
  head_depthwise: bool = False
  share_conv: bool = True
  exp_on_reg: bool = True
  num_classes: int = 1

  @property
  def neck_channels(self) -> int:
    """The neck's output and the head's feature channels: int(256 * widen)."""
    return int(256 * self.widen_factor)

  @property
  def num_csp_blocks(self) -> int:
    """The neck's CSP blocks: l 3, m 2, s/tiny/nano 1, x 4 (round(3 * deepen), at least 1)."""
    return cspnext.num_blocks(3, self.deepen_factor)


# The published sizes: MMDetection's configs/rtmdet (tiny, s, m, l, x) and MMPose's nano person
# config. Options as those configs set them; num_classes is the file's (1 or 80).
SIZES = {
    "nano": RTMDetArch(size="nano", deepen_factor=0.33, widen_factor=0.25, depthwise=True,
                       head_depthwise=True, share_conv=False, exp_on_reg=False),
    "tiny": RTMDetArch(size="tiny", deepen_factor=0.167, widen_factor=0.375, exp_on_reg=False),
    "s": RTMDetArch(size="s", deepen_factor=0.33, widen_factor=0.5, exp_on_reg=False),
    "m": RTMDetArch(size="m", deepen_factor=0.67, widen_factor=0.75),
    "l": RTMDetArch(size="l", deepen_factor=1.0, widen_factor=1.0),
    "x": RTMDetArch(size="x", deepen_factor=1.33, widen_factor=1.25),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TestSettings:
  """The test pipeline and `test_cfg` of a config.

  input_size: S of Resize(scale=(S, S), keep_ratio=True) + Pad(size=(S, S)); a multiple of 32.
  mean, std: the data preprocessor's, in the network's channel order.
  colour_order: "bgr": the network reads images as OpenCV loads them (bgr_to_rgb=False).
  pad_value: Pad's fill (before normalisation).
  score_thr, nms_pre, iou_thr, max_per_img, min_bbox_size: test_cfg.
  """
  input_size: int = 640
  mean: tuple[float, float, float] = (103.53, 116.28, 123.675)
  std: tuple[float, float, float] = (57.375, 57.12, 58.395)
  colour_order: str = "bgr"
  pad_value: float = 114.0
  score_thr: float = 0.05
  nms_pre: int = 1000
  iou_thr: float = 0.6
  max_per_img: int = 100
  min_bbox_size: float = 0.0

  def __post_init__(self):
    object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
    object.__setattr__(self, "std", tuple(float(s) for s in self.std))
    if self.input_size % 32 or self.input_size < 32:
      raise ValueError(f"input_size must be a positive multiple of 32, got {self.input_size}")
    if self.colour_order not in ("rgb", "bgr"):
      raise ValueError(f"colour_order must be 'rgb' or 'bgr', got {self.colour_order!r}")


# MMPose's person configs (rtmdet_{nano_320,m_640}-8xb32_coco-person.py) ...
PERSON_SETTINGS = TestSettings(score_thr=0.05, nms_pre=1000, iou_thr=0.6, max_per_img=100)
# ... and MMDetection's COCO configs (configs/rtmdet/rtmdet_l_8xb32-300e_coco.py test_cfg).
COCO_SETTINGS = TestSettings(score_thr=0.001, nms_pre=30000, iou_thr=0.65, max_per_img=300)


def default_settings(arch: RTMDetArch, num_file_classes: int) -> TestSettings:
  """The settings of the config a file was published with: person (nano at 320) or COCO."""
  base = PERSON_SETTINGS if num_file_classes == 1 else COCO_SETTINGS
  return dataclasses.replace(base, input_size=320 if arch.size == "nano" else 640)


class RTMDetSepBNHead(nn.Module):
  """rtmdet_head.RTMDetSepBNHead (no objectness, 1x1 predictions, stacked_convs 2).

  Per level n: `cls_convs_{n}_{i}` and `reg_convs_{n}_{i}` (ConvModules, separable with
  `depthwise`), `rtm_cls_{n}`, `rtm_reg_{n}` (1x1 convs with bias). With `share_conv` levels
  n > 0 hold only their BatchNorms and run level 0's conv weights.
  """
  num_classes: int
  feat_channels: int
  share_conv: bool = True
  exp_on_reg: bool = True
  depthwise: bool = False
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, feats):
    """feats: per level (B, H_l, W_l, C) -> (cls (B, H_l, W_l, num_classes) logits,
    reg (B, H_l, W_l, 4) distances left, top, right, bottom in input pixels), float32."""
    if self.share_conv and self.depthwise:
      raise ValueError("share_conv with separable head convs is not a published RTMDet")
    kw = dict(conv=self.conv, norm=self.norm)
    block = cspnext.conv_module(self.depthwise)
    cls_scores, bbox_preds = [], []
    shared: dict[str, Any] = {}
    for n, (x, stride) in enumerate(zip(feats, STRIDES)):
      branches = {}
      for branch in ("cls", "reg"):
        y = x
        for i in range(STACKED_CONVS):
          name = f"{branch}_convs_{n}_{i}"
          if self.share_conv and n > 0:
            y = cspnext.ConvModule(self.feat_channels, 3, name=name, **kw)(y, shared[(branch, i)])
            continue
          mod = block(self.feat_channels, 3, name=name, **kw)
          y = mod(y)
          if self.share_conv:
            shared[(branch, i)] = mod.variables["params"]["conv"]["kernel"]
        branches[branch] = y
      cls = self.conv(self.num_classes, (1, 1), use_bias=True, kernel_init=HEAD_INIT,
                      bias_init=nn.initializers.constant(CLS_BIAS_INIT),
                      name=f"rtm_cls_{n}")(branches["cls"])
      reg = self.conv(4, (1, 1), use_bias=True, kernel_init=HEAD_INIT,
                      bias_init=nn.initializers.zeros, name=f"rtm_reg_{n}")(branches["reg"])
      reg = reg.astype(jnp.float32)
      reg = (jnp.exp(reg) if self.exp_on_reg else reg) * stride
      cls_scores.append(cls.astype(jnp.float32))
      bbox_preds.append(reg)
    return tuple(cls_scores), tuple(bbox_preds)


class RTMDet(nn.Module):
  """The RTMDet network: (B, S, S, 3) normalised image -> per level (cls logits, distances).

  Attributes:
    arch: RTMDetArch (size, factors and options).
    dtype: compute dtype (parameters stay float32).
    precision: passed to every conv ("highest" for float32 parity on GPUs).
  """
  arch: RTMDetArch = SIZES["m"]
  dtype: Any = jnp.bfloat16
  precision: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    a = self.arch
    conv, norm = cspnext.layers(self.dtype, self.precision, train)
    feats = cspnext.CSPNeXt(a.deepen_factor, a.widen_factor, a.depthwise, conv=conv, norm=norm,
                            name="backbone")(x.astype(self.dtype))
    feats = cspnext.CSPNeXtPAFPN(a.neck_channels, a.num_csp_blocks, a.depthwise, conv=conv,
                                 norm=norm, name="neck")(feats)
    return RTMDetSepBNHead(a.num_classes, a.neck_channels, a.share_conv, a.exp_on_reg,
                           a.head_depthwise, conv=conv, norm=norm, name="bbox_head")(feats)


def build(arch: RTMDetArch, dtype: str = "bfloat16") -> RTMDet:
  """The RTMDet of `arch` at compute `dtype`; float32 means float32 throughout ('highest')."""
  precision = "highest" if str(dtype) == "float32" else None
  return RTMDet(arch=arch, dtype=jnp.dtype(dtype), precision=precision)
