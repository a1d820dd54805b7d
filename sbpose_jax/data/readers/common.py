"""Shared pieces of the annotation readers: JSON loading and field checks that name the file.

Every reader raises FileNotFoundError naming a missing file, and ValueError naming the file and
the field for an annotation file of the wrong shape. `load_json` is also what the evaluators use
for ground-truth and results files.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np


def load_json(path, what: str = "annotation file") -> Any:
  """json.load with errors that name the file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} not found: {path}")
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a valid JSON {what} ({e})") from None


def bad_field(path, field: str, problem: str) -> ValueError:
  return ValueError(f"{path}: field {field!r} {problem}")


def get_field(obj: dict, key: str, kind: type, path, where: str = "") -> Any:
  """obj[key], checked to exist and to be a `kind`; errors name `where.key` and the file."""
  name = f"{where}.{key}" if where else key
  if not isinstance(obj, dict) or key not in obj:
    raise bad_field(path, name, "is missing")
  value = obj[key]
  if not isinstance(value, kind) or isinstance(value, bool):
    kinds = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise bad_field(path, name, f"must be {kinds}, got {type(value).__name__}")
  return value


def str_array(values: list) -> np.ndarray:
  """Fixed-width unicode array (never an object array); '<U1' when empty."""
  return np.asarray(values, dtype=str) if len(values) else np.zeros(0, "<U1")


def float_list(obj: dict, key: str, length: int, path, where: str) -> list:
  value = get_field(obj, key, list, path, where)
  if len(value) != length:
    raise bad_field(path, f"{where}.{key}", f"has {len(value)} values, expected {length}")
  return value
