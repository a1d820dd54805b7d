"""The Python API: PoseEstimator against the evaluation pipeline, batching, inputs, drawing."""
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbpose_jax import PoseEstimator

from sbpose_jax.inference import pose as inference

from sbpose_jax.weights import saved_model
from sbpose_jax.commands import config as config_lib
from test_evaluate import ref_boxes

SMALL = ["--config.data.input_size=(48,64)", "--config.data.heatmap_size=(12,16)",
         "--config.data.num_workers=0", "--config.model.dtype='float32'"]
BATCH = 8


def save_tiny(path, depth=18, width=8, num_joints=17, dataset="coco", colour_order="bgr",
              seed=0, source="test 64x48"):
  """A random thin PoseResNet (non-trivial BatchNorm statistics) saved as a saved model."""
  meta = saved_model.ModelMeta(depth=depth, num_joints=num_joints, width=width,
                               deconv_filters=(16, 16, 16), dataset=dataset,
                               colour_order=colour_order, source=source)
  model = saved_model.build_model(meta)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 48, 3)))
  rng = np.random.default_rng(seed)

  def fill(p, s):
    name = jax.tree_util.keystr(p)
    if "batch_stats" in name:
      return (rng.uniform(0.5, 1.5, s.shape) if "var" in name
              else rng.normal(0, 0.1, s.shape)).astype(np.float32)
    if name.endswith("['scale']"):
      return rng.uniform(0.8, 1.2, s.shape).astype(np.float32)
    if name.endswith("['bias']"):
      return rng.normal(0.25, 0.05, s.shape).astype(np.float32)
    return (rng.normal(size=s.shape) * np.sqrt(1.0 / np.prod(s.shape[:-1]))).astype(np.float32)
  saved_model.save_model(path, jax.tree_util.tree_map_with_path(fill, shapes), meta)
  return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return save_tiny(tmp_path_factory.mktemp("models") / "tiny_64x48")


def coco_cfg(fixtures_dir):
  config = config_lib.load("coco_res50", SMALL + [f"--config.test.batch_size={BATCH}"])
  cfg, _ = config_lib.eval_config(config)
  cfg.data.val_ann = str(fixtures_dir / "coco" / "test_coco.json")
  cfg.data.val_images = str(fixtures_dir / "coco")
  cfg.data.use_gt_bbox = True
  return cfg


def test_import_sbpose_jax_does_not_import_jax():
  code = ("import sys, sbpose_jax; assert 'jax' not in sys.modules; "
          "sbpose_jax.PoseEstimator; assert 'jax' not in sys.modules; print('ok')")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "ok"


def test_keypoints_equal_the_evaluation_pipeline(fixtures_dir, model_dir):
  # The evaluation path (reader records → grain eval batches → make_predict_fn) against the API
  # on the same GT boxes: equal crops, centres, scales and keypoints, bit for bit.
  from sbpose_jax.data import pipeline, readers
  cfg = coco_cfg(fixtures_dir)
  records = readers.read_split(cfg.data, "val")
  variables, meta = saved_model.load_model(model_dir)
  model = saved_model.build_model(meta)
  predict = inference.make_predict_fn(model, variables, cfg, meta)
  want, want_crops = np.zeros((len(records), 17, 3), np.float32), {}
  for batch in pipeline.eval_dataset(records, cfg, BATCH):
    out = np.asarray(predict(batch))
    for j in np.flatnonzero(batch["mask"]):
      want[batch["index"][j]] = out[j]
      want_crops[int(batch["index"][j])] = batch["image"][j]
  est = PoseEstimator.from_config(cfg, model_dir)
  assert est.input_wh == (48, 64) and est.settings.model_order == "bgr"
  # The sanitised GT boxes in float64, as a user reading the json has them (records keep
  # float32 copies, but their centre/scale were computed from the float64 values).
  gt_boxes = ref_boxes(fixtures_dir, None)
  for img in np.unique(records.image_index):
    rows = np.flatnonzero(records.image_index == img)
    path = records.image_path(int(rows[0]))
    boxes = np.asarray([b for _, f, b, _ in gt_boxes if path.endswith(f)], np.float64)
    np.testing.assert_allclose(boxes, records.bbox_xywh[rows], rtol=1e-6)
    crops, center, scale = est.crops(est_image(path), boxes)
    np.testing.assert_array_equal(center, records.center_xy[rows])
    np.testing.assert_array_equal(scale, records.scale_wh[rows])
    for r, crop in zip(rows, crops):
      np.testing.assert_array_equal(crop, want_crops[int(r)])
    result = est(path, boxes)
    np.testing.assert_array_equal(result.keypoints, want[rows, :, :2])
    np.testing.assert_array_equal(result.scores, want[rows, :, 2])


def est_image(path):
  from sbpose_jax import api
  return api.read_image(path)


