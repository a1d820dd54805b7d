"""The person detector in every command (issue 22 item 4): the API, predict, track and evaluate
with --detector, on the fixture images and clip, with a tiny saved RTMDet (nano-shaped, widen
0.125, calibrated so that it finds boxes on the fixture photos: tests/test_detection.py) and a
tiny random pose model; a detector that finds nobody gives empty results, never an error."""
from __future__ import annotations

import json

import cv2
import jax
import numpy as np
import pytest

from sbpose_jax import api
from sbpose_jax.commands import evaluate, predict, track
from sbpose_jax.evaluators import person_boxes
from sbpose_jax.inference import detection
from sbpose_jax.weights import rtmdet_conversion, saved_model
from test_evaluate import BATCH, SMALL, coco_args, save_tiny_model

pytest.importorskip("torch")
test_detection = pytest.importorskip("test_detection")

TRACK_SMALL = ["--config.data.input_size=(48,64)", "--config.data.heatmap_size=(12,16)",
               "--config.model.dtype='float32'"]
CLIP = "posetrack18/videos/000001_mpiinew_test"


def _save_detector(path, variables, arch, settings):
  meta = rtmdet_conversion.DetectorMeta(arch=arch, settings=settings, source="test")
  saved_model.save_model_atomic(path, jax.tree.map(np.asarray, variables), meta)
  return path


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
  """(a detector that finds people on the fixture photos, one that finds nobody anywhere)."""
  from conftest import FIXTURES  # why: the module fixture cannot take the function-scoped one
  if not FIXTURES.is_dir():
    pytest.skip("../shared/fixtures is absent")
  _, variables, arch, settings = test_detection._models("nano", str(FIXTURES))
  root = tmp_path_factory.mktemp("detectors")
  quiet = jax.tree_util.tree_map_with_path(
      lambda p, v: v - 30.0 if "rtm_cls" in jax.tree_util.keystr(p) and v.ndim == 1 else v,
      variables)
  return (_save_detector(root / "finds", variables, arch, settings),
          _save_detector(root / "nobody", quiet, arch, settings))


@pytest.fixture(scope="module")
def pose_dir(tmp_path_factory):
  return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def _photos(fixtures_dir):
  return sorted((fixtures_dir / "coco").glob("*.jpg"))[:2]


def _rgb(path):
  return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_api_finds_the_people_and_boxes_still_override(fixtures_dir, detectors, pose_dir):
  est = api.PoseEstimator.load(pose_dir, detector=detectors[0], det_score_thr=0.2,
                               input_size=(48, 64), batch_sizes=(8,))
  det = detection.Detector.load(detectors[0])
  images = [_rgb(p) for p in _photos(fixtures_dir)]
  results = est.predict_batch(images)
  assert sum(len(r) for r in results) >= 2, "the calibrated detector finds boxes"
  for image, r in zip(images, results):
    found = det([image])[0]
    keep = found.scores >= 0.2
    want = found.boxes[keep]
    np.testing.assert_allclose(r.boxes, np.c_[want[:, :2], want[:, 2:] - want[:, :2]],
                               rtol=0, atol=1e-4)
    np.testing.assert_allclose(r.box_scores, found.scores[keep], rtol=0, atol=1e-5)
    assert r.keypoints.shape == (len(want), 17, 2)
    # The same boxes given by hand: the same poses (the detector path is the boxes path).
    again = est(image, boxes=r.boxes, box_scores=r.box_scores)
    np.testing.assert_array_equal(again.keypoints, r.keypoints)
    np.testing.assert_array_equal(again.instance_scores, r.instance_scores)
  # boxes= overrides the detector.
  one = est(images[0], boxes=[[10, 20, 100, 200]])
  assert len(one) == 1 and one.boxes.tolist() == [[10, 20, 100, 200]]
  assert one.box_scores.tolist() == [1.0]


