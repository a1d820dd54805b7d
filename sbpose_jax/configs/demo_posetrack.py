"""The pose model of the synthetic chain: `python -m sbpose_jax.train --config demo_posetrack`.

The `demo` recipe (configs/demo.py: a thin ResNet-18 PoseResNet at 128x96, no download, 2 CPU
cores) trained on the stills of the synthetic videos (data/synthetic_video.py
`generate_stills(keypoint_format="posetrack18")`: the walking people of the clips, 1 to 6 per
320x240 frame) with PoseTrack18's joints, so that its output is what poseval scores on the
synthetic clips: `head_bottom` and `head_top` where COCO has the eyes (the `demo` model's COCO
joints would be scored as head joints they are not). Evaluated by COCO OKS AP with ground-truth
boxes on the held-out stills (COCO's sigmas, which MMPose's PoseTrack18 uses too).
The whole chain: scripts/run_chain.py, docs/benchmarks.md ("The chain").
"""
from sbpose_jax.configs import common
from sbpose_jax.configs import demo


def get_config():
  c = demo.get_config()
  c.name = "demo_posetrack"
  # The stills of data/synthetic_video.py (kind "video_stills"), not data/synthetic.py's people.
  c.synthetic.update(dict(enabled=True, num_train=300, num_val=40, seed=0))
  c.synthetic.kind = "video_stills"
  c.synthetic.frame_size = (320, 240)
  c.synthetic.max_people = 6
  c.synthetic.keypoint_format = "posetrack18"
  c.data.update(dict(dataset="posetrack18", root="data/synthetic_video_stills_posetrack18"))
  c.evals.val = common.eval_entry("coco", every_epochs=13)
  # `track --detector` with the demo_det detector on the synthetic clips (scripts/run_chain.py,
  # docs/benchmarks.md "The chain"): its quality-focal scores are low and its boxes loose, and
  # 0.5 tracked best of 0.2-0.6 (pose AP 59.8, MOTA 33.6 against 57.9 / 14.8 at the base 0.4).
  c.track.det_score_thr = 0.5
  return c
