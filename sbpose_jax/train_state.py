"""Training state and training checkpoints (orbax + the grain iterator), one run per workdir.

A workdir holds
  config.json        the run's config; another config is refused (`check_workdir_config`)
  checkpoints/<step>/{state/, data_iter/process_<i>-of-<n>.json}   orbax CheckpointManager
  best.json          {"metric", "value", "step"} of `model_best`
  model_best/, model_last/   saved models (checkpoint.save_model) for evaluate/predict

Checkpoints are written asynchronously. A step directory only appears once its commit is
complete, so a run killed at any moment resumes from the last complete one. Retention keeps the
latest `keep` steps plus the best one by the evaluation metric (orbax `BestN(reverse=False)` keeps
the *highest* value; ecosystem-notes §3).
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state as flax_train_state
from orbax.checkpoint import checkpoint_managers

from sbpose_jax import checkpoint

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
BEST_FILE = "best.json"
# Fields that may change between the runs of one workdir: they steer how the run is executed
# and observed, not what it computes.
OPERATIONAL_KEYS = ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "max_steps",
                    "data.num_workers", "data.root", "test.batch_size", "evals",
                    "eval_at_start", "init_checkpoint")


class TrainState(flax_train_state.TrainState):
  """Params, Adam state and step (flax TrainState) plus BatchNorm statistics and the run's key."""
  batch_stats: Any = None
  rng: jax.Array = None


@functools.partial(jax.jit, static_argnames=("model", "input_hw"))
def _init(key, *, model, input_hw):
  return model.init(key, jnp.zeros((1, *input_hw, 3), jnp.float32), train=False)


def init_variables(model, seed: int, input_hw: tuple[int, int]) -> dict:
  """Random {"params", "batch_stats"} of `model`, deterministic in `seed`.

  Jitted, with an RBG key: XLA compiles the threefry-based init of a ResNet ~3x slower (48 s
  against 17 s for ResNet-18 on a busy 2-core CPU); the values only need to be reproducible.
  """
  return _init(jax.random.key(seed, impl="rbg"), model=model, input_hw=tuple(input_hw))


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       input_hw: tuple[int, int], variables: Mapping | None = None) -> TrainState:
  """A fresh state; `variables` ({"params", "batch_stats"}) replaces the random init if given."""
  state_rng = jax.random.fold_in(rng, 0)
  if variables is None:
    variables = init_variables(model, 0, input_hw)
  params = variables["params"]
  return TrainState.create(apply_fn=None, params=params, tx=tx,
                           batch_stats=variables.get("batch_stats", {}), rng=state_rng)


# ------------------------------------------------------------------- init checkpoints

TORCHVISION_URL = "https://download.pytorch.org/models/"
# ImageNet V1 weights: the original file names and the re-hosted ones of torchvision >= 0.13.
TORCHVISION_FILES = {18: ("resnet18-5c106cde.pth", "resnet18-f37072fd.pth"),
                     34: ("resnet34-333f7ec4.pth", "resnet34-b627a593.pth"),
                     50: ("resnet50-19c8e357.pth", "resnet50-0676ba61.pth"),
                     101: ("resnet101-5d3b4d8f.pth", "resnet101-63fe2227.pth"),
                     152: ("resnet152-b121ed2d.pth", "resnet152-394f9c45.pth")}


def missing_init_message(path: str, depth: int) -> str:
  names = TORCHVISION_FILES.get(depth)
  where = (f"download the torchvision ImageNet ResNet-{depth} weights, e.g. "
           f"{TORCHVISION_URL}{names[0]} (or the re-hosted {TORCHVISION_URL}{names[1]}), "
           f"and place the file at {path}, or pass --config.init_checkpoint=/path/to/file"
           if names else "pass --config.init_checkpoint=/path/to/a/torchvision/resnet.pth")
  return (f"init_checkpoint {path} not found: {where}. Nothing is downloaded at run time; "
          "--config.init_checkpoint='' trains from a random init.")


