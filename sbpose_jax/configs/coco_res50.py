"""COCO val2017, ResNet-50, 256x192 (published: AP 0.718 with detector boxes).

The base recipe lives in common.py: Adam 5e-4, 500-step linear warmup from 1e-3, x0.1 at
epochs 170 and 200 of 210, 64 images per device (published: 8 GPUs x 64).
"""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import common


def get_config():
  c = common.get_config()
  c.name = "coco_res50"
  _recipes.set_depth(c, 50)
  return c
