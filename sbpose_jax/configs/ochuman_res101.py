"""OCHuman test with GT boxes for the COCO-trained res101 model (training = coco_res101)."""
from sbpose_jax.configs import coco_res101
from sbpose_jax.configs import common
from sbpose_jax.configs import ochuman_res50


def get_config():
  c = coco_res101.get_config()
  c.name = "ochuman_res101"
  c.evals.val = common.eval_entry("ochuman", **ochuman_res50.OCHUMAN)
  return c
