"""The input and heatmap sizes of a config, read once into a typed value.

The configs give sizes width first, as the reference configs do: `data.input_size = (W, H)`,
`data.heatmap_size = (W, H)`. Code that needs them takes a `Sizes` (`Sizes.of(config.data)`)
instead of reading and reordering the config fields itself.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Network input and output sizes in pixels, (W, H)."""
  input_wh: tuple[int, int]
  heatmap_wh: tuple[int, int]

  def __post_init__(self):
    for name in ("input_wh", "heatmap_wh"):
      value = tuple(int(v) for v in getattr(self, name))
      if len(value) != 2 or min(value) <= 0:
        raise ValueError(f"{name} must be two positive sizes (W, H), got {value}")
      object.__setattr__(self, name, value)

  @classmethod
  def of(cls, data) -> "Sizes":
    """From a config's `data` section (input_size, heatmap_size)."""
    return cls(tuple(data.input_size), tuple(data.heatmap_size))

  @property
  def input_hw(self) -> tuple[int, int]:
    return self.input_wh[::-1]

  @property
  def aspect_ratio(self) -> float:
    """Input W / H as a Python float (float64: what the reference's box -> scale divides by)."""
    return self.input_wh[0] / self.input_wh[1]
