"""OCHuman test with ground-truth boxes, for a COCO-trained ResNet-50 256x192 (AP 0.546).

The published rows are the COCO checkpoints evaluated on OCHuman: training is exactly
coco_res50, only the periodic evaluation reads OCHuman's test json (data.* overrides below).
Evaluate a trained or converted COCO model with
`python -m sbpose_jax.evaluate --config ochuman_res50 --checkpoint <dir>`.
"""
from sbpose_jax.configs import coco_res50
from sbpose_jax.configs import common

OCHUMAN = dict(dataset="ochuman", root="data/ochuman",
               val_ann="annotations/ochuman_coco_format_test_range_0.00_1.00.json",
               val_images="images", use_gt_bbox=True, det_file="")


def get_config():
  c = coco_res50.get_config()
  c.name = "ochuman_res50"
  c.evals.val = common.eval_entry("ochuman", **OCHUMAN)
  return c
