"""AI Challenger val with ground-truth boxes, ResNet-101, 256x192 (published: AP 0.650).

The metric uses the 2020 AIC OKS sigmas (x2) and use_area=False (docs/reference.md §0, §6.3).
"""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import common


def get_config():
  c = common.get_config()
  c.name = "aic_res101"
  _recipes.set_depth(c, 101)
  c.data.update(dict(
      dataset="aic", root="data/aic",
      train_ann="annotations/aic_train.json",
      train_images="ai_challenger_keypoint_train_20170902/keypoint_train_images_20170902",
      val_ann="annotations/aic_val.json",
      val_images="ai_challenger_keypoint_validation_20170911/keypoint_validation_images_20170911",
      use_gt_bbox=True, det_file=""))
  c.evals.val = common.eval_entry("aic")
  return c
