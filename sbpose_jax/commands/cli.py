"""What every command line shares: `--debug`, one line per error, exit codes, quiet logs.

`run(command, parser, argv)` parses the arguments and calls `command(args, overrides)`. An error
the user can cause (a bad config value, a missing or unreadable file, a full or read-only disk,
bad data) ends the command with ONE line on stderr, `error: <what and where> ...`, and a
non-zero exit status; the traceback is printed only with `--debug` (or the environment variable
SBPOSE_DEBUG=1, its older alias). Ctrl-C ends with status 130 and no traceback; SIGTERM is
turned into the same interruption (`Terminated`, a KeyboardInterrupt: the commands write what
they have done) and ends with status 143 (128 + the signal's number).

Exit statuses: 0 done, 1 an unexpected error (a bug: re-run with --debug and report it), 2 a
user error, 3 training diverged, 75 training preempted after checkpointing its step (SIGTERM
during training; re-run the same command), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM;
in training: a second SIGTERM or the grace period ran out before the preemption checkpoint was
complete, and a re-run resumes from the last complete one).

JAX-free: importing this module must stay cheap, so that `--help` answers at once.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Callable, Sequence

from sbpose_jax import interrupts

EXIT_BUG, EXIT_USER, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 2, 3, 130
EXIT_PREEMPTED, EXIT_KILLED = 75, 143   # training/preemption.py ends with these
LOGGER = "sbpose_jax"


class Terminated(KeyboardInterrupt):
  """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt; `signum` its number."""

  def __init__(self, *args, signum: int = signal.SIGTERM):
    super().__init__(*args)
    self.signum = int(signum)


def _raise_terminated(signum, frame) -> None:
  del frame
  raise Terminated(f"terminated by signal {signum}", signum=signum)


def exit_status(interrupt: KeyboardInterrupt) -> int:
  """130 for Ctrl-C, 128 + the signal's number for a `Terminated`."""
  return 128 + interrupt.signum if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED


class UserError(Exception):
  """An error the user can fix; its message is the one line shown (base of our own errors)."""
  exit_code = EXIT_USER


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--debug", action="store_true",
                      help="show tracebacks (also: environment variable SBPOSE_DEBUG=1)")


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
  return bool(getattr(args, "debug", False)) or os.environ.get("SBPOSE_DEBUG", "") not in (
      "", "0")


def setup_logging(debug: bool = False) -> logging.Logger:
  """Package messages (warnings, notes) as plain `warning: ...` lines on stderr; quiets the
  INFO chatter of absl/orbax/grain unless debugging."""
  log = logging.getLogger(LOGGER)
  if not any(getattr(h, "_sbpose", False) for h in log.handlers):
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname_lower)s: %(message)s"))
    handler.addFilter(_lower_level)
    handler._sbpose = True
    log.addHandler(handler)
    log.propagate = False
  log.setLevel(logging.DEBUG if debug else logging.INFO)
  if not debug:
    # onnx_ir's serde warns about every initializer it reads back during an ONNX export.
    for name in ("absl", "orbax", "grain", "asyncio", "jax._src.xla_bridge", "onnx_ir",
                 "jax2onnx", "onnxscript"):
      logging.getLogger(name).setLevel(logging.CRITICAL)
    # Background threads (orbax's async writes) print their own tracebacks through
    # threading.excepthook / sys.excepthook when a save fails, and tensorstore's native
    # threads through sys.unraisablehook (a full disk: hundreds of "Event loop is closed",
    # `_quiet_unraisable`); the failure itself reaches the main thread, which reports it in one
    # line. The main thread's exceptions never get here: `run` catches them.
    sys.excepthook = _quiet_excepthook
    threading.excepthook = _quiet_excepthook
    sys.unraisablehook = _quiet_unraisable
  return log


def _quiet_excepthook(*args) -> None:
  del args


