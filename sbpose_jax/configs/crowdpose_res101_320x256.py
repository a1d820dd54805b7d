"""CrowdPose test with YOLOv3 boxes, ResNet-101, 320x256 (published: AP 0.659), sigma 2."""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import crowdpose_res101


def get_config():
  c = crowdpose_res101.get_config()
  c.name = "crowdpose_res101_320x256"
  _recipes.set_input_size(c, 256, 320, sigma=2)
  return c
