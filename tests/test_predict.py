"""The predict command: JSON + PNG per image, whole-image and given boxes, bad inputs."""
import json

import cv2
import numpy as np
import pytest

from sbpose_jax.commands import predict
from test_evaluate import BATCH, SMALL, save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def _args(model_dir, out_dir, *inputs):
  return ["--config", "coco_res50", "--checkpoint", str(model_dir), *map(str, inputs),
          "--out-dir", str(out_dir), "--batch-size", str(BATCH), *SMALL]


def test_whole_image_boxes_write_json_and_pngs(fixtures_dir, model_dir, tmp_path):
  imgs = [fixtures_dir / "coco" / "000000000785.jpg", fixtures_dir / "coco" / "000000040083.jpg"]
  pngs = predict.main(_args(model_dir, tmp_path, *imgs))
  assert [p.name for p in pngs] == ["000000000785.png", "000000040083.png"]
  out = json.loads((tmp_path / "predictions.json").read_text())
  assert out["dataset"] == "coco" and len(out["joint_names"]) == 17
  for entry, img_path, png in zip(out["images"], imgs, pngs):
    original = cv2.imread(str(img_path))
    drawn = cv2.imread(str(png))
    assert drawn.shape == original.shape
    assert (entry["width"], entry["height"]) == (original.shape[1], original.shape[0])
    (inst,) = entry["instances"]                      # the whole image is one box
    assert inst["bbox"] == [0, 0, original.shape[1], original.shape[0]]
    kp = np.asarray(inst["keypoints"])
    assert kp.shape == (17, 3) and np.isfinite(kp).all()
    assert np.abs(drawn.astype(int) - original).max() > 50    # something was drawn


def test_boxes_file_formats(fixtures_dir, model_dir, tmp_path):
  img = fixtures_dir / "coco" / "000000196141.jpg"
  dets = json.loads((fixtures_dir / "coco" / "test_coco_det_AP_H_56.json").read_text())
  mine = [d for d in dets if d["image_id"] == 196141][:3]
  coco_list = tmp_path / "dets.json"
  coco_list.write_text(json.dumps(mine))
  as_dict = tmp_path / "boxes.json"
  as_dict.write_text(json.dumps({"000000196141.jpg": [d["bbox"] + [d["score"]] for d in mine]}))
  results = []
  for boxes, out in ((coco_list, tmp_path / "a"), (as_dict, tmp_path / "b")):
    predict.main(_args(model_dir, out, img) + ["--boxes", str(boxes), "--no-nms"])
    (entry,) = json.loads((out / "predictions.json").read_text())["images"]
    results.append(entry["instances"])
  assert len(results[0]) == len(results[1]) == 3
  for a, b in zip(*results):
    assert a["bbox"] == pytest.approx(b["bbox"]) and a["keypoints"] == b["keypoints"]
  assert sorted(i["box_score"] for i in results[0]) == pytest.approx(
      sorted(d["score"] for d in mine))


@pytest.mark.parametrize("case", ["missing_image", "bad_boxes", "joint_mismatch"])
def test_bad_inputs_are_one_clear_error(fixtures_dir, model_dir, tmp_path, capsys, case):
  img = fixtures_dir / "coco" / "000000000785.jpg"
  args = _args(model_dir, tmp_path / "o", img)
  if case == "missing_image":
    args = _args(model_dir, tmp_path / "o", tmp_path / "nope.jpg")
    want = "nope.jpg"
  elif case == "bad_boxes":
    (tmp_path / "b.json").write_text(json.dumps({"000000000785": [[1, 2, 3]]}))
    args += ["--boxes", str(tmp_path / "b.json")]
    want = "[x, y, w, h]"
  else:
    args = _args(save_tiny_model(tmp_path / "m14", num_joints=14, dataset="aic"),
                 tmp_path / "o", img)
    want = "14 joints"
  with pytest.raises(SystemExit):
    predict.main(args)
  assert want in capsys.readouterr().err


def test_video_input_writes_an_annotated_video(fixtures_dir, model_dir, tmp_path):
  from sbpose_jax import video  # why: pyAV loads only when a video is read or written
  clip = fixtures_dir / "posetrack18/videos/000001_mpiinew_test/000001_mpiinew_test.mp4"
  written = predict.main(_args(model_dir, tmp_path, clip))
  assert written == [tmp_path / "000001_mpiinew_test.mp4"]
  assert video.open_source(str(written[0])).num_frames == 5
  frames = json.loads((tmp_path / "000001_mpiinew_test.json").read_text())["frames"]
  assert len(frames) == 5 and all(len(f) == 1 for f in frames)
