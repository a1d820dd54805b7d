"""An independent PyTorch RTMDet and its test-time pipeline, for the detector parity tests.

Written from MMDetection 3.x's own source, not from sbpose_jax: `mmdet/models/backbones/
cspnext.py`, `mmdet/models/layers/csp_layer.py`, `se_layer.py` (ChannelAttention),
`csp_darknet.py` (SPPBottleneck), `mmdet/models/necks/cspnext_pafpn.py`,
`mmdet/models/dense_heads/rtmdet_head.py` (RTMDetSepBNHead), `base_dense_head.py`
(`_predict_by_feat_single`, `_bbox_post_process`), `mmdet/models/utils/misc.py`
(`filter_scores_and_topk`), `mmdet/structures/bbox/transforms.py` (`distance2bbox`),
`mmdet/models/task_modules/prior_generators/point_generator.py` (MlvlPointGenerator),
mmcv's `imrescale`/`impad`, `batched_nms` and the CPU NMS kernel, and the configs
(`configs/rtmdet/*.py`, MMPose's `demo/mmdetection_cfg/rtmdet_{nano_320,m_640}-8xb32_coco-
person.py`). NCHW, torch layers; module names are the state-dict keys of the published files.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import nn

ARCH_P5 = [[64, 128, 3, True, False], [128, 256, 6, True, False],
           [256, 512, 6, True, False], [512, 1024, 3, False, True]]
STRIDES = (8, 16, 32)
MEAN = (103.53, 116.28, 123.675)
STD = (57.375, 57.12, 58.395)


def bn(c):
  return nn.BatchNorm2d(c, eps=1e-5)  # the configs' SyncBN


class ConvModule(nn.Module):
  def __init__(self, cin, cout, k, stride=1, padding=0, groups=1):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False)
    self.bn = bn(cout)
    self.activate = nn.SiLU()

  def forward(self, x):
    return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
  def __init__(self, cin, cout, k, stride=1, padding=0):
    super().__init__()
    self.depthwise_conv = ConvModule(cin, cin, k, stride, padding, groups=cin)
    self.pointwise_conv = ConvModule(cin, cout, 1)

  def forward(self, x):
    return self.pointwise_conv(self.depthwise_conv(x))


class ChannelAttention(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.global_avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Conv2d(c, c, 1, 1, 0, bias=True)
    self.act = nn.Hardsigmoid()

  def forward(self, x):
    return x * self.act(self.fc(self.global_avgpool(x)))


class SPPBottleneck(nn.Module):
  def __init__(self, cin, cout, kernel_sizes=(5, 9, 13)):
    super().__init__()
    mid = cin // 2
    self.conv1 = ConvModule(cin, mid, 1)
    self.poolings = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in kernel_sizes])
    self.conv2 = ConvModule(mid * (len(kernel_sizes) + 1), cout, 1)

  def forward(self, x):
    x = self.conv1(x)
    return self.conv2(torch.cat([x] + [p(x) for p in self.poolings], 1))


class CSPNeXtBlock(nn.Module):
  def __init__(self, cin, cout, expansion=0.5, add_identity=True, use_depthwise=False):
    super().__init__()
    hidden = int(cout * expansion)
    conv = DepthwiseSeparableConvModule if use_depthwise else ConvModule
    self.conv1 = conv(cin, hidden, 3, 1, 1)
    self.conv2 = DepthwiseSeparableConvModule(hidden, cout, 5, 1, 2)
    self.add_identity = add_identity and cin == cout

  def forward(self, x):
    out = self.conv2(self.conv1(x))
    return out + x if self.add_identity else out


class CSPLayer(nn.Module):
  def __init__(self, cin, cout, expand_ratio=0.5, num_blocks=1, add_identity=True,
               use_depthwise=False, channel_attention=False):
    super().__init__()
    mid = int(cout * expand_ratio)
    self.channel_attention = channel_attention
    self.main_conv = ConvModule(cin, mid, 1)
    self.short_conv = ConvModule(cin, mid, 1)
    self.final_conv = ConvModule(2 * mid, cout, 1)
    self.blocks = nn.Sequential(*[CSPNeXtBlock(mid, mid, 1.0, add_identity, use_depthwise)
                                  for _ in range(num_blocks)])
    if channel_attention:
      self.attention = ChannelAttention(2 * mid)

  def forward(self, x):
    short = self.short_conv(x)
    main = self.blocks(self.main_conv(x))
    x = torch.cat((main, short), 1)
    if self.channel_attention:
      x = self.attention(x)
    return self.final_conv(x)


class CSPNeXt(nn.Module):
  def __init__(self, deepen_factor, widen_factor, use_depthwise=False, channel_attention=True):
    super().__init__()
    conv = DepthwiseSeparableConvModule if use_depthwise else ConvModule
    c0 = ARCH_P5[0][0]
    self.stem = nn.Sequential(
        ConvModule(3, int(c0 * widen_factor // 2), 3, 2, 1),
        ConvModule(int(c0 * widen_factor // 2), int(c0 * widen_factor // 2), 3, 1, 1),
        ConvModule(int(c0 * widen_factor // 2), int(c0 * widen_factor), 3, 1, 1))
    self.layers = ["stem"]
    for i, (cin, cout, n, add_identity, use_spp) in enumerate(ARCH_P5):
      cin, cout = int(cin * widen_factor), int(cout * widen_factor)
      n = max(round(n * deepen_factor), 1)
      stage = [conv(cin, cout, 3, 2, 1)]
      if use_spp:
        stage.append(SPPBottleneck(cout, cout))
      stage.append(CSPLayer(cout, cout, num_blocks=n, add_identity=add_identity,
                            use_depthwise=use_depthwise, channel_attention=channel_attention))
      self.add_module(f"stage{i + 1}", nn.Sequential(*stage))
      self.layers.append(f"stage{i + 1}")

  def forward(self, x):
    outs = []
    for i, name in enumerate(self.layers):
      x = getattr(self, name)(x)
      if i in (2, 3, 4):
        outs.append(x)
    return tuple(outs)


class CSPNeXtPAFPN(nn.Module):
  def __init__(self, in_channels, out_channels, num_csp_blocks, use_depthwise=False):
    super().__init__()
    self.in_channels = in_channels
    conv = DepthwiseSeparableConvModule if use_depthwise else ConvModule
    self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
    self.reduce_layers, self.top_down_blocks = nn.ModuleList(), nn.ModuleList()
    for idx in range(len(in_channels) - 1, 0, -1):
      self.reduce_layers.append(ConvModule(in_channels[idx], in_channels[idx - 1], 1))
      self.top_down_blocks.append(CSPLayer(in_channels[idx - 1] * 2, in_channels[idx - 1],
                                           num_blocks=num_csp_blocks, add_identity=False,
                                           use_depthwise=use_depthwise))
    self.downsamples, self.bottom_up_blocks = nn.ModuleList(), nn.ModuleList()
    for idx in range(len(in_channels) - 1):
      self.downsamples.append(conv(in_channels[idx], in_channels[idx], 3, 2, 1))
      self.bottom_up_blocks.append(CSPLayer(in_channels[idx] * 2, in_channels[idx + 1],
                                            num_blocks=num_csp_blocks, add_identity=False,
                                            use_depthwise=use_depthwise))
    self.out_convs = nn.ModuleList([conv(c, out_channels, 3, 1, 1) for c in in_channels])

  def forward(self, inputs):
    n = len(self.in_channels)
    inner = [inputs[-1]]
    for idx in range(n - 1, 0, -1):
      high = self.reduce_layers[n - 1 - idx](inner[0])
      inner[0] = high
      inner.insert(0, self.top_down_blocks[n - 1 - idx](
          torch.cat([self.upsample(high), inputs[idx - 1]], 1)))
    outs = [inner[0]]
    for idx in range(n - 1):
      down = self.downsamples[idx](outs[-1])
      outs.append(self.bottom_up_blocks[idx](torch.cat([down, inner[idx + 1]], 1)))
    return tuple(conv(o) for conv, o in zip(self.out_convs, outs))


class RTMDetSepBNHead(nn.Module):
  def __init__(self, num_classes, in_channels, feat_channels, share_conv=True,
               exp_on_reg=False, use_depthwise=False, stacked_convs=2):
    super().__init__()
    self.exp_on_reg = exp_on_reg
    conv = DepthwiseSeparableConvModule if use_depthwise else ConvModule
    self.cls_convs, self.reg_convs = nn.ModuleList(), nn.ModuleList()
    self.rtm_cls, self.rtm_reg = nn.ModuleList(), nn.ModuleList()
    for _ in STRIDES:
      cls_convs, reg_convs = nn.ModuleList(), nn.ModuleList()
      for i in range(stacked_convs):
        chn = in_channels if i == 0 else feat_channels
        cls_convs.append(conv(chn, feat_channels, 3, 1, 1))
        reg_convs.append(conv(chn, feat_channels, 3, 1, 1))
      self.cls_convs.append(cls_convs)
      self.reg_convs.append(reg_convs)
      self.rtm_cls.append(nn.Conv2d(feat_channels, num_classes, 1, padding=0))
      self.rtm_reg.append(nn.Conv2d(feat_channels, 4, 1, padding=0))
    if share_conv:
      for n in range(len(STRIDES)):
        for i in range(stacked_convs):
          self.cls_convs[n][i].conv = self.cls_convs[0][i].conv
          self.reg_convs[n][i].conv = self.reg_convs[0][i].conv

  def forward(self, feats):
    cls_scores, bbox_preds = [], []
    for idx, (x, stride) in enumerate(zip(feats, STRIDES)):
      cls_feat, reg_feat = x, x
      for layer in self.cls_convs[idx]:
        cls_feat = layer(cls_feat)
      cls_score = self.rtm_cls[idx](cls_feat)
      for layer in self.reg_convs[idx]:
        reg_feat = layer(reg_feat)
      reg = self.rtm_reg[idx](reg_feat)
      reg_dist = (reg.exp() if self.exp_on_reg else reg) * stride
      cls_scores.append(cls_score)
      bbox_preds.append(reg_dist)
    return tuple(cls_scores), tuple(bbox_preds)


class RTMDet(nn.Module):
  """backbone + neck + bbox_head, as MMDetection's RTMDet (a SingleStageDetector)."""

  def __init__(self, deepen_factor, widen_factor, num_classes=1, use_depthwise=False,
               head_depthwise=False, share_conv=True, exp_on_reg=False):
    super().__init__()
    chans = [int(c * widen_factor) for c in (256, 512, 1024)]
    out = int(256 * widen_factor)
    self.backbone = CSPNeXt(deepen_factor, widen_factor, use_depthwise)
    self.neck = CSPNeXtPAFPN(chans, out, max(round(3 * deepen_factor), 1), use_depthwise)
    self.bbox_head = RTMDetSepBNHead(num_classes, out, out, share_conv, exp_on_reg,
                                     head_depthwise)

  def forward(self, x):
    return self.bbox_head(self.neck(self.backbone(x)))


