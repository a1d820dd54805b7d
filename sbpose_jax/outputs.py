"""Output files that are never half written: write beside, then rename (JAX-free).

Every file a command hands the user (predictions.json, PNGs, tracked json, mp4) is written to a
temporary sibling `.<name>.part<suffix>` and renamed over `<name>` when complete, so a reader
(or a run killed with -9) sees either the old file or the new one, never a part of one; a
killed run leaves at most the `.part` file, which the next run overwrites.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np


def part_path(path) -> pathlib.Path:
  """The temporary sibling a file is written to before `finish` renames it."""
  path = pathlib.Path(path)
  return path.with_name(f".{path.stem}.part{path.suffix}")


def finish(path) -> pathlib.Path:
  """Renames `part_path(path)` over `path` (atomic on one filesystem); returns `path`."""
  path = pathlib.Path(path)
  os.replace(part_path(path), path)
  return path


def write_bytes(path, data: bytes) -> pathlib.Path:
  path = pathlib.Path(path)
  tmp = part_path(path)
  try:
    tmp.write_bytes(data)
    return finish(path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_json(path, data: Any, **dump_kw) -> pathlib.Path:
  return write_bytes(path, json.dumps(data, **dump_kw).encode())


def write_png(path, bgr: np.ndarray) -> pathlib.Path:
  """A BGR picture as a PNG, atomically (OSError naming the file when it cannot be written)."""
  import cv2  # why: OpenCV only when a picture is written (export --help stays light)
  path = pathlib.Path(path)
  ok, buf = cv2.imencode(path.suffix or ".png", bgr)
  if not ok:
    raise OSError(f"cannot encode picture {path}")
  return write_bytes(path, buf.tobytes())
