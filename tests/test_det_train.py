"""Detector training through the one training loop (config.task="detection", training/det_task.py):
the data pipeline's augmentations move the boxes with the pixels, a short run writes a detector
that `Detector.load` reads, a killed run resumes to the same parameters, fine-tuning starts from
a converted RTMDet checkpoint, the EMA and the schedule follow mmengine/MMDetection."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from sbpose_jax.commands import config as config_lib
from sbpose_jax.data import det_pipeline
from sbpose_jax.evaluators import coco_bbox
from sbpose_jax.inference import detection
from sbpose_jax.models import rtmdet
from sbpose_jax.training import det_task
from sbpose_jax.training import loop
from sbpose_jax.training import workdir as workdir_lib
from sbpose_jax.weights import rtmdet_conversion
from sbpose_jax.weights import saved_model

TINY = ("--config.model.size=custom", "--config.model.widen_factor=0.125",
        "--config.data.input_size=64", "--config.data.crop_size=(0, 0)",
        "--config.batch_size_per_device=2",
        "--config.data.num_workers=0", "--config.test.batch_size=4",
        "--config.evals.val.every_epochs=0", "--config.optim.warmup_steps=2")


def tiny_config(tmp_path, *more):
  return config_lib.load("demo_det", [
      f"--config.data.root={tmp_path / 'stills'}", "--config.synthetic.num_train=6",
      "--config.synthetic.num_val=3", "--config.synthetic.frame_size=(64, 48)",
      "--config.synthetic.max_people=2", *TINY, *more])


# --------------------------------------------------------------------------- the pipeline

def _squares(boxes, wh=(120, 90)):
  """A black BGR image with a white filled rectangle per xyxy box."""
  image = np.zeros((wh[1], wh[0], 3), np.uint8)
  for x1, y1, x2, y2 in boxes.astype(int):
    image[y1:y2, x1:x2] = 255
  return image


@pytest.mark.parametrize("crop", [None, (96, 64)])
@pytest.mark.parametrize("seed", range(6))
def test_augmented_boxes_follow_the_pixels(seed, crop):
  """Resize, crop (S x S, or a `crop_size` of its own), flip and pad: each output box is exactly
  the white block it came from (up to the resize's rounding), boxes cut away are dropped, the
  padding rows are masked."""
  boxes = np.array([[10, 10, 40, 70], [70, 20, 110, 50]], np.float32)
  aug = det_pipeline.Augment(64, 4, ratio_range=(0.6, 1.4), flip_prob=0.5, hsv=(0, 0, 0),
                             min_box_size=4, crop_size=crop)
  out = aug.random_map({"image": _squares(boxes), "boxes": boxes},
                       np.random.default_rng(seed))
  image, got, valid = out["image"], out["boxes"], out["box_valid"]
  w, h = crop or (64, 64)
  assert image.shape == (h, w, 3) and image.dtype == np.uint8
  assert got.shape == (4, 4) and valid.dtype == bool and not valid[2:].any()
  white = image[..., 0] > 127
  labels = np.zeros_like(white, int)
  for k, (x1, y1, x2, y2) in enumerate(got[valid]):
    inner = white[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
    assert inner.size and inner.mean() > 0.98, (seed, k)
    labels[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = 1
  # every white pixel lies in some box (within one pixel of rounding at the edges)
  outside = white & (labels == 0)
  grown = np.zeros_like(outside)
  for x1, y1, x2, y2 in got[valid]:
    grown[max(int(y1) - 1, 0):int(np.ceil(y2)) + 1, max(int(x1) - 1, 0):int(np.ceil(x2)) + 1] = 1
  assert not (outside & ~grown.astype(bool)).any(), seed


def test_flip_and_hsv():
  boxes = np.array([[10, 20, 30, 60]], np.float32)
  image = _squares(boxes, (100, 80))
  flipped, fb = det_pipeline.flip(image, boxes)
  np.testing.assert_array_equal(fb, [[70, 20, 90, 60]])
  assert flipped[30, 75, 0] == 255 and flipped[30, 15, 0] == 0
  rng = np.random.default_rng(0)
  grey = np.full((8, 8, 3), 100, np.uint8)
  changed = [det_pipeline.hsv_augment(grey, rng) for _ in range(8)]
  assert all(c.shape == grey.shape and c.dtype == np.uint8 for c in changed)
  assert any(not np.array_equal(c, grey) for c in changed)


def test_letterbox_and_reader(tmp_path):
  image = np.zeros((48, 64, 3), np.uint8)
  padded, factor = det_pipeline.letterbox(image, 128)
  assert padded.shape == (128, 128, 3) and factor == 2.0
  assert (padded[96:] == det_pipeline.PAD_VALUE).all() and (padded[:96] == 0).all()
  ann = {"images": [{"id": 2, "file_name": "b.jpg", "width": 4, "height": 4},
                    {"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}],
         "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4]},
                         {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1],
                          "iscrowd": 1},
                         {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 5]}],
         "categories": [{"id": 1, "name": "person"}]}
  (tmp_path / "a.json").write_text(json.dumps(ann))
  rec = det_pipeline.read_coco_boxes(str(tmp_path / "a.json"), str(tmp_path))
  assert list(rec.image_ids) == [1, 2] and len(rec.boxes_of(0)) == 0
  np.testing.assert_array_equal(rec.boxes_of(1), [[1, 2, 4, 6]])
  with pytest.raises(ValueError, match="not a COCO annotation file"):
    (tmp_path / "b.json").write_text("{}")
    det_pipeline.read_coco_boxes(str(tmp_path / "b.json"), "")


# ----------------------------------------------------------------------- recipe pieces

def test_schedule_and_ema():
  cfg = config_lib.load("demo_det", ["--config.optim.lr=1.0", "--config.optim.warmup_steps=10",
                                     "--config.optim.min_lr_ratio=0.05"])
  lr = det_task.lr_schedule(cfg.optim, 100)
  assert float(lr(0)) == pytest.approx(1e-5)
  assert float(lr(5)) == pytest.approx(0.5, rel=1e-3)
  assert float(lr(10)) == float(lr(49)) == 1.0
  assert float(lr(75)) == pytest.approx(0.05 + 0.95 * 0.5, rel=1e-5)
  assert float(lr(100)) == pytest.approx(0.05)
  ema = det_task.exp_momentum_ema(momentum=0.0002, gamma=2000)
  params = {"w": np.zeros(3, np.float32)}
  state = ema.init(params)
  _, state = ema.update({"w": np.ones(3, np.float32)}, state, params)
  m = (1 - 0.0002) * np.exp(-1 / 2000) + 0.0002
  np.testing.assert_allclose(state.ema["w"], m, rtol=1e-6)


def test_box_ap_of_ground_truth_is_one(tmp_path):
  ann = {"images": [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 50}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 30],
                          "area": 600, "iscrowd": 0}],
         "categories": [{"id": 1, "name": "person"}]}
  (tmp_path / "gt.json").write_text(json.dumps(ann))
  ev = coco_bbox.CocoBoxEvaluator(ann_file=str(tmp_path / "gt.json"))
  ev.process(dict(image_id=np.array([1, 1]), boxes=np.array([[[5, 5, 25, 35], [0, 0, 1, 1]]] * 2),
                  scores=np.array([[0.9, 0.1]] * 2), count=np.array([1, 1]),
                  mask=np.array([True, False])))
  metrics = ev.compute(str(tmp_path / "out"))
  assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)
  written = json.loads((tmp_path / "out" / coco_bbox.RESULTS_FILE).read_text())
  assert written == [{"image_id": 1, "category_id": 1, "bbox": [5.0, 5.0, 20.0, 30.0],
                      "score": 0.9}]


# --------------------------------------------------------------------- the loop, end to end

def _params(path):
  variables, _ = rtmdet_conversion.load_detector(path)
  return variables


def test_train_resume_and_saved_detector(tmp_path):
  """A run stopped at step 2 (as by a kill after its checkpoint) and re-run to step 4 ends with
  the parameters of an uninterrupted run; model_last is a detector with the EMA weights that
  the detector loader reads; the evaluation wrote COCO detection results."""
  cfg = tiny_config(tmp_path, "--config.checkpoint_every_steps=2", "--config.max_steps=4")
  full, state = loop.train_and_evaluate(cfg, tmp_path / "full", progress=False,
                                        return_state=True)
  assert set(full["val"]) >= {"AP", "AP50", "AR100"}
  stopped = tiny_config(tmp_path, "--config.checkpoint_every_steps=2", "--config.max_steps=2")
  loop.train_and_evaluate(stopped, tmp_path / "resumed", progress=False)
  assert workdir_lib.latest_step(tmp_path / "resumed") == 2
  loop.train_and_evaluate(cfg, tmp_path / "resumed", progress=False)
  a, b = _params(tmp_path / "full" / "model_last"), _params(tmp_path / "resumed" / "model_last")
  jax.tree.map(np.testing.assert_array_equal, a, b)
  meta = rtmdet_conversion.read_meta(tmp_path / "full" / "model_last")
  assert meta.step == 4 and meta.arch == det_task.build_arch(cfg)
  assert meta.settings.input_size == 64 and meta.settings.colour_order == "bgr"
  assert workdir_lib.last_step(tmp_path / "full") == 4
  assert json.loads((tmp_path / "full" / "model_best" / "meta.json").read_text())["kind"] == \
      "detector"
  assert (tmp_path / "full" / "eval" / "val_0000004" / coco_bbox.RESULTS_FILE).is_file()
  # inference/detection.py's Detector reads it and finds what the training's evaluation finds
  detector = detection.Detector.load(tmp_path / "full" / "model_last", batch_sizes=(2,))
  stills = sorted((tmp_path / "stills" / "val").glob("*.jpg"))[:2]
  images = [det_pipeline.load_image(str(f)) for f in stills]
  found = detector(images, colour="bgr")
  mine = det_task.detect_images(a, rtmdet.build(meta.arch, "float32"), meta.settings, images,
                                batch_size=2)
  for f, (boxes, scores) in zip(found, mine):
    np.testing.assert_allclose(f.scores, scores, atol=1e-5)
    np.testing.assert_allclose(f.boxes, boxes, atol=1e-3)
  # the saved weights are the EMA's, not the live parameters
  live = jax.device_get(state.params)
  ema = det_task.ema_variables(state)["params"]
  jax.tree.map(np.testing.assert_array_equal, a["params"], jax.device_get(ema))
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(live),
                                                      jax.tree.leaves(ema)))


def test_train_on_a_rectangular_crop(tmp_path):
  """`data.crop_size` (width, height): the step trains on W x H crops (priors from the batch's
  shape), the saved detector still tests at S x S."""
  cfg = tiny_config(tmp_path, "--config.data.crop_size=(64, 32)", "--config.max_steps=2")
  assert det_pipeline.crop_wh(cfg.data) == (64, 32)
  records = det_task.DetectionTask().prepare_data(cfg)
  batch = next(iter(det_pipeline.train_dataset(records, cfg, batch_size=2, seed=0)))
  assert batch["image"].shape == (2, 32, 64, 3)
  out = loop.train_and_evaluate(cfg, tmp_path / "w", progress=False)
  assert set(out["val"]) >= {"AP", "AP50"}
  meta = rtmdet_conversion.read_meta(tmp_path / "w" / "model_last")
  assert meta.step == 2 and meta.settings.input_size == 64


def test_unknown_task_and_bad_sizes_are_one_line(tmp_path):
  cfg = tiny_config(tmp_path, "--config.data.input_size=70")
  with pytest.raises(ValueError, match="multiple of 32"):
    loop.train_and_evaluate(cfg, tmp_path / "w", progress=False)
  cfg = tiny_config(tmp_path, "--config.data.crop_size=(70, 64)")
  with pytest.raises(ValueError, match="multiples of 32"):
    loop.train_and_evaluate(cfg, tmp_path / "w", progress=False)
  cfg = tiny_config(tmp_path, "--config.task=segmentation")
  with pytest.raises(ValueError, match="task='segmentation' is unknown"):
    loop.train_and_evaluate(cfg, tmp_path / "w", progress=False)


def test_fine_tune_from_a_converted_checkpoint(tmp_path):
  """An MMDetection RTMDet state dict (torch.save'd), converted by the converter or read as
  .pth by init_checkpoint, is where fine-tuning starts; a config of another size is refused."""
  torch = pytest.importorskip("torch")
  ref = pytest.importorskip("torch_rtmdet_reference")
  torch_model = ref.randomize(ref.build("tiny", 1, widen=0.125), 0)
  sd = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()
        if not k.endswith("num_batches_tracked")}
  arch = rtmdet_conversion.infer_arch(sd)
  src = tmp_path / "rtmdet_tiny_person.pth"
  ref.save(torch_model, src)
  del torch
  rtmdet_conversion.convert(src, tmp_path / "converted", verify_hash=False)
  fields = [f"--config.model.{k}={getattr(arch, k)}" for k in det_task.ARCH_FIELDS
            if k != "size"]
  want = rtmdet_conversion.to_variables(sd, arch)
  for init in (tmp_path / "converted", src):
    cfg = tiny_config(tmp_path, f"--config.init_checkpoint={init}", *fields)
    task = det_task.DetectionTask()
    got = task.initial_variables(cfg, task.build_model(cfg), 0)
    jax.tree.map(np.testing.assert_array_equal, got, want)
  cfg = tiny_config(tmp_path, f"--config.init_checkpoint={tmp_path / 'converted'}",
                    "--config.max_steps=1", *fields)
  metrics = loop.train_and_evaluate(cfg, tmp_path / "ft", progress=False)
  assert "AP" in metrics["val"]
  assert saved_model.is_saved_model(tmp_path / "ft" / "model_last")
  other = tiny_config(tmp_path, f"--config.init_checkpoint={src}", "--config.max_steps=1",
                      "--config.model.widen_factor=0.25")
  with pytest.raises(ValueError, match="does not build"):
    loop.train_and_evaluate(other, tmp_path / "ft2", progress=False)


def test_two_stage_recipe(tmp_path):
  """configs/demo_det_stage1 is demo_det's model on demo_det's stills at a lower resolution, and
  its saved detector starts a demo_det run at another input size (init_checkpoint): the second
  stage begins from the first stage's EMA weights and BatchNorm statistics."""
  first, second = config_lib.load("demo_det_stage1"), config_lib.load("demo_det")
  assert det_task.build_arch(first) == det_task.build_arch(second)
  assert first.synthetic.to_dict() == second.synthetic.to_dict()
  assert first.data.root == second.data.root
  assert first.data.input_size < second.data.input_size
  stage1 = tiny_config(tmp_path, "--config.data.crop_size=(32, 32)", "--config.max_steps=2")
  loop.train_and_evaluate(stage1, tmp_path / "stage1", progress=False)
  saved = _params(tmp_path / "stage1" / "model_last")
  stage2 = tiny_config(tmp_path, "--config.data.input_size=96", "--config.max_steps=1",
                       f"--config.init_checkpoint={tmp_path / 'stage1' / 'model_last'}")
  task = det_task.DetectionTask()
  start = task.initial_variables(stage2, task.build_model(stage2), 0)
  jax.tree.map(np.testing.assert_array_equal, start, saved)
  out = loop.train_and_evaluate(stage2, tmp_path / "stage2", progress=False)
  assert set(out["val"]) >= {"AP", "AP50"}
  assert rtmdet_conversion.read_meta(tmp_path / "stage2" / "model_last").settings.input_size == 96
