"""COCO val2017, ResNet-152, 384x288, sigma 3 (see docs/published.md)."""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import coco_res152


def get_config():
  c = coco_res152.get_config()
  c.name = "coco_res152_384x288"
  _recipes.set_input_size(c, 288, 384, sigma=3)
  return c
