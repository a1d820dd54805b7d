"""Training checkpoints of a workdir: an orbax CheckpointManager of the TrainState.

  WORKDIR/checkpoints/<step>/state/   the TrainState (older checkpoints may also hold data_iter/,
                                      no longer read: the data stream is rebuilt at the step)
  WORKDIR/broken_checkpoints/<step>/  steps that failed to restore, moved aside

Checkpoints are written asynchronously. A step directory only appears once its commit is
complete, so a run killed at any moment resumes from the last complete one. Retention keeps the
latest `keep` steps plus the best one by the evaluation metric (orbax `BestN(reverse=False)`
keeps the *highest* value; docs/ecosystem.md §3). The state is replicated and restored into the
shardings of the state it is given, so a checkpoint written by N processes restores on any
number of processes and devices (docs/training.md, "Topology").
"""
from __future__ import annotations

import os
import pathlib
from typing import Mapping

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from sbpose_jax.training import state as ts

CHECKPOINT_DIR = "checkpoints"
BROKEN_DIR = "broken_checkpoints"


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

