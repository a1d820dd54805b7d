"""`ModelMeta`: what a saved pose model is and what input it expects (JAX-free).

The only list of the pose architecture fields and of their defaults: the base config
(sbpose_jax/configs/common.py) takes its `model.*` defaults from
`ModelMeta.default_architecture()`, and `saved_model.build_model(meta)` makes the network.
Plain data: configs import it, so it imports nothing heavier than the joint tables.

`TestSettings` is the model's own test-time record (crop size, decoding, flip, thresholds...):
a saved model is the single source of them, and `resolve_test` is the one rule by which a
loader combines them with what a command line says (docs/api.md, "Test-time settings").
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Mapping

from sbpose_jax import keypoints

META_FILE = "meta.json"

# TestSettings field -> the config key that holds it (configs/common.py).
TEST_KEYS = {"input_size": "data.input_size", "heatmap_size": "data.heatmap_size",
             "padding": "data.padding", "flip": "test.flip",
             "shift_heatmap": "test.shift_heatmap", "decode": "test.decode",
             "blur_kernel": "test.blur_kernel", "vis_thr": "test.vis_thr",
             "oks_thr": "test.oks_thr"}
# Fields a loader cannot change: the network was made for this crop (its heatmap follows).
FIXED_BY_NETWORK = ("input_size", "heatmap_size")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TestSettings:
  """A model's test-time settings, recorded in its meta.json (defaults: configs/common.py).

  input_size, heatmap_size: crop and heatmap (W, H); padding: box enlargement of the crop;
  flip, shift_heatmap: flip test and its one-pixel shift; decode: "default" or "unbiased"
  (DARK) with blur_kernel; vis_thr: joint score counted by the rescoring; oks_thr: OKS-NMS.
  """
  __test__ = False   # not a pytest test class, whatever its name
  input_size: tuple[int, int] = (192, 256)
  heatmap_size: tuple[int, int] = (48, 64)
  padding: float = 1.25
  flip: bool = True
  shift_heatmap: bool = True
  decode: str = "default"
  blur_kernel: int = 11
  vis_thr: float = 0.2
  oks_thr: float = 0.9

  def __post_init__(self):
    for name in ("input_size", "heatmap_size"):
      value = getattr(self, name)
      if (not isinstance(value, (list, tuple)) or len(value) != 2
          or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ValueError(f"{name} must be two positive whole sizes (W, H), got {value!r}")
      object.__setattr__(self, name, (int(value[0]), int(value[1])))
    if self.decode not in ("default", "unbiased"):
      raise ValueError(f"decode must be 'default' or 'unbiased', got {self.decode!r}")
    for name in ("flip", "shift_heatmap"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
    for name in ("padding", "vis_thr", "oks_thr"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
      object.__setattr__(self, name, float(value))
    if self.padding <= 0:
      raise ValueError(f"padding must be positive, got {self.padding}")
    if isinstance(self.blur_kernel, bool) or not isinstance(self.blur_kernel, int) or (
        self.blur_kernel < 1 or self.blur_kernel % 2 == 0):
      raise ValueError(f"blur_kernel must be a positive odd integer, got {self.blur_kernel!r}")

  @classmethod
  def from_config(cls, config: Mapping) -> "TestSettings":
    """The settings a config (ConfigDict or config.json dict) evaluates with."""
    return cls(**{f: _get(config, key) for f, key in TEST_KEYS.items()})

  def to_dict(self) -> dict[str, Any]:
    return {f: (list(v) if isinstance(v, tuple) else v)
            for f, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, data: Mapping, where: str = META_FILE) -> "TestSettings":
    if not isinstance(data, Mapping):
      raise ValueError(f"{where}: 'test' must be an object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    try:
      return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()
                    if k in known})
    except (ValueError, TypeError) as e:
      raise ValueError(f"{where}: test settings: {e}") from None

  def describe(self, fields: Iterable[str] | None = None) -> str:
    """`input_size 48x64, decode unbiased, ...` of `fields` (default all)."""
    return ", ".join(f"{f} {show(getattr(self, f))}" for f in (fields or TEST_KEYS))


def show(value) -> str:
  """A setting as a message shows it: (W, H) as WxH."""
  if isinstance(value, tuple) and len(value) == 2:
    return f"{value[0]}x{value[1]}"
  return str(value)


def _get(config: Mapping, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def resolve_test(recorded: TestSettings | None, config: Mapping | None,
                 explicit: Mapping[str, str] = (), where: str = "the model",
                 changeable: Iterable[str] | None = None
                 ) -> tuple[TestSettings, list[str]]:
  """The test settings a loader runs with, and the notes to print about them.

  The model's record wins over a config's values; a value the user gave explicitly (a
  `--config.test.decode=...` or a flag: `explicit` maps the TestSettings field to how it was
  given, e.g. {"decode": "--decode"}) replaces the recorded one with a note
  (`decode unbiased -> default (--decode)`), unless the field cannot change (FIXED_BY_NETWORK,
  or not in `changeable`: an exported file fixes more), which is refused in one ValueError.
  A model with no record (saved before models kept one) takes the config's values, said in a
  note; with no config either, the defaults.

  Args:
    recorded: the model's record (ModelMeta.test, or an export's), or None.
    config: a ConfigDict / dict holding the TEST_KEYS, or None.
    explicit: field -> the flag or key that gave it (its value is the config's).
    where: how messages name the model.
    changeable: the fields that may be overridden (default: all but FIXED_BY_NETWORK).
  """
  explicit = dict(explicit)
  unknown = sorted(set(explicit) - set(TEST_KEYS))
  if unknown:
    raise ValueError(f"unknown test settings {unknown}; known: {sorted(TEST_KEYS)}")
  wanted = TestSettings.from_config(config) if config is not None else None
  if recorded is None:
    if wanted is None:
      return TestSettings(), [f"{where} records no test settings: using the defaults "
                              f"({TestSettings().describe(('input_size', 'decode'))})"]
    return wanted, [f"{where} records no test settings (saved by an older version): using "
                    f"the config's ({wanted.describe(('input_size', 'decode', 'flip'))})"]
  changeable = set(TEST_KEYS) - set(FIXED_BY_NETWORK) if changeable is None else set(
      changeable)
  changes, notes = {}, []
  for field, flag in explicit.items():
    old, new = getattr(recorded, field), getattr(wanted, field) if wanted is not None else None
    if new is None or old == new:
      continue
    if field not in changeable:
      why = ("the network was made for it" if field in FIXED_BY_NETWORK
             else "it is part of the exported function")
      raise ValueError(f"{flag} {show(new)}: {where} runs at {field} {show(old)} ({why}); "
                       f"drop {flag}, or use a model made for {show(new)}")
    changes[field] = new
    notes.append(f"{field} {show(old)} -> {show(new)} ({flag})")
  ignored = [] if wanted is None else [
      f for f in TEST_KEYS if f not in explicit and getattr(wanted, f) != getattr(recorded, f)]
  if ignored:
    notes.append(f"using {where}'s own test settings ("
                 + ", ".join(f"{f} {show(getattr(recorded, f))}" for f in ignored)
                 + ") over the config's ("
                 + ", ".join(f"{show(getattr(wanted, f))}" for f in ignored)
                 + "); --config.test.KEY=VALUE overrides one")
  return dataclasses.replace(recorded, **changes), notes


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelMeta:
  """What a saved model is and what input it expects.

  Architecture (the `config.model` fields of the same names; `ARCHITECTURE`):
    depth: ResNet depth, 18/34/50/101/152.
    style: "pytorch" (stride on the 3x3 conv) or "caffe" (stride on the first 1x1 conv).
    width: backbone base width; 64 in every published model.
    num_deconv_layers, deconv_filters, deconv_kernels, final_conv_kernel: the head.
  Besides:
    num_joints: K; 0 for `backbone_only` models (converted torchvision ImageNet ResNets).
    colour_order: channel order of the images the weights were trained on: "bgr" for the MSRA
      PoseResNet files, "rgb" for MMPose and torchvision.
    dataset: key of keypoints.DATASETS, when known. source: provenance, free text.
    step: the training step of a trained model (0 for a converted one).
    test: its test-time settings (TestSettings); None in meta.json files written before
      models recorded them (loaders then take a config's, and say so).
  """
  num_joints: int
  depth: int = 50
  style: str = "pytorch"
  width: int = 64
  num_deconv_layers: int = 3
  deconv_filters: tuple[int, ...] = (256, 256, 256)
  deconv_kernels: tuple[int, ...] = (4, 4, 4)
  final_conv_kernel: int = 1
  colour_order: str = "rgb"
  dataset: str = ""
  source: str = ""
  step: int = 0
  backbone_only: bool = False
  test: TestSettings | None = None

  def __post_init__(self):
    # JSON gives lists; keep tuples so metas compare equal and stay hashable.
    object.__setattr__(self, "deconv_filters", tuple(int(f) for f in self.deconv_filters))
    object.__setattr__(self, "deconv_kernels", tuple(int(k) for k in self.deconv_kernels))
    if self.colour_order not in ("rgb", "bgr"):
      raise ValueError(f"colour_order must be 'rgb' or 'bgr', got {self.colour_order!r}")
    if isinstance(self.test, Mapping):
      object.__setattr__(self, "test", TestSettings.from_dict(self.test))

  def architecture(self) -> dict[str, Any]:
    """The `config.model`-style architecture fields (no dtype / deconv_impl)."""
    return {f: getattr(self, f) for f in ARCHITECTURE}

  @staticmethod
  def default_architecture() -> dict[str, Any]:
    """The architecture fields' defaults: the base config's `model.*` defaults."""
    fields = {f.name: f for f in dataclasses.fields(ModelMeta)}
    return {name: fields[name].default for name in ARCHITECTURE}

  @classmethod
  def from_config(cls, config: Mapping, **fields) -> "ModelMeta":
    """The model a config trains: `config["model"]` architecture, K and colours from `data`,
    and the config's test settings (`TestSettings.from_config`).

    `config` is a ConfigDict or the dict of a workdir's config.json.
    """
    model, data = config["model"], config["data"]
    fields.setdefault("test", TestSettings.from_config(config))
    return cls(**{f: model[f] for f in ARCHITECTURE},
               num_joints=keypoints.get(data["dataset"]).num_joints,
               colour_order=data["colour_order"], dataset=data["dataset"], **fields)

  def to_json(self) -> str:
    data = dataclasses.asdict(self)
    data["test"] = None if self.test is None else self.test.to_dict()
    return json.dumps(data, indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str, where: str = META_FILE) -> "ModelMeta":
    try:
      data = json.loads(text)
    except ValueError as e:
      raise ValueError(f"{where}: not a valid model description ({e})") from None
    if isinstance(data, dict) and data.get("kind") == "detector":
      # A saved detector (weights/rtmdet_conversion.py) where a pose model was expected.
      raise ValueError(f"{where}: an RTMDet person detector "
                       f"(RTMDet-{data.get('arch', {}).get('size', '?')}), not a pose model")
    try:
      known = {f.name for f in dataclasses.fields(cls)}
      if data.get("test") is not None:
        data["test"] = TestSettings.from_dict(data["test"], where)
      return cls(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError, AttributeError) as e:
      raise ValueError(f"{where}: not a valid model description ({e})") from None


# The architecture fields: what `models.build` needs besides K, the compute dtype and form.
ARCHITECTURE = ("depth", "style", "width", "num_deconv_layers", "deconv_filters",
                "deconv_kernels", "final_conv_kernel")