def test_api_person_free_image_is_an_empty_result(fixtures_dir, detectors, pose_dir):
  est = api.PoseEstimator.load(pose_dir, detector=detectors[1], input_size=(48, 64),
                               batch_sizes=(8,))
  for image in (_rgb(_photos(fixtures_dir)[0]), np.full((37, 300, 3), 128, np.uint8),
                np.zeros((5, 3, 3), np.uint8)):   # smaller than a stride: scaled up
    r = est(image)
    assert len(r) == 0 and r.keypoints.shape == (0, 17, 2) and r.boxes.shape == (0, 4)
    assert r.box_scores.shape == (0,)
  # Too thin to be an image at the detector's input: one line naming the sizes.
  with pytest.raises(ValueError, match=r"a 1x3000 image is 0x320 pixels .* too thin"):
    est(np.zeros((1, 3000, 3), np.uint8))


def _predict_args(pose_dir, out_dir, *inputs):
  return ["--config", "coco_res50", "--checkpoint", str(pose_dir), *map(str, inputs),
          "--out-dir", str(out_dir), "--batch-size", str(BATCH), *SMALL]


def test_predict_with_detector(fixtures_dir, detectors, pose_dir, tmp_path):
  photos = _photos(fixtures_dir)
  pngs = predict.main(_predict_args(pose_dir, tmp_path / "a", *photos)
                      + ["--detector", str(detectors[0]), "--no-nms", "--det-score-thr", "0.2"])
  assert [p.name for p in pngs] == [f"{p.stem}.png" for p in photos]
  out = json.loads((tmp_path / "a" / "predictions.json").read_text())
  det = detection.Detector.load(detectors[0])
  for entry, photo in zip(out["images"], photos):
    found = det([_rgb(photo)])[0]
    want = found.scores[found.scores >= 0.2]
    assert len(entry["instances"]) == len(want)
    assert sorted(i["box_score"] for i in entry["instances"]) == pytest.approx(sorted(want),
                                                                               abs=1e-5)
  assert sum(len(e["instances"]) for e in out["images"]) >= 2
  # A detector that finds nobody: every image written, with no instance; no error.
  pngs = predict.main(_predict_args(pose_dir, tmp_path / "b", *photos)
                      + ["--detector", str(detectors[1])])
  out = json.loads((tmp_path / "b" / "predictions.json").read_text())
  assert len(pngs) == 2 and all(e["instances"] == [] for e in out["images"])
  assert out["complete"] is True


def test_predict_refuses_boxes_and_detector(fixtures_dir, detectors, pose_dir, tmp_path, capsys):
  boxes = tmp_path / "b.json"
  boxes.write_text("{}")
  with pytest.raises(SystemExit):
    predict.main(_predict_args(pose_dir, tmp_path / "o", _photos(fixtures_dir)[0])
                 + ["--detector", str(detectors[0]), "--boxes", str(boxes)])
  assert "give --boxes or --detector, not both" in capsys.readouterr().err


def _track(pose_dir, inp, out, *extra):
  return track.main(["--config", "posetrack18_res50", "--checkpoint", str(pose_dir), str(inp),
                     "--out-dir", str(out), "--quiet", *extra, *TRACK_SMALL])


@pytest.fixture(scope="module")
def track_pose_dir(tmp_path_factory):
  return save_tiny_model(tmp_path_factory.mktemp("models") / "pt", dataset="posetrack18",
                         bias=0.5)


def test_track_with_detector_every_n_frames(fixtures_dir, detectors, track_pose_dir, tmp_path,
                                            monkeypatch):
  calls = []
  real = detection.Detector.__call__

  def counted(self, images, colour="rgb"):
    out = real(self, images, colour)
    calls.append(len(out[0].boxes))
    return out
  monkeypatch.setattr(detection.Detector, "__call__", counted)
  clip = fixtures_dir / CLIP / "000001_mpiinew_test.mp4"
  # The tracker keeps boxes scored >= track.det_score_thr: low enough for the test detector.
  thr = "--config.track.det_score_thr=0.05"
  path, _ = _track(track_pose_dir, clip, tmp_path / "every", "--detector", str(detectors[0]),
                   thr)
  assert len(calls) == 5
  res = json.loads(path.read_text())
  assert len(res["images"]) == 5 and res["annotations"]
  calls.clear()
  path, _ = _track(track_pose_dir, clip, tmp_path / "n", "--detector", str(detectors[0]),
                   "--det-every", "2", thr)
  assert len(calls) == 3, "frames 0, 2 and 4"
  assert len(json.loads(path.read_text())["images"]) == 5
  # Nobody found anywhere: the results and the video are written, with no person.
  calls.clear()
  path, _ = _track(track_pose_dir, clip, tmp_path / "nobody", "--detector", str(detectors[1]))
  res = json.loads(path.read_text())
  assert len(calls) == 5 and len(res["images"]) == 5 and res["annotations"] == []
  assert (tmp_path / "nobody" / "000001_mpiinew_test.mp4").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--det-every", "2"], "--det-every needs --detector"),
    (["--det-every", "0", "--detector", "D"], "--det-every must be at least 1")])
