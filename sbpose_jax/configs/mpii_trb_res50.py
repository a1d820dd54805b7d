"""MPII-TRB val, ResNet-50, 256x256, 40 joints (published: Mean Acc 0.868).

As MPII but without the 1.25 box padding and with 32 images per GPU (8 x 32 = 256 published),
so BatchNorm statistics run over groups of 32.
"""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import common


def get_config():
  c = common.get_config()
  c.name = "mpii_trb_res50"
  _recipes.set_depth(c, 50)
  _recipes.set_input_size(c, 256, 256, sigma=2)
  c.data.update(dict(
      dataset="mpii_trb", root="data/mpii",
      train_ann="annotations/mpii_trb_train.json", train_images="images",
      val_ann="annotations/mpii_trb_val.json", val_images="images",
      use_gt_bbox=True, det_file="", padding=1.0,
      shift_prob=0.0, half_body_prob=0.0))
  c.batch_size_per_device = 32
  c.bn_group_size = 32
  c.evals.val = common.eval_entry("mpii_trb")
  return c
