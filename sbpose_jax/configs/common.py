"""The base config: every field any command reads, with the MMPose 0.x COCO res50 recipe.

Other configs import this and override a few fields (see coco_res50_384x288.py).
Sizes are width first, as in the reference configs: input_size = (W, H).
"""
import ml_collections

from sbpose_jax.weights.meta import ModelMeta


def eval_entry(evaluator: str, every_epochs: int = 10, **data) -> ml_collections.ConfigDict:
  """One periodic evaluation: an `evaluators.EVALUATORS` type, how often, and `data.*` overrides.

  `data` replaces fields of `config.data` for this evaluation only (e.g. OCHuman's files for a
  COCO-trained model). `every_steps > 0` wins over `every_epochs`. Training always evaluates at
  its last step; `every_epochs = 0` and `every_steps = 0` evaluate only there.
  """
  return ml_collections.ConfigDict(dict(
      type=evaluator, every_epochs=every_epochs, every_steps=0,
      data=ml_collections.ConfigDict(data)))


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "common"
  c.seed = 0
  # What is trained: "pose" (this file's fields) or "detection" (an RTMDet person detector:
  # configs/demo_det.py, training/det_task.py), through the same loop.
  c.task = "pose"

  c.data = ml_collections.ConfigDict(dict(
      dataset="coco",            # key of sbpose_jax.keypoints.DATASETS
      root="data/coco",          # relative paths below are joined to this
      train_ann="annotations/person_keypoints_train2017.json",
      train_images="train2017",
      val_ann="annotations/person_keypoints_val2017.json",
      val_images="val2017",
      det_file="person_detection_results/COCO_val2017_detections_AP_H_56_person.json",
      gt_mat_file="",            # MPII: PCKh's mpii_gt_val.mat ("": beside val_ann)
      val_gt_dir="",             # PoseTrack18: per-sequence GT jsons ("": MMPose's rule)
      use_gt_bbox=False,         # evaluation boxes: ground truth, or det_file
      det_score_thr=0.0,
      input_size=(192, 256),     # (W, H)
      heatmap_size=(48, 64),     # (W, H)
      sigma=2.0,
      padding=1.25,
      colour_order="rgb",        # what the pipeline hands the model
      # Training augmentation (docs/reference.md §3).
      shift_prob=0.3,            # 2020 behaviour: centre shift drawn once per record, frozen
      shift_factor=0.4,
      flip_prob=0.5,
      # True folds the flip into the crop matrix (saves mirroring the image) but, under
      # OpenCV 4, changes ~0.75% of crop values by up to 8 levels: off = the reference's crops.
      flip_in_affine=False,
      half_body_prob=0.3,
      half_body_padding=1.5,
      scale_factor=0.5,
      rot_factor=40.0,
      rot_prob=0.6,
      num_workers=8,
      skip_bad_images=False,
      # Training input (docs/packing.md): "full" decodes the full images; "packed" reads the
      # person crops made by `python -m sbpose_jax.pack` (evaluation always reads full images).
      source="full",
      packed_dir="",             # "" = <root>/packed/<config name>
      pack_scale=0.5,            # pack resolution / output resolution at zoom 1 (pack_geometry)
      pack_quality=95,           # JPEG quality of the packed crops
      pack_chroma="yuv420",      # crops as JPEG "yuv420", "yuv444" (sharper) or "planes" (4:2:0
                                 # planes, half the bytes to ship, RGB made on the device)
      warp_on_device=False,      # packed: warp + flip + normalise inside the jitted step
  ))

  # The architecture (depth 50, style, width, head) as weights/meta.py ModelMeta documents it.
  c.model = ml_collections.ConfigDict(dict(
      **ModelMeta.default_architecture(),
      deconv_impl="transpose",   # or "subpixel": the same function, faster to train on CPUs
      dtype="bfloat16",          # compute dtype; params are always float32
  ))
  # Procedural training data (sbpose_jax/data/synthetic.py) generated under data.root when
  # enabled (the demo); image_size is (W, H).
  c.synthetic = ml_collections.ConfigDict(dict(
      enabled=False, num_train=1000, num_val=100, seed=0, image_size=(256, 192)))
  c.init_checkpoint = ""         # torchvision ImageNet ResNet .pth (or converted dir)

  c.optim = ml_collections.ConfigDict(dict(
      lr=5e-4,
      warmup_steps=500,
      warmup_ratio=1e-3,
      decay_epochs=(170, 200),
      decay_factor=0.1,
  ))
  c.epochs = 210
  # The global batch (what the data stream, the step size and the schedule are per) is
  # global_batch_size, or batch_size_per_device x devices when global_batch_size = 0; either may
  # be 0 (derived from the other). A run resumed on another number of devices keeps its global
  # batch (docs/training.md, "Topology"). The published checkpoints were trained on 8 GPUs x 64
  # = 512 with BatchNorm statistics per GPU.
  c.global_batch_size = 0
  c.batch_size_per_device = 64
  # BatchNorm batch statistics are computed over groups of this many images of the global batch
  # (64 = the reference's per-GPU statistics, whatever the device count); 0 = over the whole
  # global batch (sync-BN). Must divide the global batch. See docs/training.md.
  c.bn_group_size = 64
  c.max_steps = 0                # > 0: stop at this step (the schedule still follows `epochs`)
  # SIGTERM (a preemption) stops every process at one step and writes its checkpoint; if that
  # takes longer than this many seconds (the platform's grace period is usually 30 s), the run
  # gives up on it and ends as if killed (the last complete checkpoint counts).
  c.preemption_grace_s = 25.0

  c.test = ml_collections.ConfigDict(dict(
      flip=True,
      shift_heatmap=True,
      decode="default",          # or "unbiased" (DARK)
      blur_kernel=11,
      vis_thr=0.2,
      oks_thr=0.9,
      # CrowdPose's ignored people: "2020" (published numbers) or "current" (xtcocotools >= 1.9).
      crowdpose_ignore="2020",
      batch_size=64,
  ))
  c.evals = ml_collections.ConfigDict(dict(val=eval_entry("coco")))
  # Pose tracking over video (`python -m sbpose_jax.track`, docs/tracking.md).
  c.track = ml_collections.ConfigDict(dict(
      similarity="flow",         # iou | oks (MMPose 0.x) | flow (the paper: OKS, flow-moved)
      match_thr=0.3,             # similarity a match must exceed
      min_keypoints=3,           # joints above kpt_thr for a pose to start a new track
      kpt_thr=0.3,               # joint score counted as visible
      queue_len=5,               # a track lost for fewer frames can be matched again
      propagate=True,            # add boxes around flow-moved previous poses to the detector's
      box_enlarge=0.15,          # growth of those boxes (the paper: 15%)
      nms_iou=0.5,               # a propagated box overlapping a detector box more is dropped
      pose_nms_oks=0.9,          # duplicate poses above this OKS are dropped
      propagated_oks=0.1,        # a flow-propagated box's pose near a detected one's goes
      det_score_thr=0.4,         # detector boxes below this score are ignored
      flow_preset="fast",        # cv2.DISOpticalFlow preset: ultrafast | fast | medium
      flow_max_side=640,         # flow at most at this size (longer side, pixels)
      smoothing=False,           # One-Euro filter on the joints
      one_euro_min_cutoff=1.0,
      one_euro_beta=0.007,
      # Joints scored below this are written absent in the results json (poseval's MOTA counts
      # every joint written; AP only ranks them): 0 writes every joint.
      write_kpt_thr=0.0,
  ))

  c.eval_at_start = False        # also evaluate before the first step (e.g. an init's score)
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  return c
