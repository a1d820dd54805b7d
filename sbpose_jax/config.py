"""Load a config by name or path and apply command-line overrides.

`load("coco_res50", ["--config.optim.lr=1e-3"])` finds `configs/coco_res50.py`, calls its
`get_config()`, applies the overrides and returns a locked ConfigDict, so that a mistyped key
raises instead of silently adding a field.
"""
from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys
from typing import Sequence

import ml_collections

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


def config_path(name_or_path: str) -> pathlib.Path:
  """Resolves a config name (`coco_res50`) or a path to any config file."""
  path = pathlib.Path(name_or_path)
  if path.suffix == ".py" and path.exists():
    return path
  candidate = CONFIG_DIR / f"{name_or_path}.py"
  if candidate.exists():
    return candidate
  known = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
  raise ValueError(f"unknown config {name_or_path!r}; known configs: {', '.join(known)}")


def _load_module(path: pathlib.Path):
  # Config files import their base (`import common`) from configs/ or their own folder.
  for folder in (str(CONFIG_DIR), str(path.parent)):
    if folder not in sys.path:
      sys.path.insert(0, folder)
  spec = importlib.util.spec_from_file_location(f"sbpose_configs.{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string such as a path


def _valid_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys += _valid_keys(v, f"{prefix}{k}.")
    else:
      keys.append(f"{prefix}{k}")
  return keys


def apply_override(cfg: ml_collections.ConfigDict, key: str, value) -> None:
  """Sets `a.b.c = value`; raises a ValueError naming the valid keys on a typo."""
  node = cfg
  parts = key.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      scope = ".".join(parts[:i])
      options = _valid_keys(node, f"{scope}." if scope else "") if isinstance(
          node, ml_collections.ConfigDict) else []
      raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(options)}")
    if i < len(parts) - 1:
      node = node[part]
  old = node[parts[-1]]
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  with node.unlocked():
    node[parts[-1]] = value


def parse_overrides(args: Sequence[str]) -> list[tuple[str, object]]:
  """`["--config.a.b=1", "a.c=x"]` -> [("a.b", 1), ("a.c", "x")]."""
  out = []
  for arg in args:
    text = arg[2:] if arg.startswith("--") else arg
    text = text[len("config."):] if text.startswith("config.") else text
    if "=" not in text:
      raise ValueError(f"override {arg!r} must look like --config.key=value")
    key, value = text.split("=", 1)
    out.append((key, _parse_value(value)))
  return out


def load(name_or_path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  cfg = _load_module(config_path(name_or_path)).get_config()
  cfg.lock()
  for key, value in parse_overrides(overrides):
    apply_override(cfg, key, value)
  return cfg


def eval_config(config: ml_collections.ConfigDict, name: str | None = None
                ) -> tuple[ml_collections.ConfigDict, str]:
  """(config with `evals.<name>.data` applied to `data`, evaluator type). Unlocked copy."""
  names = list(config.evals.keys())
  if not names:
    raise ValueError(f"config {config.name!r} has no evals entry")
  name = name or names[0]
  if name not in config.evals:
    raise ValueError(f"--eval {name!r}: config has evals {names}")
  ecfg = ml_collections.ConfigDict(config.to_dict())
  ecfg.data.update(dict(config.evals[name].get("data", {})))
  return ecfg, config.evals[name].type
