"""MMDetection RTMDet checkpoints -> Flax variables and saved detector models.

A name table, as the pose converter (`conversion.py`): the Flax submodules carry the state-dict
paths (`bbox_head.cls_convs.0.1.bn.running_var` <-> batch_stats/bbox_head/cls_convs_0_1/bn/var).
The files are read with the torch-free allow-list unpickler (`pth.py`); nothing is executed.

What the tensors say: the width (`backbone.stem.2`), the blocks per CSP layer, separable convs
(`depthwise_conv` keys), `share_conv` (levels > 0 hold copies of level 0's conv weights: torch's
state_dict writes a shared module under every path), the class count (`rtm_cls.0`). What they
cannot say is `exp_on_reg` (no parameter); it is the published config's for the size (m, l, x
set it). MMDetection's published files hold the EMA weights in `state_dict` (mmengine's EMAHook
swaps them in before saving) and MMDetection's `init_detector` loads `state_dict`: so do we;
`ema_state_dict` is ignored. Of an 80-class COCO file only class 0 (person) is kept, recorded
in `meta.json` as `classes_kept`.

A saved detector is a directory like a saved pose model (`saved_model.py`): `variables/`
(orbax, {"params", "batch_stats"}) and `meta.json` with `kind: "detector"`, the architecture
and the test-time settings.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sbpose_jax.models import rtmdet
from sbpose_jax.weights import conversion
from sbpose_jax.weights import pth
from sbpose_jax.weights import saved_model

ConvertError = conversion.ConvertError
KIND = "detector"
# MMDetection / MMPose detector files end in `-<sha256[:8]>.pth`.
DETECTOR_NAME = re.compile(r"-([0-9a-f]{8})\.pth$")
DETECTOR_KEYS = ("backbone.stem.0.", "bbox_head.rtm_cls.0.")
PERSON_CLASS = 0  # COCO's class 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectorMeta:
  """What a saved detector is: `arch` (rtmdet.RTMDetArch), `settings` (rtmdet.TestSettings),
  `num_file_classes` (classes in the converted file), `classes_kept` (their indices, in the
  order of the model's outputs: (0,) for a COCO file, person only), `source` (free text),
  `step` (training step: 0 when converted; a detector trained here records its step)."""
  arch: rtmdet.RTMDetArch
  settings: rtmdet.TestSettings
  num_file_classes: int = 1
  classes_kept: tuple[int, ...] = (0,)
  source: str = ""
  step: int = 0

  def to_json(self) -> str:
    data = dict(kind=KIND, arch=dataclasses.asdict(self.arch),
                settings=dataclasses.asdict(self.settings), num_file_classes=self.num_file_classes,
                classes_kept=list(self.classes_kept), source=self.source, step=self.step)
    return json.dumps(data, indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str, where: str) -> "DetectorMeta":
    data = json.loads(text)
    if data.get("kind") != KIND:
      what = (f"a pose model (ResNet-{data.get('depth')}, {data.get('num_joints')} joints)"
              if "num_joints" in data else "not a detector description")
      raise ValueError(f"{where}: {what}, not a person detector")
    try:
      return cls(arch=rtmdet.RTMDetArch(**data["arch"]),
                 settings=rtmdet.TestSettings(**data["settings"]),
                 num_file_classes=int(data["num_file_classes"]),
                 classes_kept=tuple(int(c) for c in data["classes_kept"]),
                 source=str(data.get("source", "")), step=int(data.get("step", 0)))
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{where}: not a valid detector description ({e})") from None

  def describe(self) -> str:
    """One line for the command line: size, options, classes, input."""
    a, s = self.arch, self.settings
    opts = [o for o, on in (("separable", a.depthwise), ("share_conv", a.share_conv),
                            ("exp_on_reg", a.exp_on_reg)) if on]
    kept = ("person" if self.num_file_classes == 1
            else f"class {list(self.classes_kept)} of {self.num_file_classes} (person)")
    return (f"RTMDet-{a.size} ({', '.join(opts) or 'plain'}), {kept}, {s.input_size}x"
            f"{s.input_size} {s.colour_order.upper()} input")


def _short(names, n: int = 6) -> str:
  names = sorted(names)
  more = f" (+{len(names) - n} more)" if len(names) > n else ""
  return ", ".join(names[:n]) + more


# --- Recognising the file ----------------------------------------------------------------------


def is_detector_state_dict(keys) -> bool:
  """True when the keys are an RTMDet's (`backbone.stem.0.*` and `bbox_head.rtm_cls.0.*`)."""
  return all(any(k.startswith(p) for k in keys) for p in DETECTOR_KEYS)


def is_detector_file(src: str | os.PathLike) -> bool:
  """True when the checkpoint at `src` holds an RTMDet state dict (reads the file)."""
  try:
    return is_detector_state_dict(conversion.extract_state_dict(pth.load(src)))
  except ConvertError:
    return False


def describe_state_dict(sd: Mapping[str, np.ndarray]) -> str:
  """What a state dict that is not an RTMDet is, in words."""
  try:
    layout, bare = conversion.split_layout(sd)
    arch = conversion.infer_arch(bare)
  except ConvertError:
    return f"not an RTMDet state dict (keys such as {_short(sd, 3)})"
  what = "backbone only" if arch["backbone_only"] else f"{arch['num_joints']} joints"
  return f"a pose checkpoint ({layout}: ResNet-{arch['depth']}, {what})"


def _count(sd, pattern: str) -> int:
  idx = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
  return max(idx) + 1 if idx else 0


def infer_arch(sd: Mapping[str, np.ndarray]) -> rtmdet.RTMDetArch:
  """The RTMDetArch of an MMDetection state dict (size matched against rtmdet.SIZES)."""
  if any(k.startswith("bbox_head.rtm_obj.") for k in sd):
    raise ConvertError("the head has an objectness branch (rtm_obj): no published RTMDet does")
  width = int(sd["backbone.stem.2.conv.weight"].shape[0])
  blocks = tuple(_count(sd, rf"backbone\.stage{s}\.{2 if s == 4 else 1}\.blocks\.(\d+)\.")
                 for s in range(1, 5))
  depthwise = "backbone.stage1.0.depthwise_conv.conv.weight" in sd
  sizes = [a for a in rtmdet.SIZES.values() if a.depthwise == depthwise and blocks == tuple(
      rtmdet.cspnext.num_blocks(n, a.deepen_factor) for _, _, n, _, _ in rtmdet.cspnext.ARCH_P5)]
  exact = [a for a in sizes if int(64 * a.widen_factor) == width]
  if exact:
    size = exact[0]
  elif len(sizes) == 1:
    # A width no published size has (a thinner model of a published depth, e.g. in tests):
    # the block counts name the size and its options; every shape is checked by the table.
    size = dataclasses.replace(sizes[0], widen_factor=width / 64)
  else:
    raise ConvertError(f"stem width {width} and CSP blocks per stage {blocks} match no "
                       f"published RTMDet size ({', '.join(rtmdet.SIZES)})")
  head_dw = "bbox_head.cls_convs.0.0.depthwise_conv.conv.weight" in sd
  share = not head_dw and all(
      np.array_equal(sd[f"bbox_head.{b}_convs.{n}.{i}.conv.weight"],
                     sd[f"bbox_head.{b}_convs.0.{i}.conv.weight"])
      for b in ("cls", "reg") for n in range(1, len(rtmdet.STRIDES))
      for i in range(rtmdet.STACKED_CONVS))
  return dataclasses.replace(
      size, depthwise=depthwise, head_depthwise=head_dw, share_conv=share,
      num_classes=int(sd["bbox_head.rtm_cls.0.weight"].shape[0]))


# --- The name table ----------------------------------------------------------------------------


def torch_name(collection: str, path: tuple[str, ...]) -> str:
  """Flax variable path -> MMDetection key.

  ("params", ("bbox_head", "cls_convs_0_1", "conv", "kernel")) -> "bbox_head.cls_convs.0.1.conv.
  weight"; every `_<digits>` of a module name is an index.
  """
  modules = [re.sub(r"_(\d+)", r".\1", p) for p in path[:-1]]
  return ".".join(modules + [conversion.LEAF_NAMES[(collection, path[-1])]])


@functools.lru_cache(maxsize=16)
def abstract_variables(arch: rtmdet.RTMDetArch):
  """Shape/dtype tree of the Flax RTMDet of `arch` (no compile)."""
  model = rtmdet.build(arch, "float32")
  return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3),
                                                                            jnp.float32))


