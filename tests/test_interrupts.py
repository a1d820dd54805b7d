"""Interruptions that never tear outputs apart: the wrapped interrupt is found, signals are held."""
import os
import signal

import pytest

from sbpose_jax import interrupts
from sbpose_jax.commands import cli


def test_interrupt_of_finds_the_interrupt_a_c_function_wrapped():
  inner = cli.Terminated("terminated by signal 15")
  try:
    try:
      raise inner
    except KeyboardInterrupt as e:
      raise SystemError("<built-in function fspath> returned a result with an exception set") \
          from e
  except SystemError as wrapped:
    assert interrupts.interrupt_of(wrapped) is inner
  assert interrupts.interrupt_of(ValueError("x")) is None
  assert interrupts.interrupt_of(None) is None


def test_cli_reports_a_wrapped_sigterm_as_the_interrupt(capsys):
  def command(args, rest):
    try:
      raise cli.Terminated("terminated by signal 15")
    except KeyboardInterrupt as e:
      raise SystemError("returned a result with an exception set") from e
  import argparse
  status = cli.run(command, argparse.ArgumentParser(), [])
  assert status == 143
  assert capsys.readouterr().err.strip() == "terminated by signal 15"


def test_deferred_holds_sigterm_until_the_block_is_done():
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append("handler"))
  try:
    with interrupts.deferred():
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(1000):   # bytecodes: a handler would have run by now
        pass
      seen.append("block done")
    assert seen == ["block done", "handler"]
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_deferred_delivers_the_interrupt_after_the_block():
  done = []
  with pytest.raises(KeyboardInterrupt):
    with interrupts.deferred():
      os.kill(os.getpid(), signal.SIGINT)
      done.append(True)
  assert done == [True]


def test_reraise_with_raises_the_interrupt_with_the_message_or_returns():
  try:
    raise SystemError("wrapped") from cli.Terminated("terminated by signal 15")
  except SystemError as e:
    with pytest.raises(cli.Terminated, match="^interrupted after 3 of 9 images$"):
      interrupts.reraise_with(e, "interrupted after 3 of 9 images")
  assert interrupts.reraise_with(ValueError("x"), "unused") is None
