"""Shared pieces of the dataset configs (hidden from the config list by the leading underscore)."""

from sbpose_jax.weights import torchvision


def set_depth(c, depth: int):
  """ResNet depth plus the matching torchvision init file under pretrained/."""
  c.model.depth = depth
  c.init_checkpoint = torchvision.torchvision_path(depth)
  return c


def set_input_size(c, width: int, height: int, sigma: float):
  """Input (W, H), heatmap at 1/4 and the Gaussian sigma (2 at 256x192, 3 at 384x288)."""
  c.data.input_size = (width, height)
  c.data.heatmap_size = (width // 4, height // 4)
  c.data.sigma = float(sigma)
  return c