def _shared_copies(sd, arch: rtmdet.RTMDetArch) -> set[str]:
  """Keys of the per-level copies of level 0's head convs (share_conv), verified equal."""
  if not arch.share_conv:
    return set()
  keys = set()
  for b in ("cls", "reg"):
    for n in range(1, len(rtmdet.STRIDES)):
      for i in range(rtmdet.STACKED_CONVS):
        key = f"bbox_head.{b}_convs.{n}.{i}.conv.weight"
        if key in sd and not np.array_equal(sd[key], sd[f"bbox_head.{b}_convs.0.{i}.conv.weight"]):
          raise ConvertError(f"share_conv, but {key} differs from level 0's")
        keys.add(key)
  return keys


def to_variables(sd: Mapping[str, np.ndarray], arch: rtmdet.RTMDetArch,
                 classes_kept: tuple[int, ...] | None = None) -> dict:
  """MMDetection state dict -> {"params", "batch_stats"} numpy float32 trees of `arch`.

  `classes_kept`: rows of `rtm_cls` to keep (arch.num_classes of them); all when None.
  Raises ConvertError naming the keys that matched nothing and the ones missing.
  """
  used, missing, out = _shared_copies(sd, arch), [], {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_variables(arch))[0]:
    names = tuple(p.key for p in path)
    key = torch_name(names[0], names[1:])
    if key not in sd:
      missing.append(key)
      continue
    used.add(key)
    value = np.asarray(sd[key], np.float32)
    if classes_kept is not None and re.match(r"bbox_head\.rtm_cls\.\d+\.", key):
      value = value[list(classes_kept)]
    if value.ndim == 4:  # OIHW -> HWIO (depthwise: (C, 1, k, k) -> (k, k, 1, C))
      value = value.transpose(2, 3, 1, 0)
    if value.shape != tuple(leaf.shape):
      raise ConvertError(f"{key} has shape {value.shape} after conversion, the model needs "
                         f"{tuple(leaf.shape)}")
    node = out
    for part in names[:-1]:
      node = node.setdefault(part, {})
    node[names[-1]] = np.ascontiguousarray(value)
  unused = [k for k in sd if k not in used]
  if missing or unused:
    raise ConvertError(f"unknown layout for an RTMDet-{arch.size}: keys matching nothing: "
                       f"{_short(unused) or 'none'}; missing: "
                       f"{_short(missing) or 'none'}")
  return out


