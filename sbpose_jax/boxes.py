"""Person boxes: the box-file formats that `predict` and `track` read, and box conversions.

A box file is JSON, in one of two formats:

  COCO detection results (what detectors and `evaluate --detector` write):
    [{"image_id": 1, "bbox": [x, y, w, h], "score": 0.98, "category_id": 1}, ...]
    (`file_name` may stand for `image_id`; `category_id` other than 1 is not a person: skipped)
  a dict of boxes per image or frame:
    {"000001.jpg": [[x, y, w, h], [x, y, w, h, score], ...], ...}

The caller says what a key may be (a file name, its stem, a frame number, an image id) by the
`keys` mapping it passes: key -> the row the box belongs to. Every error names the file and the
entry. `evaluate` reads its detection files through `data.readers` (the reference's stricter
rules: every image id must be in the ground truth).
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Hashable, Mapping

import numpy as np

FORMATS_HELP = ("a COCO detection-results list [{\"image_id\": 1, \"bbox\": [x, y, w, h], "
                "\"score\": 0.9}, ...] or a dict {\"name.jpg\": [[x, y, w, h(, score)], ...]}")


def _numbers(entry: Any, where: str) -> list[float]:
  if not isinstance(entry, (list, tuple)) or len(entry) not in (4, 5) or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry):
    raise ValueError(f"{where}: a box must be [x, y, w, h] or [x, y, w, h, score] of numbers, "
                     f"got {entry!r}")
  values = [float(v) for v in entry]
  if not all(math.isfinite(v) for v in values):
    raise ValueError(f"{where}: box {entry!r} holds NaN or inf")
  return values


def read_box_file(path: str | pathlib.Path, keys: Mapping[Hashable, int], what: str = "--boxes"
                  ) -> tuple[dict[int, np.ndarray], int]:
  """Reads a box file; returns ({row: (N, 5) x, y, w, h, score float64}, unmatched entries).

  Args:
    path: the JSON file.
    keys: what an `image_id`, `file_name` or dict key may be -> the row it names.
    what: how messages name the file's role (a flag).
  Raises:
    ValueError / FileNotFoundError: one line naming the file and the entry.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} file not found: {path}")
  try:
    data = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{what} {path}: cannot read JSON ({e})") from None
  rows: dict[int, list[list[float]]] = {}
  unmatched = 0

  def key_row(key) -> int | None:
    for k in (key, str(key), pathlib.PurePath(str(key)).name, pathlib.PurePath(str(key)).stem):
      if k in keys:
        return keys[k]
    if isinstance(key, str) and key.isdigit() and int(key) in keys:
      return keys[int(key)]
    return None

  if isinstance(data, list):
    for i, d in enumerate(data):
      where = f"{what} {path} entry {i}"
      if not isinstance(d, dict) or "bbox" not in d:
        raise ValueError(f"{where}: not an object with a 'bbox'; expected {FORMATS_HELP}")
      if d.get("category_id", 1) != 1:
        continue
      if "image_id" not in d and "file_name" not in d:
        raise ValueError(f"{where}: needs an 'image_id' or a 'file_name'")
      box = _numbers(d["bbox"], where)[:4]
      score = d.get("score", 1.0)
      if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(
          score):
        raise ValueError(f"{where}: 'score' must be a finite number, got {score!r}")
      row = key_row(d["file_name"] if "file_name" in d else d["image_id"])
      if row is None:
        unmatched += 1
        continue
      rows.setdefault(row, []).append(box + [float(score)])
  elif isinstance(data, dict):
    for key, boxes in data.items():
      where = f"{what} {path} [{key!r}]"
      if not isinstance(boxes, list):
        raise ValueError(f"{where}: expected a list of boxes, got {type(boxes).__name__}")
      row = key_row(key)
      if row is None:
        unmatched += len(boxes)
        continue
      for j, b in enumerate(boxes):
        values = _numbers(b, f"{where} box {j}")
        rows.setdefault(row, []).append(values[:4] + [values[4] if len(values) == 5 else 1.0])
  else:
    raise ValueError(f"{what} {path}: expected {FORMATS_HELP}")
  return {r: np.asarray(v, np.float64).reshape(-1, 5) for r, v in rows.items()}, unmatched


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
  """(..., 4) x, y, w, h -> x1, y1, x2, y2."""
  boxes = np.asarray(boxes)
  return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:4]], -1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
  """(..., 4) x1, y1, x2, y2 -> x, y, w, h."""
  boxes = np.asarray(boxes)
  return np.concatenate([boxes[..., :2], boxes[..., 2:4] - boxes[..., :2]], -1)
