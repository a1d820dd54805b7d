"""The `sbpose-<command>` console scripts ([project.scripts] in pyproject.toml).

`sbpose-evaluate ARGS` runs what `python -m sbpose_jax.evaluate ARGS` runs. A console script
exits with the value its function returns, while some commands' `main` return what they made
(metrics, paths) for callers in Python; so each entry point here returns the exit status: the
command's own when it returns one, else 0 (an error raises SystemExit with its status).
"""
from __future__ import annotations


def _status(result) -> int:
  return result if isinstance(result, int) and not isinstance(result, bool) else 0


# why (each function's import): a script imports only its own command, so `--help` is quick.

def train() -> int:
  from sbpose_jax.commands.train import main  # why: see above
  return _status(main())


def evaluate() -> int:
  from sbpose_jax.commands.evaluate import main  # why: see above
  return _status(main())


def predict() -> int:
  from sbpose_jax.commands.predict import main  # why: see above
  return _status(main())


def track() -> int:
  from sbpose_jax.commands.track import main  # why: see above
  return _status(main())


def export() -> int:
  from sbpose_jax.commands.export import main  # why: see above
  return _status(main())


def pack() -> int:
  from sbpose_jax.commands.pack import main  # why: see above
  return _status(main())


def convert() -> int:
  from sbpose_jax.commands.convert import main  # why: see above
  return _status(main())


def synthesize() -> int:
  from sbpose_jax.commands.synthesize import main  # why: see above
  return _status(main())