SIZES = {  # name: (deepen, widen, depthwise, head_depthwise, share_conv, exp_on_reg)
    "nano": (0.33, 0.25, True, True, False, False),
    "tiny": (0.167, 0.375, False, False, True, False),
    "s": (0.33, 0.5, False, False, True, False),
    "m": (0.67, 0.75, False, False, True, True),
    "l": (1.0, 1.0, False, False, True, True),
}


def build(size: str, num_classes: int = 1, widen: float | None = None) -> RTMDet:
  """A published size; `widen` replaces its width (tiny test models of the same options)."""
  d, w, dw, hdw, share, exp = SIZES[size]
  return RTMDet(d, w if widen is None else widen, num_classes, dw, hdw, share, exp).eval()


def randomize(model: nn.Module, seed: int = 0, cls_bias: float = -2.0) -> nn.Module:
  """Random weights with a real spread: BatchNorm statistics, scales and biases not at their
  identity, and a classifier bias that lets some priors pass the score threshold."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 4:
        fan_in = p.shape[1] * p.shape[2] * p.shape[3]
        p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(2.0 / fan_in))
      elif name.endswith("weight"):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.1 * torch.randn(b.shape, generator=g))
      elif name.endswith("running_var"):
        b.copy_(0.5 + torch.rand(b.shape, generator=g))
    for conv in model.bbox_head.rtm_cls:
      conv.bias.fill_(cls_bias)
    for conv in model.bbox_head.rtm_reg:
      conv.weight.mul_(0.1)
      conv.bias.fill_(0.5 if model.bbox_head.exp_on_reg else 4.0)
  return model


def fit_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
  """Sets every BatchNorm's running statistics to those of `x`'s activations (one pass in
  train mode, momentum 1; variances at least 0.5): unit-scale features, as in a trained
  network, instead of the compounding growth of random weights (which makes float32 itself
  inexact)."""
  bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  for m in bns:
    m.momentum = 1.0
  model.train()
  with torch.no_grad():
    model(x)
  for m in bns:
    m.momentum = 0.1
    # Near-constant channels (the padding) would be divided by ~0: amplified noise.
    m.running_var.clamp_(min=0.5)
  return model.eval()


# ---------------------------------------------------------------------------- test pipeline

def imrescale(img: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
  """mmcv.imrescale(img, (size, size)) with cv2 INTER_LINEAR -> (image, (w_scale, h_scale))
  as mmdet's Resize records it (new / old per axis)."""
  h, w = img.shape[:2]
  scale = min(max(size, size) / max(h, w), min(size, size) / min(h, w))
  new_w, new_h = int(w * float(scale) + 0.5), int(h * float(scale) + 0.5)
  out = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
  return out, (new_w / w, new_h / h)


