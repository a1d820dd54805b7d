"""MPII-TRB val, ResNet-152, 256x256."""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import mpii_trb_res50


def get_config():
  c = mpii_trb_res50.get_config()
  c.name = "mpii_trb_res152"
  _recipes.set_depth(c, 152)
  return c
