"""A training workdir: its layout, its config, training checkpoints and the models it keeps.

A workdir holds
  config.json        the run's config; another config is refused (`check_config`)
  .lock              flock of the run that writes it (`WorkdirLock`)
  checkpoints/<step>/state/   orbax CheckpointManager of the TrainState (older checkpoints may
                     also hold data_iter/, no longer read: the data stream is rebuilt at the step)
  broken_checkpoints/<step>/  steps that failed to restore, moved aside (`restore_newest`)
  best.json          {"metric", "value", "step"} of `model_best`
  model_best/, model_last/   saved models (saved_model.py) for evaluate/predict

Checkpoints are written asynchronously. A step directory only appears once its commit is
complete, so a run killed at any moment resumes from the last complete one. Retention keeps the
latest `keep` steps plus the best one by the evaluation metric (orbax `BestN(reverse=False)` keeps
the *highest* value; docs/ecosystem.md §3).

`load_model(path)` / `read_meta(path)` accept a saved model or a workdir (its model_best, else
model_last, else its latest training checkpoint): what evaluate and predict load.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import pathlib
import socket
import time
from typing import Any, Mapping

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from sbpose_jax.weights import saved_model
from sbpose_jax.training import state as ts

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
BEST_FILE = "best.json"
MODEL_BEST = "model_best"
MODEL_LAST = "model_last"
LOCK_FILE = ".lock"
BROKEN_DIR = "broken_checkpoints"
# Fields that may change when a run resumes: they steer how the rest of the run is executed,
# scheduled and observed, not what the saved state means. The optimizer's state (Adam moments,
# step count) holds no learning rate, so the schedule (optim.*, epochs) may change; the data
# stream is a pure function of the step (resume rebuilds it at its position), so the worker
# count may change, and skipping unreadable images only changes batches that would fail.
OPERATIONAL_KEYS = ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "max_steps",
                    "epochs", "optim", "data.num_workers", "data.root", "data.skip_bad_images",
                    "data.val_ann", "data.val_images", "data.det_file", "data.use_gt_bbox",
                    "data.det_score_thr", "data.gt_mat_file", "data.val_gt_dir", "test",
                    "evals", "eval_at_start", "init_checkpoint")
# Why the other fields may not change under saved checkpoints (first matching prefix wins).
REFUSAL_REASONS = (("model", "the saved parameters are of this network"),
                   ("batch_size_per_device", "the data stream and the step size are per batch"),
                   ("bn_group_size", "the BatchNorm statistics are per group"),
                   ("seed", "the data order and augmentation are drawn from it"),
                   ("synthetic", "the training images would change"),
                   ("data", "the training samples would change"),
                   ("name", "it names another run"))


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


def config_differences(old: Mapping, new: Mapping, operational: bool = False) -> list[str]:
  """Keys (a.b.c) whose values differ between two config dicts: the others than
  OPERATIONAL_KEYS, or (`operational=True`) only those."""
  a, b = _flatten(old), _flatten(json.loads(json.dumps(dict(new))))
  keys = sorted(set(a) | set(b))
  return [k for k in keys if _is_operational(k) == operational and a.get(k, "<absent>") != b.get(
      k, "<absent>")]


def refusal_reason(key: str) -> str:
  for prefix, reason in REFUSAL_REASONS:
    if key == prefix or key.startswith(prefix + "."):
      return reason
  return "it changes what the checkpoints mean"


def _has_checkpoints(workdir: pathlib.Path) -> bool:
  ckpt_dir = workdir / CHECKPOINT_DIR
  return ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir())


def check_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> list[str]:
  """Stores the config in the workdir; refuses a workdir that holds another config's run.

  Fields in OPERATIONAL_KEYS may change between the runs of a workdir: config.json then takes
  the new values, and each change is returned as one line ("optim.lr: 0.002 -> 0.001") for the
  run to log.

  Raises:
    ValueError: naming the differing fields and why they may not change, when the workdir has
      checkpoints and its config.json differs from `config` outside OPERATIONAL_KEYS (without
      checkpoints the new config replaces it), or when it has checkpoints but no config.json.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / CONFIG_FILE
  new = json.loads(config_to_json(config))
  changes = []
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except ValueError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); is {workdir} a training "
                       "workdir?") from None
    diff = config_differences(old, new)
    flat_old, flat_new = _flatten(old), _flatten(new)
    if diff and _has_checkpoints(workdir):
      shown = "; ".join(f"{k}: {flat_old.get(k, '<absent>')!r} -> "
                        f"{flat_new.get(k, '<absent>')!r} ({refusal_reason(k)})"
                        for k in diff[:4])
      raise ValueError(
          f"workdir {workdir} holds a run of another config (config {old.get('name')!r}), "
          f"which may not change under its checkpoints: {shown}{' ...' if len(diff) > 4 else ''}"
          ". Use another --workdir, or delete this one to start over.")
    if not diff:
      changes = [f"{k}: {flat_old.get(k, '<absent>')!r} -> {flat_new.get(k, '<absent>')!r}"
                 for k in config_differences(old, new, operational=True)]
      if not changes:
        return []
    # Else a run that never checkpointed (e.g. stopped by a bad path): nothing to mix.
  elif (workdir / CHECKPOINT_DIR).exists() and any((workdir / CHECKPOINT_DIR).iterdir()):
    raise ValueError(f"workdir {workdir} has checkpoints but no {CONFIG_FILE}: refusing to mix "
                     "runs. Use another --workdir.")
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(config_to_json(config))
    os.replace(tmp, path)
  return changes