def test_track_bad_detector_flags(fixtures_dir, track_pose_dir, tmp_path, capsys, extra,
                                  message):
  with pytest.raises(SystemExit):
    _track(track_pose_dir, fixtures_dir / CLIP / "000001_mpiinew_test.mp4", tmp_path, *extra)
  assert message in capsys.readouterr().err


def test_evaluate_with_detector_writes_a_reusable_det_file(fixtures_dir, detectors, pose_dir,
                                                          tmp_path, capsys):
  metrics = evaluate.main(["--checkpoint", str(pose_dir), "--detector", str(detectors[0])]
                          + coco_args(fixtures_dir, tmp_path / "a"))
  captured = capsys.readouterr()
  det_file = tmp_path / "a" / "detections.json"
  dets = json.loads(det_file.read_text())
  gt = json.loads((fixtures_dir / "coco" / "test_coco.json").read_text())
  assert dets and {d["image_id"] for d in dets} <= {im["id"] for im in gt["images"]}
  assert all(d["category_id"] == 1 and len(d["bbox"]) == 4 for d in dets)
  assert "box/AP" in metrics and 0.0 <= metrics["box/AP"] <= 1.0
  assert "person boxes (pycocotools bbox): AP" in captured.out
  assert json.loads((tmp_path / "a" / "metrics.json").read_text())["detector"] == str(
      detectors[0])
  # The written file, given back with --det-file: the same pose numbers.
  again = evaluate.main(["--checkpoint", str(pose_dir), "--det-file", str(det_file)]
                        + coco_args(fixtures_dir, tmp_path / "b"))
  assert {k: v for k, v in metrics.items() if not k.startswith("box/")} == pytest.approx(again)
  # Nobody found: an empty detections.json, box AP 0 and pose AP 0, not an error.
  metrics = evaluate.main(["--checkpoint", str(pose_dir), "--detector", str(detectors[1])]
                          + coco_args(fixtures_dir, tmp_path / "c"))
  assert json.loads((tmp_path / "c" / "detections.json").read_text()) == []
  assert metrics["box/AP"] == 0.0 and metrics["AP"] in (0.0, -1.0)


def test_box_ap_is_one_for_the_ground_truth_boxes(fixtures_dir):
  ann = fixtures_dir / "coco" / "test_coco.json"
  gt = json.loads(ann.read_text())
  perfect = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0}
             for a in gt["annotations"] if not a.get("iscrowd")]
  assert person_boxes.box_ap(ann, perfect)["AP"] == pytest.approx(1.0)
  shifted = [dict(d, bbox=[d["bbox"][0] + d["bbox"][2] * 0.6] + d["bbox"][1:]) for d in perfect]
  assert person_boxes.box_ap(ann, shifted)["AP"] < 0.2
  assert person_boxes.box_ap(ann, [])["AP"] == 0.0


def test_evaluate_detector_refuses_other_datasets(pose_dir, detectors, tmp_path, capsys):
  with pytest.raises(SystemExit):
    evaluate.main(["--config", "mpii_res50", "--checkpoint", str(pose_dir), "--detector",
                   str(detectors[0]), "--out-dir", str(tmp_path)])
  err = capsys.readouterr().err
  assert "--detector" in err and "COCO detection-results" in err, err



# ------------------------------------------------------------------ export: detector + pose