def initial_variables(config, model, seed: int) -> dict:
  """Random init, with the backbone (or a whole pose model) from `config.init_checkpoint`.

  A torchvision/backbone-only file replaces the backbone; a full pose model (an MMPose .pth or
  a saved model, e.g. PoseTrack18's COCO init) replaces everything whose shapes agree, the head
  only when it has the same joint count.
  """
  from sbpose_jax import convert  # pylint: disable=import-outside-toplevel
  from sbpose_jax import models  # pylint: disable=import-outside-toplevel
  hw = tuple(int(v) for v in config.data.input_size)[::-1]
  path = str(config.init_checkpoint or "")
  p = pathlib.Path(path)
  if path and not p.exists():
    raise FileNotFoundError(missing_init_message(path, int(config.model.depth)))
  variables = jax.device_get(init_variables(model, seed, hw))
  if not path:
    return variables
  if p.is_dir():
    loaded, meta = checkpoint.load_model(p)
  else:
    loaded, meta = convert.load_pth(p, style=config.model.style)
  if meta.depth != int(config.model.depth):
    raise ValueError(f"init_checkpoint {path} is a ResNet-{meta.depth}, config {config.name} "
                     f"wants model.depth={config.model.depth}")
  keep_head = not meta.backbone_only and meta.num_joints == model.num_joints
  subset = {col: {k: v for k, v in tree.items() if keep_head or not models.is_head_key(k)}
            for col, tree in loaded.items()}
  return convert.merge_backbone(variables, subset)


# ----------------------------------------------------------------------------- workdir config

def config_to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json(indent=1, sort_keys=True)


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _is_operational(key: str) -> bool:
  return any(key == k or key.startswith(k + ".") for k in OPERATIONAL_KEYS)


def config_differences(old: Mapping, new: Mapping) -> list[str]:
  """Keys (a.b.c) whose values differ between two config dicts, operational keys excluded."""
  a, b = _flatten(old), _flatten(json.loads(json.dumps(dict(new))))
  keys = sorted(set(a) | set(b))
  return [k for k in keys if not _is_operational(k) and a.get(k, "<absent>") != b.get(
      k, "<absent>")]