def test_batching_padding_and_predict_batch(fixtures_dir, model_dir):
  est = PoseEstimator.load(model_dir, batch_sizes=(1, 4))
  assert est.input_wh == (48, 64)            # from "64x48" in the model's name
  images = [fixtures_dir / "coco" / f for f in ("000000000785.jpg", "000000196141.jpg")]
  boxes = [np.asarray([[10, 20, 200, 300], [50, 60, 80, 200], [0, 0, 100, 100]], np.float64),
           np.asarray([[100, 50, 120, 300], [300, 40, 100, 250], [5, 5, 50, 50],
                       [20, 30, 40, 90], [200, 100, 150, 200], [1, 1, 30, 60]], np.float64)]
  many = est.predict_batch(images, boxes, box_scores=[np.full(3, 0.5), None])
  assert [len(r) for r in many] == [3, 6]
  for image, b, r in zip(images, boxes, many):
    single = est(image, b)
    # Different batch compositions (padding to 1 or 4): the same poses to float rounding.
    np.testing.assert_allclose(single.keypoints, r.keypoints, atol=1e-3)
    np.testing.assert_allclose(single.scores, r.scores, atol=1e-5)
    np.testing.assert_array_equal(r.boxes, b)
  np.testing.assert_allclose(many[0].instance_scores * 2, est(images[0], boxes[0]).instance_scores,
                             rtol=1e-5)
  one = est(images[0], boxes[0][0])          # a single box as (4,)
  np.testing.assert_allclose(one.keypoints[0], many[0].keypoints[0], atol=1e-3)
  whole = est(images[0])                     # no boxes: the whole image
  h, w = est_image(images[0]).shape[:2]
  np.testing.assert_array_equal(whole.boxes, [[0, 0, w, h]])
  empty = est(images[0], np.zeros((0, 4)))
  assert empty.keypoints.shape == (0, 17, 2) and empty.instance_scores.shape == (0,)
  drawn = est.draw(images[0], many[0], kpt_thr=0.0)
  assert drawn.shape == (h, w, 3) and drawn.dtype == np.uint8
  assert np.abs(drawn.astype(int) - est_image(images[0])).max() > 50


@pytest.mark.parametrize("case,error,match", [
    ("missing", FileNotFoundError, "nope.jpg"),
    ("float_image", ValueError, "uint8"),
    ("bad_boxes", ValueError, r"\(N, 4\)"),
    ("nan_box", ValueError, "NaN"),
])
def test_bad_inputs_are_one_clear_error(model_dir, tmp_path, case, error, match):
  est = PoseEstimator.load(model_dir)
  image = np.zeros((50, 40, 3), np.uint8)
  with pytest.raises(error, match=match):
    if case == "missing":
      est(tmp_path / "nope.jpg")
    elif case == "float_image":
      est(image.astype(np.float32))
    elif case == "bad_boxes":
      est(image, [[1, 2, 3]])
    else:
      est(image, [[1, 2, 10, 10], [1, 2, float("nan"), 3]])


def test_unusable_boxes_are_skipped_with_a_warning(model_dir, capsys, caplog):
  """A box smaller than a pixel or outside the image is skipped (named in a warning); the
  others keep their poses, and `box_index` says which given box each row is."""
  est = PoseEstimator.load(model_dir)
  image = np.zeros((50, 40, 3), np.uint8)
  result = est(image, [[1, 2, 0, 3], [5, 5, 20, 30], [100, 5, 20, 30]], box_scores=[1, .5, 1])
  assert result.box_index.tolist() == [1] and result.boxes.tolist() == [[5, 5, 20, 30]]
  assert len(result.keypoints) == len(result.instance_scores) == 1
  # The package logger's warnings: on stderr once a command set up its handler (which stops
  # propagation), else through the root logger (pytest's caplog).
  text = capsys.readouterr().err + caplog.text
  assert "box 0 [x, y, w, h] = [1, 2, 0, 3]: smaller than 1 px" in text
  assert "box 2 [x, y, w, h] = [100, 5, 20, 30]: outside the 40x50 image" in text


def test_load_refuses_what_is_not_a_pose_model(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing"):
    PoseEstimator.load(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="empty"):
    PoseEstimator.load(tmp_path / "empty")


def test_evaluate_and_predict_give_the_same_keypoints(fixtures_dir, model_dir, tmp_path):
  # Both commands on the same GT boxes (the boxes file holds the json's float64 values).
  import json
  from sbpose_jax.commands import evaluate
  from sbpose_jax.commands import predict
  f = fixtures_dir / "coco"
  evaluate.main(["--config", "coco_res50", "--checkpoint", str(model_dir), "--ann-file",
                 str(f / "test_coco.json"), "--img-dir", str(f), "--gt-boxes", "--out-dir",
                 str(tmp_path / "e"), "--batch-size", str(BATCH), "--quiet", *SMALL])
  boxes, files = {}, {}
  for image_id, name, box, _ in ref_boxes(fixtures_dir, None):
    boxes.setdefault(name, []).append(box)
    files[pathlib.Path(name).stem] = image_id
  (tmp_path / "boxes.json").write_text(json.dumps(boxes))
  predict.main(["--config", "coco_res50", "--checkpoint", str(model_dir),
                *[str(f / n) for n in boxes], "--boxes", str(tmp_path / "boxes.json"),
                "--out-dir", str(tmp_path / "p"), "--batch-size", str(BATCH), *SMALL])
  evaluated = json.loads((tmp_path / "e" / "keypoints.json").read_text())
  predicted = json.loads((tmp_path / "p" / "predictions.json").read_text())["images"]
  assert sum(len(p["instances"]) for p in predicted) == len(evaluated) > 5
  for entry in predicted:
    image_id = files[pathlib.Path(entry["file"]).stem]
    want = sorted((r for r in evaluated if r["image_id"] == image_id), key=lambda r: r["score"])
    got = sorted(entry["instances"], key=lambda r: r["score"])
    assert [r["score"] for r in got] == [r["score"] for r in want]
    for g, w in zip(got, want):   # predictions.json rounds to 3 decimals
      np.testing.assert_allclose(np.asarray(g["keypoints"]).ravel(), w["keypoints"], atol=5e-4)


def test_docstring_example_runs():
  import doctest
  from sbpose_jax import api
  result = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
  assert result.attempted >= 8 and result.failed == 0
