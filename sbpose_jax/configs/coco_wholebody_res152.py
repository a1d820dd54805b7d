"""COCO-WholeBody v1.0 val, ResNet-152, 256x192."""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import coco_wholebody_res50


def get_config():
  c = coco_wholebody_res50.get_config()
  c.name = "coco_wholebody_res152"
  _recipes.set_depth(c, 152)
  return c
