"""MPII val (PCKh), ResNet-50, 256x256, centre/scale from the annotations (published: 0.882).

MPII's recipe (docs/reference.md §3): flip + scale/rotation only (no centre shift, no
half-body); the PCKh ground truth comes from mpii_gt_val.mat.
"""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import common


def get_config():
  c = common.get_config()
  c.name = "mpii_res50"
  _recipes.set_depth(c, 50)
  _recipes.set_input_size(c, 256, 256, sigma=2)
  c.data.update(dict(
      dataset="mpii", root="data/mpii",
      train_ann="annotations/mpii_train.json", train_images="images",
      val_ann="annotations/mpii_val.json", val_images="images",
      use_gt_bbox=True, det_file="",
      shift_prob=0.0, half_body_prob=0.0))
  c.data.gt_mat_file = "annotations/mpii_gt_val.mat"
  c.evals.val = common.eval_entry("mpii")
  return c
