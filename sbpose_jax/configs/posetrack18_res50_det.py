"""PoseTrack18 val with Cascade R-CNN boxes (score >= 0.4), ResNet-50 (published: Total 75.2).

Same training as posetrack18_res50; only evaluation uses the detector boxes.
"""
from sbpose_jax.configs import posetrack18_res50


def get_config():
  c = posetrack18_res50.get_config()
  c.name = "posetrack18_res50_det"
  c.data.use_gt_bbox = False
  return c
