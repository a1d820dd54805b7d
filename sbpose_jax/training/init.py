"""Where training starts: a random init, with the backbone (or a whole model) from a file.

`config.init_checkpoint` names a torchvision ImageNet ResNet .pth (the backbone init of every
MMPose 0.x seed config, docs/reference.md §7.1), a pose model .pth, a saved model or a
training workdir. Users download the torchvision files once; nothing is fetched at run time.
"""
from __future__ import annotations

import os
import pathlib
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sbpose_jax.weights import conversion
from sbpose_jax import models
from sbpose_jax.weights import saved_model
from sbpose_jax.training import state as ts
from sbpose_jax.training import workdir as workdir_lib
from sbpose_jax.sizes import Sizes
from sbpose_jax.weights.torchvision import missing_init_message

def load_init(path: str | os.PathLike, style: str = "pytorch"
              ) -> tuple[dict, saved_model.ModelMeta]:
  """(variables, meta) of a .pth of any layout, a saved model or a training workdir."""
  path = pathlib.Path(path)
  if path.is_dir():
    return workdir_lib.load_model(path)
  return conversion.load_pth(path, style=style)


def merge_backbone(variables: Mapping, backbone: Mapping) -> dict:
  """Returns `variables` with the entries in `backbone` replaced (shapes checked).

  Raises ValueError naming the entry the model lacks or whose shapes differ.
  """
  out = {col: dict(tree) for col, tree in variables.items()}
  for col, tree in backbone.items():
    for name, sub in tree.items():
      if name not in out.get(col, {}):
        raise ValueError(f"init checkpoint has {col}/{name}, which the model lacks")
      want = jax.tree.map(np.shape, out[col][name])
      got = jax.tree.map(np.shape, sub)
      if want != got:
        raise ValueError(f"init checkpoint {col}/{name} shapes {got} differ from the model's "
                         f"{want} (another ResNet depth?)")
      out[col][name] = jax.tree.map(lambda a, b: jnp.asarray(a, b.dtype), sub, out[col][name])
  return out


def initial_variables(config, model, seed: int) -> dict:
  """Random init, with the backbone (or a whole pose model) from `config.init_checkpoint`.

  A torchvision/backbone-only file replaces the backbone; a full pose model (an MMPose .pth or
  a saved model, e.g. PoseTrack18's COCO init) replaces everything whose shapes agree, the head
  only when it has the same joint count.
  """
  path = str(config.init_checkpoint)
  if path and not pathlib.Path(path).exists():
    raise FileNotFoundError(missing_init_message(path, int(config.model.depth)))
  variables = jax.device_get(ts.init_variables(model, seed, Sizes.of(config.data).input_hw))
  if not path:
    return variables
  loaded, meta = load_init(path, style=config.model.style)
  if meta.depth != int(config.model.depth):
    raise ValueError(f"init_checkpoint {path} is a ResNet-{meta.depth}, config {config.name} "
                     f"wants model.depth={config.model.depth}")
  keep_head = not meta.backbone_only and meta.num_joints == model.num_joints
  subset = {col: {k: v for k, v in tree.items() if keep_head or not models.is_head_key(k)}
            for col, tree in loaded.items()}
  return merge_backbone(variables, subset)
