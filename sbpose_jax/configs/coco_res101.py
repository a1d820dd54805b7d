"""COCO val2017, ResNet-101, 256x192 (see docs/published.md)."""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import coco_res50


def get_config():
  c = coco_res50.get_config()
  c.name = "coco_res101"
  _recipes.set_depth(c, 101)
  return c
