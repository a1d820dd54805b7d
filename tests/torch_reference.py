"""An independent PyTorch PoseResNet for the parity tests, and writers of checkpoint files.

Written from the architecture description (torchvision ResNet + Simple Baselines head), not from
sbpose_jax: NCHW, torch layers, torch's own padding semantics. Files are written with torch.save
in the zip format (default) or the legacy pickle stream (`_use_new_zipfile_serialization=False`)
in the layouts of MMPose 0.x, MMPose 1.x, the MSRA PoseResNet and torchvision.
"""
from __future__ import annotations

import collections
import contextlib
import os
import sys
import types

import numpy as np
import torch
from torch import nn

BLOCKS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
          50: ("bottleneck", [3, 4, 6, 3]), 101: ("bottleneck", [3, 4, 23, 3]),
          152: ("bottleneck", [3, 8, 36, 3])}
LAYOUTS = ("mm0", "mm1", "ms", "ms_train", "torchvision")
FORMATS = ("zip", "legacy")


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None, style="pytorch"):
    super().__init__()
    del style  # the 3x3 conv1 carries the stride in both styles
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = self.downsample(x) if self.downsample is not None else x
    return torch.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None, style="pytorch"):
    super().__init__()
    s1, s2 = (stride, 1) if style == "caffe" else (1, stride)
    self.conv1 = nn.Conv2d(inplanes, planes, 1, s1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, s2, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = torch.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = self.downsample(x) if self.downsample is not None else x
    return torch.relu(out + identity)


class PoseResNet(nn.Module):
  """ResNet + deconv head. `num_joints=0` builds the backbone alone (plus `fc` if num_classes)."""

  def __init__(self, depth, num_joints=17, style="pytorch", deconv_filters=(256, 256, 256),
               deconv_kernels=(4, 4, 4), final_conv_kernel=1, num_classes=0, width=64):
    super().__init__()
    kind, counts = BLOCKS[depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.inplanes = width
    for i, (planes, n) in enumerate(zip([width, 2 * width, 4 * width, 8 * width], counts)):
      setattr(self, f"layer{i + 1}", self._stage(block, planes, n, 1 if i == 0 else 2, style))
    self.num_joints = num_joints
    if num_classes:
      self.fc = nn.Linear(self.inplanes, num_classes)
    if num_joints:
      layers = []
      for f, k in zip(deconv_filters, deconv_kernels):
        p, op = {4: (1, 0), 3: (1, 1), 2: (0, 0)}[k]
        layers += [nn.ConvTranspose2d(self.inplanes, f, k, 2, p, op, bias=False),
                   nn.BatchNorm2d(f), nn.ReLU(inplace=True)]
        self.inplanes = f
      self.deconv_layers = nn.Sequential(*layers)
      self.final_layer = nn.Conv2d(self.inplanes, num_joints, final_conv_kernel, 1,
                                   final_conv_kernel // 2)

  def _stage(self, block, planes, n, stride, style):
    down = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride,
                                     bias=False), nn.BatchNorm2d(planes * block.expansion))
    blocks = [block(self.inplanes, planes, stride, down, style)]
    self.inplanes = planes * block.expansion
    blocks += [block(self.inplanes, planes, 1, None, style) for _ in range(n - 1)]
    return nn.Sequential(*blocks)

  def features(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))

  def forward(self, x):
    x = self.features(x)
    if not self.num_joints:
      return x
    return self.final_layer(self.deconv_layers(x))


@torch.no_grad()
def randomize(model: PoseResNet, x: np.ndarray, x_eval: np.ndarray | None = None,
              seed: int = 0) -> PoseResNet:
  """Random weights, BN statistics calibrated on `x` then perturbed, output scaled to max|y| = 1.

  x, x_eval: NHWC float32 batches; the final layer is rescaled so that the eval-mode output on
  `x_eval` (default `x`) has max |heatmap| = 1, the scale of real heatmaps.

  Calibrated statistics keep activations at their real scale through 150 layers (random ones
  explode or vanish); the perturbation makes eval mode differ from batch normalisation.
  """
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
      fan_in = m.weight[0].numel() if not isinstance(m, nn.ConvTranspose2d) else (
          m.weight.shape[0] * m.weight.shape[2] * m.weight.shape[3] / 4)
      m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
      if m.bias is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    elif isinstance(m, nn.BatchNorm2d):
      m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
      m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
      m.momentum = 1.0  # one training-mode pass sets running stats to the batch stats
  model.train()
  model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      sd = m.running_var.sqrt()
      m.running_mean.add_(torch.randn(sd.shape, generator=g) * 0.1 * sd)
      m.running_var.mul_(torch.rand(sd.shape, generator=g) * 0.6 + 0.7)
      m.momentum = 0.1
      m.num_batches_tracked.fill_(1234)
  if model.num_joints:
    scale = float(np.abs(forward_nhwc(model, x if x_eval is None else x_eval)).max())
    model.final_layer.weight.div_(scale)
    model.final_layer.bias.div_(scale)
  model.eval()
  return model


