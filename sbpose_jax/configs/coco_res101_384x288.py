"""COCO val2017, ResNet-101, 384x288, sigma 3 (see docs/published.md)."""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import coco_res101


def get_config():
  c = coco_res101.get_config()
  c.name = "coco_res101_384x288"
  _recipes.set_input_size(c, 288, 384, sigma=3)
  return c
