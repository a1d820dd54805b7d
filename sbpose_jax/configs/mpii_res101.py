"""MPII val (PCKh), ResNet-101, 256x256."""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import mpii_res50


def get_config():
  c = mpii_res50.get_config()
  c.name = "mpii_res101"
  _recipes.set_depth(c, 101)
  return c
