"""Saved models (a converted or trained network) and, below, training checkpoints.

A saved model is a directory:
  <path>/variables/   orbax checkpoint of {"params", "batch_stats"} (float32)
  <path>/meta.json    ModelMeta: architecture, the colour order the weights expect, provenance
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

# ---------------------------------------------------------------------------------------------
# Saved models: save_model / load_model.
# ---------------------------------------------------------------------------------------------

META_FILE = "meta.json"
VARIABLES_DIR = "variables"
WORKDIR_MODELS = ("model_best", "model_last")  # what training writes with save_model


# The ModelMeta fields that are `config.model` fields too: what `models.build` needs.
MODEL_FIELDS = ("depth", "style", "width", "num_deconv_layers", "deconv_filters",
                "deconv_kernels", "final_conv_kernel")


@dataclasses.dataclass(frozen=True)
class ModelMeta:
  """What a saved model is and what input it expects.

  `backbone_only` models (converted torchvision ImageNet ResNets) have no head: num_joints 0.
  `colour_order` is the channel order of the images the weights were trained on: "bgr" for the
  MSRA PoseResNet files, "rgb" for MMPose and torchvision.
  """
  depth: int
  num_joints: int
  style: str = "pytorch"
  width: int = 64
  num_deconv_layers: int = 3
  deconv_filters: tuple[int, ...] = (256, 256, 256)
  deconv_kernels: tuple[int, ...] = (4, 4, 4)
  final_conv_kernel: int = 1
  colour_order: str = "rgb"
  dataset: str = ""
  source: str = ""
  backbone_only: bool = False

  def __post_init__(self):
    # JSON gives lists; keep tuples so metas compare equal and stay hashable.
    object.__setattr__(self, "deconv_filters", tuple(int(f) for f in self.deconv_filters))
    object.__setattr__(self, "deconv_kernels", tuple(int(k) for k in self.deconv_kernels))
    if self.colour_order not in ("rgb", "bgr"):
      raise ValueError(f"colour_order must be 'rgb' or 'bgr', got {self.colour_order!r}")

  def model_config(self) -> dict[str, Any]:
    """The `config.model`-style fields (without dtype) for `models.build`."""
    return {f: getattr(self, f) for f in MODEL_FIELDS}

  @classmethod
  def from_model_config(cls, model_config, **fields) -> "ModelMeta":
    """The architecture from a `config.model` section (missing fields keep their defaults)."""
    return cls(**{f: model_config[f] for f in MODEL_FIELDS if f in model_config}, **fields)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str, where: str = "meta.json") -> "ModelMeta":
    try:
      data = json.loads(text)
      known = {f.name for f in dataclasses.fields(cls)}
      return cls(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError) as e:
      raise ValueError(f"{where}: not a valid model description ({e})") from None


def save_model(path: str | os.PathLike, variables: dict, meta: ModelMeta) -> None:
  """Writes `variables` ({"params", "batch_stats"}) and `meta` to the directory `path`.

  `path` must not exist yet (write to a temporary name and rename for atomic replacement).
  """
  path = pathlib.Path(path).absolute()
  tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / VARIABLES_DIR, tree)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    (path / META_FILE).write_text(meta.to_json())


def is_saved_model(path: str | os.PathLike) -> bool:
  path = pathlib.Path(path)
  return (path / META_FILE).is_file() and (path / VARIABLES_DIR).is_dir()


def resolve_model_dir(path: str | os.PathLike) -> pathlib.Path:
  """The saved-model directory at `path`, or in the training workdir `path` (best, then last)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such saved model or workdir")
  for candidate in (path, *(path / name for name in WORKDIR_MODELS)):
    if is_saved_model(candidate):
      return candidate
  raise ValueError(f"{path}: neither a saved model (meta.json + variables/) nor a training "
                   f"workdir holding {' or '.join(WORKDIR_MODELS)}")


def _metadata_tree(ckptr, directory: pathlib.Path):
  md = ckptr.metadata(directory)
  md = getattr(md, "item_metadata", md)  # orbax >= 0.11 wraps the tree in StepMetadata
  return getattr(md, "tree", md)


def load_model(path: str | os.PathLike) -> tuple[dict, ModelMeta]:
  """Loads (variables as numpy float32 trees, meta) from a saved model or a training workdir.

  A workdir without model_best / model_last yet (a run still in progress) falls back to its
  latest training checkpoint.
  """
  try:
    directory = resolve_model_dir(path)
  except ValueError:
    from sbpose_jax import train_state  # pylint: disable=import-outside-toplevel
    found = train_state.latest_model(path)
    if found is None:
      raise
    return found
  meta = ModelMeta.from_json((directory / META_FILE).read_text(), str(directory / META_FILE))
  with ocp.StandardCheckpointer() as ckptr:
    tree = _metadata_tree(ckptr, directory.absolute() / VARIABLES_DIR)
    # A numpy target restores on the host whatever devices/sharding the saver had.
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    variables = ckptr.restore(directory.absolute() / VARIABLES_DIR, target)
  return dict(variables), meta
