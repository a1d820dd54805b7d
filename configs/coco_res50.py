"""COCO val2017, ResNet-50, 256x192 (published: AP 0.718 with detector boxes)."""
import common


def get_config():
  c = common.get_config()
  c.name = "coco_res50"
  return c
