"""PyTorch PoseResNet / ResNet checkpoints -> sbpose_jax variables and saved models.

The library of the `python -m sbpose_jax.convert` command (convert.py, whose docstring lists
the recognised layouts: mmpose0, mmpose1, poseresnet, torchvision, backbone).

The conversion is a name table: Flax submodules carry the PyTorch names (`layer1_0/conv1` <->
`layer1.0.conv1`), so each Flax leaf has exactly one source key. Depth, head shape and K come
from the file; the ResNet style cannot (both styles have identical shapes) and comes from the
config (default "pytorch").
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sbpose_jax import keypoints
from sbpose_jax.sizes import network_output_wh
from sbpose_jax.weights import pth
from sbpose_jax.weights.meta import TestSettings
from sbpose_jax.weights import saved_model
from sbpose_jax.models import resnet

COLOUR_ORDER = {"mmpose0": "rgb", "mmpose1": "rgb", "poseresnet": "bgr", "torchvision": "rgb",
                "backbone": "rgb"}
HEAD_PREFIXES = ("deconv_layers.", "final_layer.")
MMPOSE_NAME = re.compile(r"-([0-9a-f]{8})_\d{8}\.pth$")
# Flax leaf -> PyTorch parameter name.
LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
              ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
              ("batch_stats", "var"): "running_var"}


class ConvertError(ValueError):
  """A checkpoint that cannot be converted; the message is one line naming the file."""


def _short(names, n: int = 6) -> str:
  names = sorted(names)
  more = f" (+{len(names) - n} more)" if len(names) > n else ""
  return ", ".join(names[:n]) + more


# --- Reading and recognising the state dict ---------------------------------------------------


def extract_state_dict(obj: Any) -> dict[str, np.ndarray]:
  """The state dict inside a loaded checkpoint.

  `module.` prefixes are stripped; `num_batches_tracked` and `data_preprocessor.*` dropped.
  """
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping) or not obj:
    raise ConvertError("no state dict found (expected a dict of tensors or {'state_dict': ...})")
  out = {}
  for key, value in obj.items():
    key = str(key)
    while key.startswith("module."):
      key = key[len("module."):]
    if key.endswith("num_batches_tracked") or key.startswith("data_preprocessor."):
      continue
    if not isinstance(value, np.ndarray):
      raise ConvertError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
    out[key] = value
  return out


def split_layout(sd: Mapping[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
  """(layout, state dict with the bare PoseResNet names)."""
  keys = set(sd)
  if any(k.startswith("bbox_head.rtm_cls.") for k in keys):
    raise ConvertError("an RTMDet detector checkpoint (bbox_head.rtm_cls.* keys), not a pose "
                       "model: convert it with `python -m sbpose_jax.convert FILE OUT_DIR`, "
                       "which writes a saved detector")
  if any(k.startswith("backbone.") for k in keys):
    heads = {p for p in ("keypoint_head.", "head.") if any(k.startswith(p) for k in keys)}
    if len(heads) > 1:
      raise ConvertError("both keypoint_head.* and head.* keys: unknown layout")
    head = heads.pop() if heads else None
    layout = {"keypoint_head.": "mmpose0", "head.": "mmpose1", None: "backbone"}[head]
    prefixes = ("backbone.",) + ((head,) if head else ())
    unmatched = [k for k in keys if not k.startswith(prefixes)]
    if unmatched:
      raise ConvertError(f"unknown layout: keys matching nothing: {_short(unmatched)}")
    bare = {k.split(".", 1)[1]: v for k, v in sd.items()}
    return layout, bare
  if "conv1.weight" not in keys:
    raise ConvertError(
        f"unknown layout: keys matching nothing: {_short(keys)}; missing: conv1.weight, "
        "bn1.*, layer1.0.* (expected a ResNet / PoseResNet state dict)")
  if "fc.weight" in keys:
    return "torchvision", {k: v for k, v in sd.items() if not k.startswith("fc.")}
  if any(k.startswith(HEAD_PREFIXES) for k in keys):
    return "poseresnet", dict(sd)
  return "backbone", dict(sd)


def infer_arch(bare: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Depth, width, head shape and K from the bare state dict (style cannot be inferred)."""
  counts = []
  for stage in range(1, 5):
    idx = {int(m.group(1)) for k in bare if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
    counts.append(max(idx) + 1 if idx else 0)
  block = "bottleneck" if "layer1.0.conv3.weight" in bare else "basic"
  depth = next((d for d, spec in resnet.DEPTHS.items() if spec == (block, tuple(counts))), None)
  if depth is None:
    raise ConvertError(f"unknown layout: {block} blocks per stage {tuple(counts)} match no "
                       f"ResNet depth {sorted(resnet.DEPTHS)}")
  filters, kernels = [], []
  while (w := bare.get(f"deconv_layers.{3 * len(filters)}.weight")) is not None:
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
      raise ConvertError(f"deconv_layers.{3 * len(filters)}.weight has shape {w.shape}")
    filters.append(int(w.shape[1]))
    kernels.append(int(w.shape[2]))
  arch = dict(depth=depth, width=int(bare["conv1.weight"].shape[0]),
              num_deconv_layers=len(filters), deconv_filters=tuple(filters),
              deconv_kernels=tuple(kernels), final_conv_kernel=1, num_joints=0,
              backbone_only=not any(k.startswith(HEAD_PREFIXES) for k in bare))
  final = bare.get("final_layer.weight")
  if final is not None and final.ndim == 4:
    arch.update(num_joints=int(final.shape[0]), final_conv_kernel=int(final.shape[2]))
  return arch


# --- The name table ---------------------------------------------------------------------------


def torch_name(collection: str, path: tuple[str, ...]) -> str:
  """Flax variable path -> PyTorch key.

  ("params", ("layer1_0", "conv1", "kernel")) -> "layer1.0.conv1.weight".
  """
  modules = [re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1]]
  return ".".join(modules + [LEAF_NAMES[(collection, path[-1])]])