@pytest.mark.parametrize("image_wh", [(200, 150), (120, 260)])
def test_export_pipeline_equals_jax(fixtures_dir, detectors, tmp_path, image_wh):
  """The exported detector + pose function (StableHLO) equals the JAX one at two picture
  sizes, on the fixture photos resized to them (the command checks it before writing; here
  the written file is run again, independently); a person-free picture gives count 0."""
  pytest.importorskip("flatbuffers")
  from sbpose_jax import exporting
  from sbpose_jax.commands import export
  from test_api import save_tiny
  pose = save_tiny(tmp_path / "pose_64x48")
  out = tmp_path / "pipeline.stablehlo"
  desc = export.main(["--checkpoint", str(pose), "--detector", str(detectors[0]), "--format",
                      "stablehlo", "--image-size", *map(str, image_wh), "--out", str(out)])
  assert desc["kind"] == "pipeline" and desc["image_size"] == list(image_wh)
  run = exporting.stablehlo_runner(out.read_bytes())
  est = api.PoseEstimator.load(pose)
  det = detection.Detector.load(detectors[0])
  reference = jax.jit(exporting.pipeline_function(det, est, image_wh))
  photos = exporting.pipeline_check_images(image_wh, [_rgb(p) for p in _photos(fixtures_dir)])
  people = 0
  for img in photos + [np.full(image_wh[::-1] + (3,), 128, np.uint8)]:
    got, want = run(img), [np.asarray(a) for a in reference(img)]
    n = int(want[2])
    assert int(got[2]) == n
    people += n
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=0, atol=1e-2)
    assert not np.asarray(got[3])[n:].any()      # rows past count are zero
  assert people > 0, "the calibrated detector finds people in the resized photos"
  nobody = exporting.pipeline_function(detection.Detector.load(detectors[1]), est, image_wh)
  assert int(jax.jit(nobody)(photos[0])[2]) == 0


def test_export_pipeline_onnx_equals_jax_at_several_sizes(fixtures_dir, detectors, tmp_path):
  """Detector + pose as one ONNX graph (opset 18): the command's check on the fixture photos
  resized to two picture sizes passes (same people, boxes/keypoints within 1e-2 px, scores
  5e-3: exporting.PIPELINE_MAX_DSCORE); the first file is run again here against JAX; opset 17
  is refused in one line."""
  pytest.importorskip("jax2onnx")
  pytest.importorskip("onnxruntime")
  from sbpose_jax import exporting
  from sbpose_jax.commands import export
  from test_api import save_tiny
  pose = save_tiny(tmp_path / "pose_64x48")
  photos = [_rgb(p) for p in _photos(fixtures_dir)]
  for image_wh in ((160, 120), (96, 176)):
    out = tmp_path / f"pipeline_{image_wh[0]}.onnx"
    desc = export.export_pipeline(pose, detectors[0], "onnx", out, image_wh, check_images=photos)
    assert desc["onnx_opset"] == 18 and desc["check"]["same_count"]
    assert sum(desc["check"]["people"]) > 0, "the calibrated detector finds people"
    assert desc["check"]["max_dpx"] <= 1e-2
    assert desc["check"]["max_dscore"] <= exporting.PIPELINE_MAX_DSCORE
  est = api.PoseEstimator.load(pose)
  image_wh = (160, 120)
  run = exporting.onnx_runner((tmp_path / "pipeline_160.onnx").read_bytes())
  reference = jax.jit(exporting.pipeline_function(detection.Detector.load(detectors[0]), est,
                                                  image_wh))
  for img in exporting.pipeline_check_images(image_wh, photos):
    got, want = run(img), [np.asarray(a) for a in reference(img)]
    n = int(want[2])
    assert int(got[2]) == n
    for i in (0, 1, 3, 4):     # boxes, box scores, keypoints, scores (2: the count)
      np.testing.assert_allclose(np.asarray(got[i])[:n], want[i][:n], rtol=0,
                                 atol=1e-2 if i in (0, 3) else exporting.PIPELINE_MAX_DSCORE)
  with pytest.raises(ValueError, match="needs opset 18 or later") as e:
    export.export_pipeline(pose, detectors[0], "onnx", tmp_path / "old.onnx", (160, 120),
                           opset=17)
  assert "\n" not in str(e.value) and not (tmp_path / "old.onnx").exists()


def test_export_pipeline_needs_the_image_size(detectors, tmp_path, capsys):
  from sbpose_jax.commands import export
  from test_api import save_tiny
  pose = save_tiny(tmp_path / "pose_64x48")
  with pytest.raises(SystemExit):
    export.main(["--checkpoint", str(pose), "--detector", str(detectors[0]), "--format",
                 "stablehlo", "--out", str(tmp_path / "x")])
  assert "give --image-size W H" in capsys.readouterr().err