@torch.no_grad()
def forward_nhwc(model: PoseResNet, x_nhwc: np.ndarray) -> np.ndarray:
  """Eval-mode output as NHWC numpy (heatmaps, or C5 features for a head-less model)."""
  model.eval()
  y = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
  return y.numpy().transpose(0, 2, 3, 1)


def _mmpose_meta_classes():
  """A stand-in for mmengine's HistoryBuffer, pickled under mmengine's module path."""
  mod = types.ModuleType("mmengine.logging.history_buffer")

  class HistoryBuffer:
    def __init__(self, values):
      self._log_history = np.asarray(values)
      self._count_history = np.ones(len(values))

  HistoryBuffer.__module__ = mod.__name__
  HistoryBuffer.__qualname__ = "HistoryBuffer"
  mod.HistoryBuffer = HistoryBuffer
  return mod


def _package(name):
  pkg = types.ModuleType(name)
  pkg.__path__ = []
  return pkg


@contextlib.contextmanager
def _fake_modules(*mods):
  saved = {m.__name__: sys.modules.get(m.__name__) for m in mods}
  sys.modules.update({m.__name__: m for m in mods})
  try:
    yield
  finally:
    for name, old in saved.items():
      if old is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = old


def _prefixed(sd, table):
  """Prefixes every key (and the `_metadata` module paths) by the first matching rule."""
  def name(k):
    return next(p for start, p in table if k.startswith(start)) + k if k else k
  out = collections.OrderedDict((name(k), v) for k, v in sd.items())
  out._metadata = collections.OrderedDict(
      (name(k), v) for k, v in getattr(sd, "_metadata", {}).items())
  return out


def layout_object(model: PoseResNet, layout: str):
  """What a given code base would torch.save for this model."""
  sd = model.state_dict()
  head = ("deconv_layers", "final_layer")
  if layout == "ms":  # 2018 file: torch 0.4.0, no num_batches_tracked, no _metadata
    return collections.OrderedDict(
        (k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
  if layout == "ms_train":  # MS training checkpoint: DataParallel names + extras
    return {"epoch": 140, "model": "pose_resnet", "perf": 0.7,
            "state_dict": collections.OrderedDict(("module." + k, v) for k, v in sd.items())}
  if layout == "mm0":
    table = [(h, "keypoint_head.") for h in head] + [("", "backbone.")]
    return {"meta": {"mmpose_version": "0.1.0", "config": "model = dict(type='TopDown')",
                     "epoch": 210, "iter": 1000, "time": "Thu Jul  9 2020"},
            "state_dict": _prefixed(sd, table)}
  if layout == "mm1":
    table = [(h, "head.") for h in head] + [("", "backbone.")]
    state = _prefixed(sd, table)
    state["data_preprocessor.mean"] = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    mod = _mmpose_meta_classes()
    return {"meta": {"cfg": "model = dict(type='TopdownPoseEstimator')", "seed": 0,
                     "dataset_meta": {"sigmas": np.linspace(0.02, 0.1, 17).astype(np.float32),
                                      "flip_indices": [0, 2, 1], "num_keypoints": 17,
                                      "best": np.float64(0.72), "tags": {"a", "b"}}},
            "state_dict": state,
            "message_hub": {"log_scalars": {"train/loss": mod.HistoryBuffer([1.0, 0.5])}},
            "param_schedulers": [{"last_epoch": 210, "milestones": {170: 1, 200: 1}}]}, mod
  if layout == "torchvision":
    return collections.OrderedDict((k, v) for k, v in sd.items())
  raise ValueError(layout)


def save(model: PoseResNet, layout: str, fmt: str, path: str | os.PathLike) -> None:
  """Writes `model` as `layout` ("mm0", "mm1", "ms", "ms_train", "torchvision") in `fmt`."""
  obj = layout_object(model, layout)
  mods = ()
  if isinstance(obj, tuple):
    obj, mod = obj
    mods = (_package("mmengine"), _package("mmengine.logging"), mod)
  with _fake_modules(*mods):
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))


class _Hostile:
  """Unpickling this would run a shell command (os.system) that creates `marker`."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def save_hostile(path, marker, fmt: str = "zip", where: str = "meta") -> None:
  """A checkpoint whose pickle calls os.system when loaded by a plain unpickler."""
  sd = collections.OrderedDict(conv1=torch.zeros(64, 3, 7, 7))
  obj = {"state_dict": sd, "meta": {"x": 1}}
  if where == "meta":
    obj["meta"]["hook"] = _Hostile(marker)
  else:
    sd["bn1.weight"] = _Hostile(marker)
  torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
