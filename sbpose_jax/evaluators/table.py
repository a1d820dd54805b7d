"""The printed table of an evaluation: the published columns, aligned."""
from __future__ import annotations

from sbpose_jax.evaluators.registry import EVALUATORS


def format_table(metrics: dict[str, float], columns=None) -> str:
  """Two aligned lines (header, values) for `columns`.

  Args:
    metrics: output of `compute()`.
    columns: an evaluation type (its columns), a list of keys, or (label, key) pairs;
      None prints every metric.
  """
  note, percent = "", False
  if isinstance(columns, str):
    kind = EVALUATORS[columns]
    note, percent, columns = kind.notes, kind.percent, kind.columns
  columns = [(c, c) if isinstance(c, str) else tuple(c) for c in (columns or metrics)]
  cells = []
  for label, key in columns:
    v = metrics.get(key, float("nan"))
    text = f"{v:.1f}" if percent else f"{v:.3f}"
    width = max(len(label), len(text))
    cells.append((label.rjust(width), text.rjust(width)))
  lines = [" | ".join(c[0] for c in cells), " | ".join(c[1] for c in cells)]
  return "\n".join(lines + ([f"note: {note}"] if note else []))
