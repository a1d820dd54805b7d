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


# The backbone's output stride (ResNet: 32; SAME padding rounds up).
BACKBONE_STRIDE = 32


def network_output_wh(input_wh, num_deconv_layers: int) -> tuple[int, int]:
  """Heatmap (W, H) of a PoseResNet: the backbone's stride 32 (SAME padding: ceil), then x2 per
  deconvolution."""
  return tuple(-(-int(v) // BACKBONE_STRIDE) * 2 ** int(num_deconv_layers) for v in input_wh)


def check_sizes(cfg) -> None:
  """Training's size rules, checked before anything is compiled.

  Raises:
    ValueError: naming the field and a value that works.
  """
  d = cfg.data
  input_wh = tuple(int(v) for v in d.input_size)
  if any(v % BACKBONE_STRIDE for v in input_wh):
    raise ValueError(f"data.input_size {input_wh}: both sides must be multiples of 32 (the "
                     "backbone's stride), e.g. (192, 256) or (288, 384)")
  expected = network_output_wh(input_wh, cfg.model.num_deconv_layers)
  if tuple(int(v) for v in d.heatmap_size) != expected:
    raise ValueError(f"data.heatmap_size {tuple(d.heatmap_size)} does not match the network's "
                     f"output {expected} for data.input_size {input_wh}; set "
                     f"--config.data.heatmap_size=\"{expected}\" (or leave it out)")
  if not float(d.sigma) > 0 or not (3 * float(d.sigma)).is_integer():
    raise ValueError(f"data.sigma must be positive with 3 * sigma an integer (the Gaussian is "
                     f"6 sigma + 1 pixels wide), got {d.sigma}")