# ---------------------------------------------------------------------------- checkpoints

class TrainCheckpoints:
  """orbax CheckpointManager for the TrainState (and optionally a grain iterator), latest N +
  best by metric."""

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

  def save(self, step: int, state: ts.TrainState, data_iter=None,
           metrics: Mapping[str, float] | None = None) -> None:
    """Starts an async save of `state` (and the iterator's position, read now) at `step`."""
    items = dict(state=ocp.args.StandardSave(state))
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    if metrics is not None and self.metric and self.metric not in metrics:
      metrics = None  # BestN cannot rank a checkpoint without its metric
    self.manager.save(step, args=ocp.args.Composite(**items),
                      metrics=dict(metrics) if metrics is not None else None, force=True)

  def restore(self, state: ts.TrainState, data_iter=None, step: int | None = None
              ) -> ts.TrainState:
    """Restores into the structure and shardings of `state`; `data_iter` is set in place."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    items = dict(state=ocp.args.StandardRestore(abstract))
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def restore_newest(self, state: ts.TrainState, log=print
                     ) -> tuple[ts.TrainState | None, int | None]:
    """Restores the newest checkpoint that restores; moves the newer, damaged ones aside.

    A step whose files are missing or damaged (state/, its manifest, _CHECKPOINT_METADATA, ...)
    is reported in one line through `log` (its step and the error naming the file) and moved to
    WORKDIR/broken_checkpoints/<step>/ (kept for a post-mortem), and the one before is tried.
    Returns (state, step), or (None, None) when the workdir has no checkpoint.

    Multi-host: every process tries the same steps in the same order, and a step counts as
    restored only when it restored on every process (they agree through an all-gather), so all
    resume from the same step; process 0 alone moves the damaged steps, and the others re-list
    the steps after a barrier that follows the moves.

    Raises:
      ValueError: when no checkpoint restores (then nothing is moved: a failure of every step
        is a mismatch of code or config, not damage); the message names the newest step's error.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    failures = []
    for step in steps:
      restored, error = None, None
      try:
        restored = self.restore(state, None, step)
      except Exception as e:
        # orbax, tensorstore and json raise many types for one cause: unreadable files.
        error = e
      if not _on_every_process(error is None):
        failures.append((step, error or RuntimeError("another process could not restore it")))
        continue
      if failures:
        if jax.process_index() == 0:
          for bad, bad_error in failures:
            where = self._move_aside(bad)
            log(f"checkpoint step {bad} cannot be restored ({_first_line(bad_error)}); moved to "
                f"{where}, resuming from step {step}")
        _barrier("sbpose_jax:damaged_checkpoints_moved")
        self.manager.reload()
      return restored, step
    if failures:
      step, error = failures[0]
      raise ValueError(f"no checkpoint in {self.directory} can be restored (newest: step {step}:"
                       f" {_first_line(error)}); if the config or code changed, use another "
                       "--workdir")
    return None, None

  def _move_aside(self, step: int) -> pathlib.Path:
    """Moves step to broken_checkpoints/ (process 0 only: one mover, no race)."""
    src = self.directory / str(step)
    dest_dir = self.directory.parent / BROKEN_DIR
    dest = dest_dir / str(step)
    n = 1
    while dest.exists():
      dest, n = dest_dir / f"{step}.{n}", n + 1
    if src.exists():
      dest_dir.mkdir(parents=True, exist_ok=True)
      os.replace(src, dest)
    return dest

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _on_every_process(flag: bool) -> bool:
  """Whether `flag` holds on every process (an all-gather; no collective on one process)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.all(multihost_utils.process_allgather(np.array([int(flag)], np.int32))))


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class WorkdirLock:
  """One writer per workdir: an exclusive `flock` on WORKDIR/.lock, held while the run lives.

  The operating system drops the lock when the process ends, however it ends (kill -9
  included), so there is nothing to clean up; the file only says who holds it (host, pid,
  start time). Only process 0 of a multi-host run takes it: every process of one run writes the
  same workdir, and a second run is refused by its own process 0. On NFS, Linux implements flock
  with POSIX byte-range locks, which the server arbitrates between hosts; a filesystem without
  locks (e.g. Lustre mounted without `flock`) gets one warning and no lock.
  """

  def __init__(self, workdir: str | os.PathLike, log=print):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._log = log
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    if jax.process_index() != 0:
      return self
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
      os.close(fd)
      raise ValueError(f"workdir {self.path.parent} is in use by {holder}; wait for that run "
                       "to end (or stop it), or use another --workdir") from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        os.close(fd)
        raise
      self._log(f"warning: {self.path}: this filesystem has no file locks ({e.strerror}); "
                "nothing stops a second run on this workdir")
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"host {socket.gethostname()} pid {os.getpid()} (since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n").encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.close(self._fd)  # releases the lock; the file stays (removing it would race)
      self._fd = None


def latest_step(workdir: str | os.PathLike) -> int | None:
  """The step of the latest complete training checkpoint, or None."""
  directory = (pathlib.Path(workdir) / CHECKPOINT_DIR).absolute()
  if not directory.is_dir():
    return None
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True)) as manager:
    return manager.latest_step()


def latest_variables(workdir: str | os.PathLike) -> tuple[dict, int] | None:
  """{"params", "batch_stats"} (numpy) of the latest training checkpoint, and its step.

  Needs no optimizer or model: the tree comes from the checkpoint's metadata. None when the
  workdir has no checkpoint.
  """
  step = latest_step(workdir)
  if step is None:
    return None
  path = (pathlib.Path(workdir) / CHECKPOINT_DIR).absolute() / str(step) / "state"
  with ocp.PyTreeCheckpointer() as ckptr:
    # Numpy leaves: no target state, whatever devices the saver had.
    meta = ckptr.metadata(path)
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return {k: restored[k] for k in ("params", "batch_stats")}, int(step)


# ------------------------------------------------------------------ the models a run keeps

def model_meta(config, step: int, source: str = "") -> saved_model.ModelMeta:
  """The ModelMeta of `config`'s model (ConfigDict or config.json dict) at training `step`."""
  return saved_model.ModelMeta.from_config(
      config, step=int(step), source=source or f"sbpose_jax.train {config['name']} step {step}")


