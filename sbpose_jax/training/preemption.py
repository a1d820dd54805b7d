"""Stop requests: a preemption ends a run at a step every process reaches, with its checkpoint.

Spot GPUs, preemptible TPUs and batch schedulers stop a job with SIGTERM and a grace period
(usually 30 s) before SIGKILL. `Preemption` turns that into an orderly end:

* one process (no jax.distributed): a SIGTERM handler sets a flag that the loop reads at the end
  of each step;
* several processes, with JAX's preemption service (jax.distributed; `jax_enable_preemption_service`
  is on by default): JAX's runtime owns SIGTERM (its notifier forwards the notice to every
  process through the coordination service), and `multihost_utils.reached_preemption_sync_point`
  (called at the end of every step on every process) becomes true at the same step everywhere:
  the step after the furthest one any process had reached when the notice came, so no process
  saves a step another did not reach;
* several processes without that service: the flag, agreed (any process) by an all-gather at
  each regular checkpoint step.

The loop then checkpoints that step, waits for the write, and raises `Preempted` (the command
prints its one line and exits with status 75). From the moment the stop is decided, a second
SIGTERM, or the grace period (`config.preemption_grace_s`, counted from the first SIGTERM where
this process saw it) running out, ends the process at once with one line and status 143 (as a
SIGTERM kill): the checkpoint being written is abandoned (its tmp directory is deleted by the
next run) and a re-run resumes from the last complete one, as after `kill -9`.
"""
from __future__ import annotations

import multiprocessing
import os
import pathlib
import signal
import sys
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from sbpose_jax.training.checkpoints import CHECKPOINT_DIR

EXIT_PREEMPTED = 75   # sysexits.h EX_TEMPFAIL: stopped, to be run again (the same command)
EXIT_KILLED = 143     # 128 + SIGTERM: what a shell reports for a process a SIGTERM ended


class Preempted(Exception):
  """The run stopped on a preemption notice after checkpointing a step; the message says which."""
  exit_code = EXIT_PREEMPTED

  def __init__(self, step: int, how: str):
    self.step = step
    super().__init__(f"preempted ({how}) at step {step}: its checkpoint is written; re-running "
                     f"the same command resumes from step {step}")


def complete_checkpoint_step(workdir: pathlib.Path) -> int | None:
  """The newest complete checkpoint step, by listing (no orbax: safe in a signal handler)."""
  directory = workdir / CHECKPOINT_DIR
  try:
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
  except OSError:
    return None
  return max(steps) if steps else None


def _sync_manager():
  """JAX's preemption sync manager of a multi-process run, or None (one process, or disabled)."""
  if jax.process_count() == 1:
    return None
  try:
    from jax._src import distributed  # why: JAX names its state only here (multihost_utils too)
  except ImportError:
    return None
  return getattr(getattr(distributed, "global_state", None), "preemption_sync_manager", None)


class Preemption:
  """Context manager for one training run; `stop_requested(step, ...)` at the end of each step."""

  def __init__(self, workdir: str | os.PathLike, grace_s: float = 25.0):
    self.workdir = pathlib.Path(workdir)
    self.grace_s = float(grace_s)
    self.mode = "off"
    self._signalled_at = None     # monotonic time of the first SIGTERM this process saw
    self._stop_step = None        # the step being checkpointed, once the stop is decided
    self._previous = None
    self._installed = False
    self._timer = None
    self._written = False         # the stop step's checkpoint is complete: exit 75 follows

  # --------------------------------------------------------------------------- set-up

  def __enter__(self) -> "Preemption":
    main = threading.current_thread() is threading.main_thread()
    if _sync_manager() is not None:
      self.mode = "sync"          # JAX's runtime holds SIGTERM until the stop is decided
    elif main:
      self.mode = "flag" if jax.process_count() == 1 else "flag_agreed"
      self._install()
    return self

  def __exit__(self, *exc) -> None:
    if self._timer is not None:
      self._timer.cancel()
      self._timer = None
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous if self._previous is not None
                    else signal.SIG_DFL)
      self._installed = False

  def _install(self) -> None:
    if self._installed or threading.current_thread() is not threading.main_thread():
      return
    self._previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, self._on_sigterm)
    self._installed = True

  # ------------------------------------------------------------------------- signals

  @property
  def signalled(self) -> bool:
    return self._signalled_at is not None

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    if self._written:   # nothing left to lose: the run is ending with its line and 75
      return
    if self._signalled_at is None:
      self._signalled_at = time.monotonic()
      self._arm_timer()
      return
    self._give_up("a second SIGTERM arrived")

  def _arm_timer(self) -> None:
    if self._timer is not None:
      return
    start = self._signalled_at if self._signalled_at is not None else time.monotonic()
    remaining = max(0.0, self.grace_s - (time.monotonic() - start))
    self._timer = threading.Timer(remaining, self._give_up,
                                  args=(f"the grace period of {self.grace_s:g} s ran out",))
    self._timer.daemon = True
    self._timer.start()

  def _give_up(self, why: str) -> None:
    """The kill-safe path: one line, the data workers stopped, exit 143 at once."""
    resume = complete_checkpoint_step(self.workdir)
    what = (f"before the checkpoint of step {self._stop_step} was complete"
            if self._stop_step is not None else "before this run reached a step to stop at")
    then = (f"re-running the same command resumes from step {resume}" if resume is not None
            else "no checkpoint was written yet, so re-running the same command starts over")
    try:
      sys.stderr.write(f"preempted: {why} {what}; stopped without it; {then}\n")
      sys.stderr.flush()
      sys.stdout.flush()
      for child in multiprocessing.active_children():   # grain workers ignore SIGTERM
        child.kill()
    finally:
      os._exit(EXIT_KILLED)

  # ---------------------------------------------------------------------- the decision

  def starting_at(self, step: int) -> None:
    """Reports the step the run starts from, as early as it is known: JAX's sync protocol
    drops a notice that comes before any process has reported a step."""
    if self.mode == "sync":
      multihost_utils.reached_preemption_sync_point(step)

  def stop_requested(self, step: int, checkpoint_step: bool) -> bool:
    """Whether every process stops after `step` (call it on every process at every step).

    `checkpoint_step`: whether `step` is a regular checkpoint step (the same on every process);
    the only steps where processes without JAX's preemption service agree.
    """
    if self.mode == "sync":
      stop = bool(multihost_utils.reached_preemption_sync_point(step))
    elif self.mode == "flag":
      stop = self.signalled
    elif self.mode == "flag_agreed" and checkpoint_step:
      flags = multihost_utils.process_allgather(np.array([int(self.signalled)], np.int32))
      stop = bool(np.any(flags))
    else:
      stop = False
    if stop:
      self._stop_step = step
      if self._signalled_at is None:   # sync: JAX's handler saw the first SIGTERM, if any
        self._signalled_at = time.monotonic()
      self._install()            # from now on a SIGTERM gives up (sync: ours from now on)
      self._arm_timer()
    return stop

  def checkpoint_written(self) -> None:
    """The stop step's checkpoint is complete: the grace period no longer matters."""
    self._written = True
    if self._timer is not None:
      self._timer.cancel()
      self._timer = None

  @property
  def how(self) -> str:
    return "the preemption notice" if self.mode == "sync" else "SIGTERM"
