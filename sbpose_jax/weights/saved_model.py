"""A saved model (a converted or trained network): the one record of its architecture.

A saved model is a directory:
  <path>/variables/   orbax checkpoint of {"params", "batch_stats"} (float32)
  <path>/meta.json    ModelMeta: architecture, the colour order the weights expect, provenance

`ModelMeta` (weights/meta.py, JAX-free) is the record of the architecture; `build_model(meta)`
makes the network. Training workdirs
(model_best / model_last / training checkpoints) are `workdir.py`'s business.
"""
from __future__ import annotations

import os
import pathlib
import shutil
from typing import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from sbpose_jax import keypoints
from sbpose_jax import models
from sbpose_jax.weights.meta import ARCHITECTURE, META_FILE, ModelMeta  # noqa: F401  (re-exported)

VARIABLES_DIR = "variables"


# ------------------------------------------------------------------------------- building

def build_model(meta: ModelMeta, dtype: str = "float32", deconv_impl: str = "transpose"):
  """The network of `meta` at compute `dtype` (a PoseResNet; a ResNet if backbone_only).

  float32 means float32 throughout: convolutions run at 'highest' precision, so GPUs do not
  silently use TF32 (which can move an argmax; docs/checkpoints.md §5.3). bfloat16 is the fast
  setting. `deconv_impl` computes the same function either way (models.pose_resnet.Deconv).
  """
  precision = "highest" if str(dtype) == "float32" else None
  if meta.backbone_only:
    return models.ResNet(depth=meta.depth, style=meta.style, width=meta.width)
  return models.build(dict(meta.architecture(), dtype=dtype, deconv_impl=deconv_impl),
                      meta.num_joints, precision=precision)


def random_variables(meta: ModelMeta, input_hw=(64, 48), bias: float = 0.0,
                     seed: int = 0) -> dict:
  """Random {"params", "batch_stats"} of `meta`'s network, made without compiling its init.

  For benchmarks and tests that need a model to run, not a trained one: kernels normal with
  variance 1/fan-in, BatchNorm statistics 0 and 1, every scale 1 and every bias `bias` (a
  positive one lifts the heatmap maxima above the score thresholds). `input_hw` only sizes
  the abstract init. Deterministic in `seed`.
  """
  shapes = jax.eval_shape(build_model(meta).init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, *input_hw, 3), np.float32))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "batch_stats" in name:
      return (np.ones if "var" in name else np.zeros)(s.shape, np.float32)
    if name.endswith("['scale']"):
      return np.ones(s.shape, np.float32)
    if name.endswith("['bias']"):
      return np.full(s.shape, bias, np.float32)
    return (rng.normal(size=s.shape) * np.sqrt(1.0 / np.prod(s.shape[:-1]))).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


# ------------------------------------------------------------------------------ fit checks

def check_fits(meta: ModelMeta, dataset: str, where) -> None:
  """Raises ValueError unless the model at `where` predicts the joints of `dataset`."""
  info = keypoints.get(dataset)
  if meta.backbone_only or meta.num_joints == 0:
    raise ValueError(f"{where} is a backbone without a pose head; it cannot be evaluated")
  if meta.num_joints != info.num_joints:
    raise ValueError(
        f"{where} predicts {meta.num_joints} joints but dataset {dataset!r} has "
        f"{info.num_joints}; use a checkpoint trained on {dataset} (the model's meta.json "
        f"says dataset={meta.dataset or 'unknown'!r})")


def check_matches_config(meta: ModelMeta, config) -> None:
  """Raises ValueError when `meta`'s architecture contradicts config.model / config.data."""
  wanted = dict(depth=config.model.depth, width=config.model.width)
  if not meta.backbone_only:
    wanted.update({f: config.model[f] for f in ARCHITECTURE if f != "style"})
    wanted.update(num_joints=keypoints.get(config.data.dataset).num_joints)
  for field, value in wanted.items():
    value = tuple(value) if isinstance(value, (list, tuple)) else value
    got = getattr(meta, field)
    if got != value:
      where = "data.dataset" if field == "num_joints" else f"model.{field}"
      raise ValueError(f"the checkpoint has {field}={got} but config {config.name} implies "
                       f"{value} ({where})")


# -------------------------------------------------------------------------- save and load

def save_model(path: str | os.PathLike, variables: Mapping, meta: ModelMeta) -> None:
  """Writes `variables` ({"params", "batch_stats"}) and `meta` to the new directory `path`.

  `save_model_atomic` replaces an existing model.
  """
  path = pathlib.Path(path).absolute()
  tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / VARIABLES_DIR, tree)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    (path / META_FILE).write_text(meta.to_json())


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def save_model_atomic(dst: str | os.PathLike, variables: Mapping, meta: ModelMeta) -> None:
  """save_model to a temporary sibling, then swapped in: readers see the old or the new model.

  Every process calls it (multi-host: barriers; process 0 renames). Nothing is left at `dst`
  or beside it when writing fails.
  """
  dst = pathlib.Path(dst).absolute()
  tmp = dst.with_name(f".{dst.name}.tmp")
  old = dst.with_name(f".{dst.name}.old")
  main = jax.process_index() == 0
  if main:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
  _barrier(f"save_model_start_{dst.name}")
  try:
    save_model(tmp, variables, meta)
    _barrier(f"save_model_written_{dst.name}")
    if main:
      shutil.rmtree(old, ignore_errors=True)
      if dst.exists():
        dst.rename(old)
      tmp.rename(dst)
  finally:
    if main:
      shutil.rmtree(tmp, ignore_errors=True)
      shutil.rmtree(old, ignore_errors=True)
  _barrier(f"save_model_done_{dst.name}")


def is_saved_model(path: str | os.PathLike) -> bool:
  path = pathlib.Path(path)
  return (path / META_FILE).is_file() and (path / VARIABLES_DIR).is_dir()


def read_meta(path: str | os.PathLike) -> ModelMeta:
  """The saved model's meta.json only (cheap: no variables are read)."""
  path = pathlib.Path(path) / META_FILE
  return ModelMeta.from_json(path.read_text(), str(path))


def _metadata_tree(ckptr, directory: pathlib.Path):
  md = ckptr.metadata(directory)
  md = getattr(md, "item_metadata", md)  # orbax >= 0.11 wraps the tree in StepMetadata
  return getattr(md, "tree", md)


def load_model(path: str | os.PathLike) -> tuple[dict, ModelMeta]:
  """(variables as numpy float32 trees, meta) of the saved model at `path`.

  `workdir.load_model` also accepts a training workdir.
  """
  directory = pathlib.Path(path).absolute()
  if not is_saved_model(directory):
    raise ValueError(f"{path}: not a saved model (no {META_FILE} + {VARIABLES_DIR}/)")
  meta = read_meta(directory)
  return restore_variables(directory), meta


def restore_variables(path: str | os.PathLike) -> dict:
  """The `variables/` of a saved model (pose or detector) as numpy trees, on the host."""
  directory = pathlib.Path(path).absolute()
  with ocp.StandardCheckpointer() as ckptr:
    tree = _metadata_tree(ckptr, directory / VARIABLES_DIR)
    # A numpy target restores on the host whatever devices/sharding the saver had.
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    return dict(ckptr.restore(directory / VARIABLES_DIR, target))
