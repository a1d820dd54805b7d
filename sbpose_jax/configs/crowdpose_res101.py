"""CrowdPose test with YOLOv3 boxes, ResNet-101, 256x192."""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import crowdpose_res50


def get_config():
  c = crowdpose_res50.get_config()
  c.name = "crowdpose_res101"
  _recipes.set_depth(c, 101)
  return c