def read_best(workdir: str | os.PathLike) -> dict | None:
  """best.json: {"metric", "value", "step"} of model_best, or None."""
  path = pathlib.Path(workdir) / BEST_FILE
  return json.loads(path.read_text()) if path.exists() else None


def _write_best(workdir: pathlib.Path, metric: str, value: float, step: int) -> None:
  if jax.process_index() != 0:
    return
  path = workdir / BEST_FILE
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps({"metric": metric, "value": float(value), "step": int(step)}) + "\n")
  os.replace(tmp, path)


def save_if_best(workdir: str | os.PathLike, metric: str, score: float, variables: Mapping,
                 meta: saved_model.ModelMeta) -> bool:
  """Replaces model_best (and best.json) when `score` beats the recorded best (or re-does its
  step); every process calls it. Returns whether it saved."""
  workdir = pathlib.Path(workdir)
  best = read_best(workdir)
  if not math.isfinite(score) or not (best is None or score > best["value"] or (
      best["step"] == meta.step)):
    return False
  saved_model.save_model_atomic(workdir / MODEL_BEST, variables, meta)
  _write_best(workdir, metric, score, meta.step)
  return True


def save_last(workdir: str | os.PathLike, variables: Mapping,
              meta: saved_model.ModelMeta) -> None:
  """Replaces model_last; every process calls it."""
  saved_model.save_model_atomic(pathlib.Path(workdir) / MODEL_LAST, variables, meta)


