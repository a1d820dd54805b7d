"""`ModelMeta`: what a saved pose model is and what input it expects (JAX-free).

The only list of the pose architecture fields and of their defaults: the base config
(sbpose_jax/configs/common.py) takes its `model.*` defaults from
`ModelMeta.default_architecture()`, and `saved_model.build_model(meta)` makes the network.
Plain data: configs import it, so it imports nothing heavier than the joint tables.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from sbpose_jax import keypoints

META_FILE = "meta.json"


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

  def __post_init__(self):
    # JSON gives lists; keep tuples so metas compare equal and stay hashable.
    object.__setattr__(self, "deconv_filters", tuple(int(f) for f in self.deconv_filters))
    object.__setattr__(self, "deconv_kernels", tuple(int(k) for k in self.deconv_kernels))
    if self.colour_order not in ("rgb", "bgr"):
      raise ValueError(f"colour_order must be 'rgb' or 'bgr', got {self.colour_order!r}")

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
    """The model a config trains: `config["model"]` architecture, K and colours from `data`.

    `config` is a ConfigDict or the dict of a workdir's config.json.
    """
    model, data = config["model"], config["data"]
    return cls(**{f: model[f] for f in ARCHITECTURE},
               num_joints=keypoints.get(data["dataset"]).num_joints,
               colour_order=data["colour_order"], dataset=data["dataset"], **fields)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

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
      return cls(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError) as e:
      raise ValueError(f"{where}: not a valid model description ({e})") from None


# The architecture fields: what `models.build` needs besides K, the compute dtype and form.
ARCHITECTURE = ("depth", "style", "width", "num_deconv_layers", "deconv_filters",
                "deconv_kernels", "final_conv_kernel")
