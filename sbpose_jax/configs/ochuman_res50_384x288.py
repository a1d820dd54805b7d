"""OCHuman test with GT boxes for the COCO-trained res50_384x288 model
(training = coco_res50_384x288)."""
from sbpose_jax.configs import coco_res50_384x288
from sbpose_jax.configs import common
from sbpose_jax.configs import ochuman_res50


def get_config():
  c = coco_res50_384x288.get_config()
  c.name = "ochuman_res50_384x288"
  c.evals.val = common.eval_entry("ochuman", **ochuman_res50.OCHUMAN)
  return c