def check_workdir_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
  """Stores the config in a new workdir; refuses a workdir that holds another config's run.

  Raises:
    ValueError: naming the differing fields, when the workdir has checkpoints and its
      config.json differs from `config` outside OPERATIONAL_KEYS (without checkpoints the new
      config replaces it), or when the workdir has checkpoints but no config.json.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / CONFIG_FILE
  new = json.loads(config_to_json(config))
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except ValueError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); is {workdir} a training workdir?") from None
    diff = config_differences(old, new)
    ckpt_dir = workdir / CHECKPOINT_DIR
    has_checkpoints = ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
    if diff and has_checkpoints:
      shown = "; ".join(f"{k}: {_flatten(old).get(k, '<absent>')!r} -> "
                        f"{_flatten(new).get(k, '<absent>')!r}" for k in diff[:8])
      raise ValueError(
          f"workdir {workdir} holds a run of another config (config {old.get('name')!r}; "
          f"differs in {shown}{' ...' if len(diff) > 8 else ''}). Use another --workdir, or "
          "delete this one to start over.")
    if not diff:
      return
    # Else a run that never checkpointed (e.g. stopped by a bad path): nothing to mix.
  elif (workdir / CHECKPOINT_DIR).exists() and any((workdir / CHECKPOINT_DIR).iterdir()):
    raise ValueError(f"workdir {workdir} has checkpoints but no {CONFIG_FILE}: refusing to mix "
                     "runs. Use another --workdir.")
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(config_to_json(config))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- checkpoints

class TrainCheckpoints:
  """orbax CheckpointManager for (TrainState, grain iterator), latest N + best by metric."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 2, metric: str | None = None):
    self.directory = (pathlib.Path(workdir) / CHECKPOINT_DIR).absolute()
    self.metric = metric
    policies = [checkpoint_managers.LatestN(n=max(1, int(keep)))]
    if metric:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[metric], reverse=False, n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=True, cleanup_tmp_directories=True, create=True,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies))
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: TrainState, data_iter=None,
           metrics: Mapping[str, float] | None = None) -> None:
    """Starts an async save of `state` (and the iterator's position, read now) at `step`."""
    items = dict(state=ocp.args.StandardSave(state))
    if data_iter is not None:
      import grain  # pylint: disable=import-outside-toplevel
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    if metrics is not None and self.metric and self.metric not in metrics:
      metrics = None  # BestN cannot rank a checkpoint without its metric
    self.manager.save(step, args=ocp.args.Composite(**items),
                      metrics=dict(metrics) if metrics is not None else None, force=True)

  def restore(self, state: TrainState, data_iter=None, step: int | None = None) -> TrainState:
    """Restores into the structure and shardings of `state`; `data_iter` is set in place."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    items = dict(state=ocp.args.StandardRestore(abstract))
    if data_iter is not None:
      import grain  # pylint: disable=import-outside-toplevel
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def latest_variables(workdir: str | os.PathLike) -> tuple[dict, int] | None:
  """{"params", "batch_stats"} (numpy) of the latest training checkpoint, and its step.

  Needs no optimizer or model: the tree comes from the checkpoint's metadata. None when the
  workdir has no checkpoint. For `checkpoint.load_model`'s workdir fallback.
  """
  directory = (pathlib.Path(workdir) / CHECKPOINT_DIR).absolute()
  if not directory.is_dir():
    return None
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True)) as manager:
    step = manager.latest_step()
    if step is None:
      return None
    path = directory / str(step) / "state"
    with ocp.PyTreeCheckpointer() as ckptr:
      # Numpy leaves: no target state, whatever devices the saver had.
      meta = ckptr.metadata(path)
      tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return {k: restored[k] for k in ("params", "batch_stats")}, int(step)


def latest_model(workdir: str | os.PathLike) -> tuple[dict, checkpoint.ModelMeta] | None:
  """(variables, ModelMeta) of a workdir's latest training checkpoint, meta from config.json.

  For `checkpoint.load_model(workdir)` when neither model_best nor model_last exists yet.
  """
  found = latest_variables(workdir)
  path = pathlib.Path(workdir) / CONFIG_FILE
  if found is None or not path.exists():
    return None
  from sbpose_jax import keypoints  # pylint: disable=import-outside-toplevel
  variables, step = found
  cfg = json.loads(path.read_text())
  m, d = cfg["model"], cfg["data"]
  meta = checkpoint.ModelMeta.from_model_config(
      m, num_joints=keypoints.get(d["dataset"]).num_joints,
      colour_order=d["colour_order"], dataset=d["dataset"],
      source=f"sbpose_jax.train {cfg.get('name')} step {step} (training checkpoint)")
  return variables, meta


def save_model_atomic(dst: pathlib.Path, variables: dict, meta: checkpoint.ModelMeta) -> None:
  """save_model to a fixed temporary name, then swap it in (process 0), with barriers."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  tmp = dst.with_name(f".{dst.name}.tmp")
  old = dst.with_name(f".{dst.name}.old")
  multi = jax.process_count() > 1
  if jax.process_index() == 0:
    shutil.rmtree(tmp, ignore_errors=True)
  if multi:
    multihost_utils.sync_global_devices(f"save_model_start_{dst.name}")
  checkpoint.save_model(tmp, variables, meta)
  if multi:
    multihost_utils.sync_global_devices(f"save_model_written_{dst.name}")
  if jax.process_index() == 0:
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
      dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
  if multi:
    multihost_utils.sync_global_devices(f"save_model_done_{dst.name}")


def model_meta(config, model, step: int) -> checkpoint.ModelMeta:
  return checkpoint.ModelMeta.from_model_config(
      {f: getattr(model, f) for f in checkpoint.MODEL_FIELDS}, num_joints=model.num_joints,
      colour_order=config.data.colour_order, dataset=config.data.dataset,
      source=f"sbpose_jax.train {config.name} step {step}")


def read_best(workdir: str | os.PathLike) -> dict | None:
  path = pathlib.Path(workdir) / BEST_FILE
  return json.loads(path.read_text()) if path.exists() else None


def write_best(workdir: str | os.PathLike, metric: str, value: float, step: int) -> None:
  if jax.process_index() != 0:
    return
  path = pathlib.Path(workdir) / BEST_FILE
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps({"metric": metric, "value": float(value), "step": int(step)}) + "\n")
  os.replace(tmp, path)


def state_variables(state: TrainState) -> dict:
  """{"params", "batch_stats"} of a state, as host numpy arrays (float32)."""
  return flax.core.unfreeze(jax.device_get({"params": state.params,
                                            "batch_stats": state.batch_stats}))