def impad(img: np.ndarray, size: int, value: int = 114) -> np.ndarray:
  """mmcv.impad(img, shape=(size, size), pad_val=value): bottom/right constant padding."""
  h, w = img.shape[:2]
  return cv2.copyMakeBorder(img, 0, size - h, 0, size - w, cv2.BORDER_CONSTANT,
                            value=(value, value, value))


def preprocess(images_bgr, size: int):
  """Resize + Pad + DetDataPreprocessor (BGR kept) -> (NCHW float32, metas)."""
  batch, metas = [], []
  for img in images_bgr:
    resized, scale_factor = imrescale(img, size)
    metas.append(dict(img_shape=resized.shape[:2], scale_factor=scale_factor,
                      ori_shape=img.shape[:2]))
    batch.append(torch.from_numpy(impad(resized, size)).permute(2, 0, 1))
  x = torch.stack(batch).float()
  mean = torch.tensor(MEAN).view(1, 3, 1, 1)
  std = torch.tensor(STD).view(1, 3, 1, 1)
  return (x - mean) / std, metas


def grid_priors(featmap_sizes, strides=STRIDES, offset=0.0):
  """MlvlPointGenerator.grid_priors (with_stride=False): per level (H*W, 2) x, y."""
  out = []
  for (h, w), s in zip(featmap_sizes, strides):
    shift_x = (torch.arange(0, w) + offset) * s
    shift_y = (torch.arange(0, h) + offset) * s
    xx = shift_x.repeat(len(shift_y))
    yy = shift_y.view(-1, 1).repeat(1, len(shift_x)).view(-1)
    out.append(torch.stack([xx, yy], -1).float())
  return out


