"""PoseTrack18 val with ground-truth boxes, ResNet-50, 256x192 (published: Total mAP 81.0).

Fine-tuned from the COCO res50 256x192 model (MMPose `load_from` the ec54d7f3 checkpoint: the
whole network, not just the backbone) for 20 epochs, x0.1 at epochs 10 and 15, evaluated every
epoch. `init_checkpoint` may be that MMPose .pth or a coco_res50 training workdir/saved model.
"""
from sbpose_jax.configs import common


def get_config():
  c = common.get_config()
  c.name = "posetrack18_res50"
  c.data.update(dict(
      dataset="posetrack18", root="data/posetrack18",
      train_ann="annotations/posetrack18_train.json", train_images="",
      val_ann="annotations/posetrack18_val.json", val_images="",
      det_file="annotations/posetrack18_val_human_detections.json", use_gt_bbox=True,
      det_score_thr=0.4))
  c.data.val_gt_dir = "annotations/val"   # one GT json per sequence, for the poseval metric
  c.init_checkpoint = "pretrained/res50_coco_256x192-ec54d7f3_20200709.pth"
  c.epochs = 20
  c.optim.decay_epochs = (10, 15)
  c.evals.val = common.eval_entry("posetrack18", every_epochs=1)
  # The paper's tracker (docs/tracking.md): flow-moved poses, OKS, the last 5 frames; detector
  # boxes as the published detector-box evaluation uses them (score >= 0.4).
  c.track.update(dict(similarity="flow", match_thr=0.3, queue_len=5, det_score_thr=0.4,
                      flow_preset="fast", smoothing=False))
  return c
