"""Training: `python -m sbpose_jax.train --config NAME [--workdir W] [--config.a.b=v ...]`.

One jitted `train_step` over a global batch sharded on a ("data",) mesh of every device of every
process, bf16 compute with float32 parameters (config.model.dtype); the loop is training.py.

Re-running the same command resumes from the newest checkpoint of the workdir that restores, so
a run killed at any point ends with the same parameters as an uninterrupted one (on CPU, where
XLA is deterministic). SIGTERM (a preemption) stops every process at one step with a checkpoint
of it, exit status 75. Details on BatchNorm statistics, multi-host runs and topology changes:
docs/training.md; what a user sees on each fault: docs/reliability.md.

This module is the command line only and imports neither JAX nor the model at the top, so
that `--help` answers at once; the loop's names live in `training`.
"""
from __future__ import annotations

import argparse
import os
import sys

from sbpose_jax.commands import cli


# ------------------------------------------------------------------------- command line

def _cluster_detected() -> bool:
  """Whether jax.distributed.initialize() can find its peers by itself (SLURM, Open MPI, TPU)."""
  env = os.environ
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))) > 1:
    return "SLURM_PROCID" in env  # inside `srun`, one task per process
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  return bool(env.get("TPU_WORKER_HOSTNAMES", "").count(",") or env.get(
      "MEGASCALE_COORDINATOR_ADDRESS") or env.get("TPU_PROCESS_ADDRESSES"))


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, mode: str = "auto") -> None:
  """Starts jax.distributed: explicit flags, else auto-detection (or `mode='on'`), else nothing."""
  if mode == "off":
    return
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator-address needs --num-processes and --process-id")
    import jax  # why: --help without JAX
    jax.distributed.initialize(coordinator_address, int(num_processes), int(process_id))
  elif mode == "on" or _cluster_detected():
    import jax  # why: --help without JAX
    jax.distributed.initialize()


def use_compilation_cache(jax) -> None:
  """JAX's persistent compilation cache, so that a re-run (a resume after Ctrl-C or a kill, the
  demo again) loads the compiled step instead of compiling it (docs/benchmarks.md).

  JAX_COMPILATION_CACHE_DIR wins; else $XDG_CACHE_HOME/sbpose_jax/xla (~/.cache/...);
  SBPOSE_COMPILATION_CACHE=0 turns it off. The cached executables are the ones a compile would
  make, so results are unchanged.
  """
  if os.environ.get("SBPOSE_COMPILATION_CACHE", "1") == "0" or os.environ.get(
      "JAX_COMPILATION_CACHE_DIR"):
    return  # off, or JAX reads the variable itself
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  jax.config.update("jax_compilation_cache_dir", os.path.join(base, "sbpose_jax", "xla"))


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m sbpose_jax.train", description=__doc__.split("\n\n")[0],
      epilog="Any --config.a.b=value overrides a config field (e.g. --config.optim.lr=1e-3).")
  p.add_argument("--config", default="demo",
                 help="config name (sbpose_jax/configs/NAME.py) or a path to a config file "
                      "(default: demo)")
  p.add_argument("--workdir", help="run directory (default: runs/<config name>)")
  p.add_argument("--coordinator-address", help="multi-host: host:port of process 0")
  p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
  p.add_argument("--process-id", type=int, help="multi-host: this process's index")
  p.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                 help="auto: initialise jax.distributed on SLURM/Open MPI/Cloud TPU or with "
                      "--coordinator-address; on: always; off: never")
  p.add_argument("--no-progress", action="store_true",
                 help="no progress bar: one line per log step (config.log_every_steps)")
  cli.add_debug_flag(p)
  return p


def _command(args, overrides) -> int:
  try:
    return _train(args, overrides)
  except KeyboardInterrupt as e:
    if str(e):  # training's own message: which step a re-run resumes from
      raise
    raise KeyboardInterrupt("interrupted while starting, before the workdir was read: nothing "
                            "was written; re-running the same command starts (or resumes) "
                            "the run") from None


def _train(args, overrides) -> int:
  # why: imported after argument parsing, so that `--help` and usage errors answer without
  # loading JAX and the model code (4.4 s -> 0.24 s).
  import jax
  from absl import flags

  from sbpose_jax.commands import config as config_lib
  from sbpose_jax import evaluators
  from sbpose_jax.training.loop import TrainingDiverged, train_and_evaluate
  from sbpose_jax.training.preemption import Preempted
  use_compilation_cache(jax)
  init_distributed(args.coordinator_address, args.num_processes, args.process_id,
                   args.distributed)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags (google/grain#1355)
  config = config_lib.load(args.config, overrides)
  workdir = args.workdir or os.path.join("runs", config.name)
  try:
    results = train_and_evaluate(config, workdir, progress=not args.no_progress)
  except TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    return cli.EXIT_DIVERGED
  except Preempted as e:   # SIGTERM or the cluster's notice: a checkpoint of the step is written
    print(str(e), file=sys.stderr, flush=True)
    return e.exit_code
  if jax.process_index() == 0 and results:
    for name, metrics in results.items():
      print(f"{name} ({config.evals[name].type}) at the end of training:")
      print(evaluators.format_table(metrics, config.evals[name].type))
    print(f"models: {os.path.join(workdir, 'model_last')} (and model_best); logs: "
          f"{os.path.join(workdir, 'metrics.jsonl')}, TensorBoard {os.path.join(workdir, 'tb')}")
  return 0


def main(argv=None) -> int:
  """The command line; returns the exit status (cli.py: one line per error, --debug)."""
  return cli.run(_command, _parser(), argv)


if __name__ == "__main__":
  sys.exit(main())