def abstract_variables(meta: saved_model.ModelMeta):
  """Shape/dtype tree of the Flax model of `meta` (head-less for backbone_only)."""
  # Only the architecture matters: one cache entry per architecture, not per file.
  return _abstract_variables(dataclasses.replace(meta, colour_order="rgb", dataset="",
                                                 source="", step=0))


@functools.lru_cache(maxsize=16)
def _abstract_variables(meta: saved_model.ModelMeta):
  model = saved_model.build_model(meta)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))


def _from_torch(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if value.ndim == 4:  # conv OIHW and deconv (in, out, kH, kW) both go to (kH, kW, ., .)
    value = value.transpose(2, 3, 1, 0)
  if value.shape != tuple(shape):
    raise ConvertError(f"{name} has shape {value.shape} after conversion, the model needs {shape}")
  return np.ascontiguousarray(value)


def to_variables(bare: Mapping[str, np.ndarray], meta: saved_model.ModelMeta) -> dict:
  """Bare PoseResNet state dict -> {"params", "batch_stats"} numpy float32 trees.

  Raises ConvertError naming the keys that matched nothing and the ones missing.
  """
  abstract = abstract_variables(meta)
  used, missing = set(), []
  out: dict = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    names = tuple(p.key for p in path)
    key = torch_name(names[0], names[1:])
    if key not in bare:
      missing.append(key)
      continue
    used.add(key)
    node = out
    for part in names[:-1]:
      node = node.setdefault(part, {})
    node[names[-1]] = _from_torch(key, bare[key], leaf.shape)
  unused = [k for k in bare if k not in used and not k.endswith("num_batches_tracked")]
  if missing or unused:
    raise ConvertError(f"unknown layout for a ResNet-{meta.depth} PoseResNet: keys matching "
                       f"nothing: "
                       f"{_short(unused) or 'none'}; missing: {_short(missing) or 'none'}")
  return out


# --- Whole files ------------------------------------------------------------------------------


def verify_name_hash(path: pathlib.Path, pattern: re.Pattern = MMPOSE_NAME) -> None:
  """MMPose names files `<name>-<sha256[:8]>_<date>.pth` (`pattern`'s group 1 is the prefix;
  MMDetection's detectors end in `-<sha256[:8]>.pth`); check it when the name has one."""
  m = pattern.search(path.name)
  if not m:
    return
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  if not digest.hexdigest().startswith(m.group(1)):
    raise ConvertError(f"sha256 starts with {digest.hexdigest()[:8]} but the file name says "
                       f"{m.group(1)}: corrupted or incomplete download")


def guess_dataset(name: str, num_joints: int) -> str:
  """Dataset key named in the file name whose joint count is K, or ''."""
  hits = [d for d, info in keypoints.DATASETS.items()
          if d in name.lower() and info.num_joints == num_joints]
  return max(hits, key=len) if hits else ""


def load_pth(src: str | os.PathLike, style: str = "pytorch", verify_hash: bool = True):
  """Reads and converts a .pth in memory -> (variables, ModelMeta); raises ConvertError/PthError."""
  src = pathlib.Path(src)
  if style not in resnet.STYLES:
    raise ConvertError(f"unknown style {style!r}; choose from {resnet.STYLES}")
  if verify_hash and src.is_file():
    try:
      verify_name_hash(src)
    except ConvertError as e:
      raise ConvertError(f"{src}: {e}") from None
  obj = pth.load(src)
  try:
    layout, bare = split_layout(extract_state_dict(obj))
    arch = infer_arch(bare)
    meta = saved_model.ModelMeta(
        **arch, style=style, colour_order=COLOUR_ORDER[layout],
        dataset=guess_dataset(src.name, arch["num_joints"]), source=f"{src.name} ({layout})")
    variables = to_variables(bare, meta)
  except ConvertError as e:
    raise ConvertError(f"{src}: {e}") from None
  return variables, meta


def test_settings_of_name(src, meta: saved_model.ModelMeta) -> TestSettings:
  """A converted model's test settings without a config: the published defaults, at the crop
  size its file name states (MMPose's `..._256x192-...pth`: H x W), the heatmap the network's
  output at that size."""
  found = re.search(r"(\d{2,4})x(\d{2,4})", pathlib.Path(src).name)
  if not found:
    return TestSettings()
  wh = (int(found.group(2)), int(found.group(1)))
  return TestSettings(input_size=wh, heatmap_size=network_output_wh(wh, meta.num_deconv_layers))


def convert(src, dst, config=None, style: str | None = None, colour_order: str | None = None,
            verify_hash: bool = True) -> saved_model.ModelMeta:
  """Converts the .pth `src` into the saved model `dst`; nothing is left at `dst` on failure."""
  if style is None:
    style = config.model.style if config is not None else "pytorch"
  variables, meta = load_pth(src, style=style, verify_hash=verify_hash)
  if config is not None:
    try:
      saved_model.check_matches_config(meta, config)
    except ValueError as e:
      raise ConvertError(str(e)) from None
    meta = dataclasses.replace(meta, dataset=config.data.dataset,
                               test=TestSettings.from_config(config))
  else:
    meta = dataclasses.replace(meta, test=test_settings_of_name(src, meta))
  if colour_order:
    meta = dataclasses.replace(meta, colour_order=colour_order)
  dst = pathlib.Path(dst)
  if dst.exists() and not saved_model.is_saved_model(dst) and not (
      dst.is_dir() and not any(dst.iterdir())):
    raise ConvertError(f"{dst} exists and is not a saved model; refusing to overwrite it")
  saved_model.save_model_atomic(dst, variables, meta)
  return meta
