"""COCO-WholeBody v1.0 val, ResNet-50, 256x192, 133 joints, detector boxes (AP 56.4 person det).

Same recipe as COCO; images and detections are COCO's, annotations the WholeBody v1.0 files.
"""
from sbpose_jax.configs import coco_res50
from sbpose_jax.configs import common


def get_config():
  c = coco_res50.get_config()
  c.name = "coco_wholebody_res50"
  c.data.dataset = "coco_wholebody"
  c.data.train_ann = "annotations/coco_wholebody_train_v1.0.json"
  c.data.val_ann = "annotations/coco_wholebody_val_v1.0.json"
  c.evals.val = common.eval_entry("coco_wholebody")
  return c
