"""Load a config by name or path and apply command-line overrides.

`load("coco_res50", ["--config.optim.lr=1e-3"])` imports `sbpose_jax.configs.coco_res50` (the
named configs ship with the package), calls its `get_config()`, applies the overrides and
returns a locked ConfigDict, so that a mistyped key raises instead of silently adding a field.
A path to a `.py` file loads that file instead; it extends the named ones with
`from sbpose_jax.configs import common`.
"""
from __future__ import annotations

import ast
import importlib
import importlib.resources
import importlib.util
import json
import logging
import pathlib
import sys
from typing import Sequence

import ml_collections

from sbpose_jax.eval_entries import eval_config  # noqa: F401  (the commands' one import)
from sbpose_jax.sizes import check_sizes, network_output_wh  # noqa: F401

CONFIG_PACKAGE = "sbpose_jax.configs"


def names() -> list[str]:
  """The named configs (files of sbpose_jax/configs without a leading underscore)."""
  files = importlib.resources.files(CONFIG_PACKAGE).iterdir()
  return sorted(f.name[:-3] for f in files
                if f.name.endswith(".py") and not f.name.startswith("_"))


def _load_module(name_or_path: str):
  path = pathlib.Path(name_or_path)
  if path.suffix == ".py" and path.exists():
    # A user's file may import its neighbours (e.g. its own base config).
    if str(path.parent) not in sys.path:
      sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"sbpose_user_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  if name_or_path not in names():
    raise ValueError(f"unknown config {name_or_path!r}; known configs: {', '.join(names())}")
  return importlib.import_module(f"{CONFIG_PACKAGE}.{name_or_path}")


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
  try:
    with node.unlocked():
      node[parts[-1]] = value
  except TypeError:
    raise ValueError(f"--config.{key}={value!r}: expected {_type_name(old)} (like "
                     f"{old!r}), got {type(value).__name__}") from None


def _type_name(value) -> str:
  if isinstance(value, tuple):
    return f"a tuple of {len(value)}" if value else "a tuple"
  return {bool: "True or False", int: "an integer", float: "a number", str: "a string"}.get(
      type(value), type(value).__name__)


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


def load(name_or_path: str, overrides: Sequence[str] = (),
         base: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """The config with `overrides` applied and its dependent sizes derived (`derive_sizes`).

  `base`: a config already made (`for_model`) instead of the one `name_or_path` names.
  """
  cfg = _load_module(name_or_path).get_config() if base is None else base
  cfg.lock()
  parsed = parse_overrides(overrides)
  for key, value in parsed:
    apply_override(cfg, key, value)
  for note in derive_sizes(cfg, {key for key, _ in parsed}):
    logging.getLogger("sbpose_jax").info(note)
  return cfg


def derive_sizes(cfg: ml_collections.ConfigDict, overridden: set[str]) -> list[str]:
  """Keeps data.heatmap_size and data.sigma consistent with an overridden data.input_size.

  When `data.input_size` is overridden and `data.heatmap_size` is not, the heatmap size becomes
  the network's output size and, unless also overridden, sigma scales with the heatmap height
  (2 at 64 px -> 3 at 96 px, as the published 384x288 configs). Returns one note per derived
  field. `check_sizes` then refuses sizes that training cannot use.
  """
  if cfg.get("task", "pose") != "pose":
    return []   # a detector's data.input_size is one side (S x S), nothing derives from it
  d = cfg.data
  notes = []
  input_wh = tuple(int(v) for v in d.input_size)
  if len(input_wh) != 2 or min(input_wh) <= 0:
    raise ValueError(f"data.input_size must be two positive sizes (W, H), got {d.input_size}")
  expected = network_output_wh(input_wh, cfg.model.num_deconv_layers)
  if ("data.input_size" in overridden and "data.heatmap_size" not in overridden
      and tuple(d.heatmap_size) != expected):
    old_h = int(d.heatmap_size[1])
    d.heatmap_size = expected
    notes.append(f"data.heatmap_size = {expected} (derived from data.input_size {input_wh})")
    if "data.sigma" not in overridden:
      # The Gaussian patch is 6 sigma + 1 pixels wide: 3 sigma stays an integer.
      d.sigma = max(1, round(3 * float(d.sigma) * expected[1] / old_h)) / 3
      notes.append(f"data.sigma = {d.sigma:.4g} (scaled with the heatmap height; override "
                   "--config.data.sigma to choose another)")
  return notes


# ------------------------------------------------------------- the config that goes with a model

def explicit_test_keys(overrides: Sequence[str]) -> dict[str, str]:
  """{TestSettings field: "--config.KEY"} of the test settings `overrides` set explicitly."""
  from sbpose_jax.weights.meta import TEST_KEYS  # why: JAX-free; kept next to its one use
  keys = {key for key, _ in parse_overrides(overrides)}
  return {field: f"--config.{key}" for field, key in TEST_KEYS.items() if key in keys}


def _overlay(cfg: ml_collections.ConfigDict, saved, prefix: str = "") -> None:
  """Sets the leaves of `saved` (a config.json dict) that `cfg` has; tuples stay tuples."""
  for key, value in saved.items():
    if key not in cfg:
      continue
    if key == "evals" and not prefix:
      cfg.evals = ml_collections.ConfigDict(value)
    elif isinstance(cfg[key], ml_collections.ConfigDict) and isinstance(value, dict):
      _overlay(cfg[key], value, f"{prefix}{key}.")
    else:
      old = cfg[key]
      cfg[key] = tuple(value) if isinstance(old, tuple) and isinstance(value, list) else value


def _workdir_config(checkpoint: pathlib.Path) -> pathlib.Path | None:
  for folder in (checkpoint, checkpoint.parent):
    if checkpoint.is_dir() and (folder / "config.json").is_file():
      return folder / "config.json"
  return None


def config_for_dataset(dataset: str) -> str:
  """The named config of a dataset's joints: `<dataset>_res50`, else the first one found."""
  import importlib as il  # why: kept next to its one use
  preferred = f"{dataset}_res50"
  if preferred in names():
    return preferred
  for name in names():
    if il.import_module(f"{CONFIG_PACKAGE}.{name}").get_config().data.dataset == dataset:
      return name
  return "common"


def for_model(name_or_path: str | None, overrides: Sequence[str], checkpoint,
              dataset: str | None = None) -> ml_collections.ConfigDict:
  """`--config NAME` with its overrides; without one, the config that goes with the model:
  its training workdir's config.json, else the named config of its dataset (`dataset`, the
  model's). The model's own test settings replace the config's later
  (`api.apply_model_settings`): this config supplies the rest (data paths, tracking, ...)."""
  if name_or_path:
    return load(name_or_path, overrides)
  log = logging.getLogger("sbpose_jax")
  saved = _workdir_config(pathlib.Path(checkpoint))
  if saved is not None:
    data = json.loads(saved.read_text())
    base_name = data.get("name") if data.get("name") in names() else "common"
    base = _load_module(base_name).get_config()
    _overlay(base, data)
    log.info(f"no --config: using {saved} (the model's training config)")
    return load(base_name, overrides, base=base)
  name = config_for_dataset(dataset or "coco")
  log.info(f"no --config: using config {name} (dataset {dataset}) beside the model's own "
           "test settings")
  return load(name, overrides)
