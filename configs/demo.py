"""The embedded default: `python -m sbpose_jax.train --config demo`, no download, 2 CPU cores.

Generates the synthetic dataset (sbpose_jax/data/synthetic.py: procedural stick people in COCO
format) under data/synthetic on first run, trains a small PoseResNet (ResNet-18, three narrow
deconvs) from a random init at a small input size, and evaluates COCO OKS AP with ground-truth
boxes on the held-out synthetic split. Target: AP >= 0.6 in <= 10 minutes on 2 CPU cores,
compile and evaluation included; NOT reached yet: this recipe measured AP 0.15 / 0.21 / 0.29
after epochs 1 / 2 / 3 (docs/benchmarks.md, "Training"). Milder augmentation than COCO's (rotation 20,
scale 0.25, no half-body) and batch 16 learned ~50x faster in the first epoch than the COCO
augmentation at batch 32. Input sides stay >= 96 px: XLA:CPU is very slow on 2-px maps.
"""
import common
import ml_collections


def get_config():
  c = common.get_config()
  c.name = "demo"
  c.synthetic = ml_collections.ConfigDict(dict(
      num_train=1000, num_val=100, seed=0, image_size=(256, 192)))
  c.data.update(dict(
      dataset="coco", root="data/synthetic",
      train_ann="annotations/person_keypoints_train.json", train_images="train",
      val_ann="annotations/person_keypoints_val.json", val_images="val",
      det_file="", use_gt_bbox=True,
      input_size=(96, 128), heatmap_size=(24, 32), sigma=2.0,
      num_workers=1))
  c.model.update(dict(depth=18, deconv_filters=(64, 64, 64), dtype="float32"))
  c.init_checkpoint = ""
  c.data.update(dict(rot_factor=20.0, scale_factor=0.25, half_body_prob=0.0))
  c.batch_size_per_device = 16
  c.bn_group_size = 0
  c.epochs = 3
  c.optim.update(dict(lr=3e-3, warmup_steps=50, decay_epochs=(100,)))
  c.evals.val = common.eval_entry("coco", every_epochs=1)
  c.test.batch_size = 50
  c.log_every_steps = 10
  c.checkpoint_every_steps = 100
  return c