def _quiet_unraisable(unraisable) -> None:
  """Drops tensorstore's `RuntimeError: Event loop is closed` reports, passes on the others.

  When one write of an async checkpoint fails (a full disk), orbax's save ends and closes its
  asyncio loop while tensorstore's other writes are still running; each of them then fails to
  deliver its result to that loop from a native thread, which reports it through
  sys.unraisablehook with no object (a full disk: hundreds of tracebacks). The failure itself
  reaches the main thread, which reports it in one line.
  """
  if (unraisable.object is None and unraisable.exc_type is RuntimeError
      and str(unraisable.exc_value) == "Event loop is closed"):
    return
  sys.__unraisablehook__(unraisable)


class _StderrHandler(logging.StreamHandler):
  """Writes to the sys.stderr of the moment (not the one at set-up: tests and callers swap it)."""

  def __init__(self):
    super().__init__(sys.stderr)

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value


def _lower_level(record: logging.LogRecord) -> bool:
  record.levelname_lower = {"INFO": "note"}.get(record.levelname, record.levelname.lower())
  return True


def _user_error_types() -> tuple[type, ...]:
  types = [UserError, ValueError, FileNotFoundError, OSError]
  pipeline = sys.modules.get("sbpose_jax.data.pipeline")
  if pipeline is not None:
    types.append(pipeline.BadImageError)
  return tuple(types)


_NO_SPACE_HINT = " (free some space, or use another --workdir / --out-dir)"


def describe(error: BaseException) -> str:
  """The one line for `error`: its message; an OSError names its file and reason."""
  if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and (
      error.filename or error.strerror):
    where = f"{error.filename}: " if error.filename else ""
    hint = ""
    if error.errno in (28, 122):       # ENOSPC, EDQUOT
      hint = _NO_SPACE_HINT
    elif error.errno in (13, 30):      # EACCES, EROFS
      hint = " (make it writable, or use another --workdir / --out-dir)"
    return f"cannot write or read {where}{error.strerror or error}{hint}"
  text = str(error).strip() or type(error).__name__
  # Grain and orbax append their own notes and re-raised tracebacks: the first line is ours.
  line = text.splitlines()[0]
  if "No space left on device" in line:  # tensorstore's errors carry the OS's text
    line += _NO_SPACE_HINT
  return line


def _find_user_error(error: BaseException) -> BaseException | None:
  """`error` or the exception it was raised from, if the user can fix it (grain and orbax
  wrap the errors of their workers and threads)."""
  types = _user_error_types()
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, types):
      return error
    error = error.__cause__ or error.__context__
  return None


def run(command: Callable[[argparse.Namespace, list[str]], int | None],
        parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
        allow_overrides: bool = True) -> int:
  """Parses `argv`, runs `command(args, config overrides)`; returns the exit status."""
  if not any("--debug" in a.option_strings for a in parser._actions):
    add_debug_flag(parser)
  args, rest = parser.parse_known_args(argv)
  unknown = [a for a in rest if not (allow_overrides and a.startswith("--config."))]
  if unknown:
    parser.error(f"unrecognised arguments: {' '.join(unknown)}" + (
        " (config overrides look like --config.optim.lr=1e-3)" if allow_overrides else ""))
  debug = debug_enabled(args)
  setup_logging(debug)
  previous = None
  if threading.current_thread() is threading.main_thread():
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    return int(command(args, rest) or 0)
  except KeyboardInterrupt as e:
    if debug:
      raise
    print(str(e) or "interrupted", file=sys.stderr)
    return exit_status(e)
  except SystemExit:
    raise
  except Exception as e:
    # The one place that turns exceptions into a line and an exit status.
    if debug:
      raise
    interrupt = interrupts.interrupt_of(e)     # a signal's exception wrapped by a C function
    if interrupt is not None:
      print(str(interrupt) or "interrupted", file=sys.stderr)
      return exit_status(interrupt)
    found = _find_user_error(e)
    if found is not None:
      print(f"error: {describe(found)}", file=sys.stderr)
      return int(getattr(found, "exit_code", EXIT_USER))
    print(f"error: {type(e).__name__}: {describe(e)} (unexpected: re-run with --debug for the "
          "traceback and report it)", file=sys.stderr)
    return EXIT_BUG
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


def main_exit(command, parser, argv=None) -> None:
  """`sys.exit(run(...))`, for `if __name__ == "__main__":`."""
  sys.exit(run(command, parser, argv))