# --- Whole files --------------------------------------------------------------------------------


def state_dict_of(obj: Any) -> dict[str, np.ndarray]:
  """The model weights of a loaded MMDetection checkpoint: `state_dict` (the EMA weights of the
  published files), without `ema_*` buffers (an mmcv 1.x EMA's, which MMDetection ignores)."""
  sd = conversion.extract_state_dict(obj)
  return {k: v for k, v in sd.items() if not k.startswith("ema_")}


def load_pth(src: str | os.PathLike, verify_hash: bool = True,
             settings: rtmdet.TestSettings | None = None) -> tuple[dict, DetectorMeta]:
  """Reads and converts an RTMDet .pth in memory -> (variables, DetectorMeta).

  `settings` replaces the test settings of the file's published config (person: score 0.05,
  nms_pre 1000, IoU 0.6, 100 boxes; COCO: 0.001, 30000, 0.65, 300; nano at 320, else 640).
  Raises ConvertError (one line, naming the file) or pth.PthError.
  """
  src = pathlib.Path(src)
  if verify_hash and src.is_file():
    try:
      conversion.verify_name_hash(src, DETECTOR_NAME)
    except ConvertError as e:
      raise ConvertError(f"{src}: {e}") from None
  obj = pth.load(src)
  try:
    sd = state_dict_of(obj)
    if not is_detector_state_dict(sd):
      raise ConvertError(f"{describe_state_dict(sd)}, not an RTMDet detector")
    arch = infer_arch(sd)
    n_file = arch.num_classes
    kept = (PERSON_CLASS,) if n_file > 1 else tuple(range(n_file))
    arch = dataclasses.replace(arch, num_classes=len(kept))
    variables = to_variables(sd, arch, kept if n_file > 1 else None)
  except ConvertError as e:
    raise ConvertError(f"{src}: {e}") from None
  settings = settings or rtmdet.default_settings(arch, n_file)
  meta = DetectorMeta(arch=arch, settings=settings, num_file_classes=n_file, classes_kept=kept,
                      source=src.name)
  return variables, meta


def convert(src, dst, verify_hash: bool = True,
            settings: rtmdet.TestSettings | None = None) -> DetectorMeta:
  """Converts the RTMDet .pth `src` into the saved detector `dst`; nothing left on failure."""
  variables, meta = load_pth(src, verify_hash, settings)
  dst = pathlib.Path(dst)
  if dst.exists() and not saved_model.is_saved_model(dst) and not (
      dst.is_dir() and not any(dst.iterdir())):
    raise ConvertError(f"{dst} exists and is not a saved model; refusing to overwrite it")
  saved_model.save_model_atomic(dst, variables, meta)
  return meta


def read_meta(path: str | os.PathLike) -> DetectorMeta:
  """The saved detector's meta.json; a pose model or anything else is refused in one line."""
  file = pathlib.Path(path) / saved_model.META_FILE
  if not file.is_file():
    raise ValueError(f"{path}: not a saved model (no {saved_model.META_FILE})")
  return DetectorMeta.from_json(file.read_text(), str(path))


def load_detector(path: str | os.PathLike) -> tuple[dict, DetectorMeta]:
  """(variables as numpy float32 trees, DetectorMeta) of the saved detector at `path`."""
  meta = read_meta(path)
  return saved_model.restore_variables(path), meta
