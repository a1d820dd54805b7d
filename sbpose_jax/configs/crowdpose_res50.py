"""CrowdPose test with YOLOv3 boxes, ResNet-50, 256x192 (published: AP 0.634).

Trained on trainval; half-body needs > 6 visible joints (keypoints.CROWDPOSE); the metric is
'keypoints_crowd' with use_area=False and the easy/medium/hard split by crowdIndex.
"""
from sbpose_jax.configs import _recipes
from sbpose_jax.configs import common


def get_config():
  c = common.get_config()
  c.name = "crowdpose_res50"
  _recipes.set_depth(c, 50)
  c.data.update(dict(
      dataset="crowdpose", root="data/crowdpose",
      train_ann="annotations/mmpose_crowdpose_trainval.json", train_images="images",
      val_ann="annotations/mmpose_crowdpose_test.json", val_images="images",
      det_file="annotations/det_for_crowd_test_0.1_0.5.json", use_gt_bbox=False,
      det_score_thr=0.0))
  c.evals.val = common.eval_entry("crowdpose")
  return c
