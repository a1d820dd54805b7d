"""The `sbpose-<command>` console scripts ([project.scripts] in pyproject.toml).

Declared for every command, each resolving to a callable that runs `commands.<command>.main`
and returns an exit status (a console script exits with what its function returns; commands
that return their results to Python callers must still exit 0). tests/test_install_wheel.py
runs one installed script end to end.
"""
from __future__ import annotations

import importlib
import pathlib
import tomllib

import pytest

from sbpose_jax.commands import scripts

REPO = pathlib.Path(__file__).resolve().parent.parent
COMMANDS = ("train", "evaluate", "predict", "track", "export", "pack", "convert", "synthesize")


def _declared() -> dict[str, str]:
  with open(REPO / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]["scripts"]


def test_every_command_is_declared_and_resolves_to_a_callable():
  declared = _declared()
  assert sorted(declared) == sorted(f"sbpose-{c}" for c in COMMANDS)
  for command in COMMANDS:
    module_name, _, attr = declared[f"sbpose-{command}"].partition(":")
    func = getattr(importlib.import_module(module_name), attr)
    assert callable(func), declared[f"sbpose-{command}"]
    assert func is getattr(scripts, command)
    # The command it runs exists and is what `python -m sbpose_jax.<command>` runs.
    main = importlib.import_module(f"sbpose_jax.commands.{command}").main
    assert importlib.import_module(f"sbpose_jax.{command}").main is main


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("returned, status", [
    ({"AP": 0.7}, 0), ([pathlib.Path("a.png")], 0), ((pathlib.Path("t.json"), None), 0),
    (None, 0), (0, 0), (3, 3)])
def test_entry_point_returns_the_exit_status(monkeypatch, command, returned, status):
  module = importlib.import_module(f"sbpose_jax.commands.{command}")
  monkeypatch.setattr(module, "main", lambda argv=None: returned)
  assert getattr(scripts, command)() == status


def test_an_error_keeps_its_status(monkeypatch):
  module = importlib.import_module("sbpose_jax.commands.evaluate")

  def fails(argv=None):
    raise SystemExit(2)
  monkeypatch.setattr(module, "main", fails)
  with pytest.raises(SystemExit) as e:
    scripts.evaluate()
  assert e.value.code == 2


def test_help_answers_through_the_entry_point(monkeypatch, capsys):
  monkeypatch.setattr("sys.argv", ["sbpose-convert", "--help"])
  with pytest.raises(SystemExit) as e:
    scripts.convert()
  assert e.value.code == 0
  assert "usage:" in capsys.readouterr().out
