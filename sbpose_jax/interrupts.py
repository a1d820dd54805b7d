"""Interruptions (Ctrl-C; SIGTERM, which the commands raise as `commands.cli.Terminated`) that
never tear a command's outputs apart (JAX-free).

Python runs a signal's handler between two bytecodes of the main thread, so the exception it
raises can surface anywhere, and through a few C functions that call back into Python (seen:
`os.fspath` of a `pathlib.Path`) it comes back wrapped in `SystemError: ... returned a result
with an exception set`, the interrupt its `__cause__`. `interrupt_of` finds it there, and
`deferred` holds the signals while an output and its record are written together.
"""
from __future__ import annotations

import contextlib
import signal
import threading

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupt_of(error: BaseException | None) -> KeyboardInterrupt | None:
  """The KeyboardInterrupt `error` is, or carries in its cause/context chain; None if none."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, KeyboardInterrupt):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def reraise_with(error: BaseException, message: str) -> None:
  """Raises the interrupt `error` is or carries, with `message` as its text (what was written
  before it came); returns when there is none, for the caller to re-raise `error`."""
  interrupt = interrupt_of(error)
  if interrupt is not None:
    interrupt.args = (message,)
    raise interrupt from None


@contextlib.contextmanager
def deferred():
  """Holds SIGINT and SIGTERM for the block (main thread only; elsewhere a no-op) and delivers
  the first one that came, to the handler that was installed, once the block is done."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  caught: list[int] = []
  previous = {}
  for sig in HELD_SIGNALS:
    handler = signal.getsignal(sig)
    if callable(handler):     # SIG_IGN / SIG_DFL / None (set outside Python) are left alone
      previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    if caught:
      previous[caught[0]](caught[0], None)