def filter_scores_and_topk(scores, score_thr, topk, results):
  valid_mask = scores > score_thr
  scores = scores[valid_mask]
  valid_idxs = torch.nonzero(valid_mask)
  num_topk = min(topk, valid_idxs.size(0))
  scores, idxs = scores.sort(descending=True)
  scores = scores[:num_topk]
  topk_idxs = valid_idxs[idxs[:num_topk]]
  keep_idxs, labels = topk_idxs.unbind(dim=1)
  return scores, labels, keep_idxs, {k: v[keep_idxs] for k, v in results.items()}


def distance2bbox(points, distance, max_shape):
  x1 = points[..., 0] - distance[..., 0]
  y1 = points[..., 1] - distance[..., 1]
  x2 = points[..., 0] + distance[..., 2]
  y2 = points[..., 1] + distance[..., 3]
  bboxes = torch.stack([x1, y1, x2, y2], -1)
  bboxes[:, 0::2].clamp_(min=0, max=max_shape[1])
  bboxes[:, 1::2].clamp_(min=0, max=max_shape[0])
  return bboxes


def nms_cpu(boxes, scores, iou_threshold):
  """mmcv's nms_cpu kernel (offset 0): a box is dropped when its IoU with a kept, higher-scored
  box is > iou_threshold. Returns kept indices in descending score order. (The kernel's inner
  loop over later boxes, vectorised: skipping already dropped ones only saves work.)"""
  x1, y1, x2, y2 = boxes.unbind(1)
  areas = (x2 - x1) * (y2 - y1)
  order = scores.sort(0, descending=True)[1]
  select = torch.ones(len(order), dtype=torch.bool)
  keep = []
  for _i in range(len(order)):
    if not select[_i]:
      continue
    i = order[_i]
    keep.append(int(i))
    j = order[_i + 1:]
    w = torch.clamp(torch.minimum(x2[i], x2[j]) - torch.maximum(x1[i], x1[j]), min=0)
    h = torch.clamp(torch.minimum(y2[i], y2[j]) - torch.maximum(y1[i], y1[j]), min=0)
    inter = w * h
    ovr = inter / (areas[i] + areas[j] - inter)
    select[_i + 1:] &= ~(ovr > iou_threshold)
  return torch.tensor(keep, dtype=torch.long)