def last_step(workdir: str | os.PathLike) -> int | None:
  """The training step of model_last, or None without one."""
  path = pathlib.Path(workdir) / MODEL_LAST
  return saved_model.read_meta(path).step if saved_model.is_saved_model(path) else None


# --------------------------------------------------------- a saved model or a workdir's model

def _model_dir(path: pathlib.Path) -> pathlib.Path | None:
  """The saved model at `path`, or the workdir `path`'s model_best, else model_last."""
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such saved model or workdir")
  for candidate in (path, path / MODEL_BEST, path / MODEL_LAST):
    if saved_model.is_saved_model(candidate):
      return candidate
  return None


def _checkpoint_meta(path: pathlib.Path, step: int) -> saved_model.ModelMeta | None:
  config_file = path / CONFIG_FILE
  if not config_file.exists():
    return None
  cfg = json.loads(config_file.read_text())
  return model_meta(cfg, step, f"sbpose_jax.train {cfg['name']} step {step} (training "
                               "checkpoint)")


def _no_model(path) -> ValueError:
  return ValueError(f"{path}: neither a saved model ({saved_model.META_FILE} + "
                    f"{saved_model.VARIABLES_DIR}/) nor a training workdir holding "
                    f"{MODEL_BEST}, {MODEL_LAST} or a training checkpoint")


def read_meta(path: str | os.PathLike) -> saved_model.ModelMeta:
  """The ModelMeta `load_model(path)` would return, without reading any variables."""
  path = pathlib.Path(path)
  directory = _model_dir(path)
  if directory is not None:
    return saved_model.read_meta(directory)
  step = latest_step(path)
  meta = _checkpoint_meta(path, step) if step is not None else None
  if meta is None:
    raise _no_model(path)
  return meta


def load_model(path: str | os.PathLike) -> tuple[dict, saved_model.ModelMeta]:
  """(variables, meta) of a saved model, or of a training workdir's model_best, else model_last,
  else (a run still in progress) its latest training checkpoint (meta from config.json)."""
  path = pathlib.Path(path)
  directory = _model_dir(path)
  if directory is not None:
    return saved_model.load_model(directory)
  found = latest_variables(path)
  meta = _checkpoint_meta(path, found[1]) if found is not None else None
  if meta is None:
    raise _no_model(path)
  return found[0], meta