def batched_nms(boxes, scores, labels, iou_threshold):
  """mmcv batched_nms (class-aware by coordinate offsets), the single-split path."""
  offsets = labels.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
  keep = nms_cpu(boxes + offsets[:, None], scores, iou_threshold)
  return keep


def predict_single(cls_scores, bbox_preds, meta, cfg):
  """_predict_by_feat_single + _bbox_post_process (rescale=True) for one image.

  cls_scores / bbox_preds: per level (C, H, W) / (4, H, W). Returns dict with the candidates
  before NMS (`pre_*`, boxes in original-image pixels, with `pre_index`: level offset + prior
  index, and `pre_labels`) and the final `bboxes`, `scores`, `labels`.
  """
  sizes = [c.shape[-2:] for c in cls_scores]
  priors = grid_priors(sizes)
  boxes, scores, labels, index = [], [], [], []
  offset = 0
  for cls, reg, pri in zip(cls_scores, bbox_preds, priors):
    reg = reg.permute(1, 2, 0).reshape(-1, 4)
    sc = cls.permute(1, 2, 0).reshape(-1, cls.shape[0]).sigmoid()
    s, lab, keep, res = filter_scores_and_topk(
        sc, cfg["score_thr"], cfg["nms_pre"], dict(bbox_pred=reg, priors=pri))
    boxes.append(distance2bbox(res["priors"], res["bbox_pred"], meta["img_shape"]))
    scores.append(s)
    labels.append(lab)
    index.append(keep + offset)
    offset += pri.shape[0]
  bboxes, scores = torch.cat(boxes), torch.cat(scores)
  labels, index = torch.cat(labels), torch.cat(index)
  inv = [1 / s for s in meta["scale_factor"]]
  bboxes = bboxes * bboxes.new_tensor(inv).repeat((1, 2))
  out = dict(pre_bboxes=bboxes, pre_scores=scores, pre_labels=labels, pre_index=index)
  w, h = bboxes[:, 2] - bboxes[:, 0], bboxes[:, 3] - bboxes[:, 1]
  valid = (w > cfg["min_bbox_size"]) & (h > cfg["min_bbox_size"])
  bboxes, scores, labels = bboxes[valid], scores[valid], labels[valid]
  if bboxes.numel() > 0:
    keep = batched_nms(bboxes, scores, labels, cfg["iou_thr"])[:cfg["max_per_img"]]
    bboxes, scores, labels = bboxes[keep], scores[keep], labels[keep]
  out.update(bboxes=bboxes, scores=scores, labels=labels)
  return out


PERSON_CFG = dict(score_thr=0.05, nms_pre=1000, iou_thr=0.6, max_per_img=100, min_bbox_size=0)


@torch.no_grad()
def detect(model, images_bgr, size: int, cfg=PERSON_CFG):
  """MMDetection's test time on uint8 BGR images: a list of `predict_single` dicts."""
  x, metas = preprocess(images_bgr, size)
  cls_scores, bbox_preds = model(x)
  return [predict_single([c[i] for c in cls_scores], [b[i] for b in bbox_preds], meta, cfg)
          for i, meta in enumerate(metas)]


def save(model: nn.Module, path, fmt: str = "zip", extra: dict | None = None) -> None:
  """torch.save({'meta': ..., 'state_dict': ...}) as MMDetection's checkpoints (zip or legacy)."""
  obj = {"meta": {"mmdet_version": "3.3.0"}, "state_dict": model.state_dict(), **(extra or {})}
  torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
