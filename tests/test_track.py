"""The track command end to end (tiny random model on the fixture clip), and tracking of a
synthetic clip of moving stick people with ground-truth-like boxes."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from sbpose_jax import keypoints, video

from sbpose_jax.weights import saved_model as sm

from sbpose_jax.commands import track
from sbpose_jax.data import synthetic
from sbpose_jax.tracking import matching, tracker, video_loop
from sbpose_jax.tracking import results as track_results


SMALL = ["--config.data.input_size=(48,64)", "--config.data.heatmap_size=(12,16)",
         "--config.model.dtype='float32'"]
CLIP = "posetrack18/videos/000001_mpiinew_test"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A random ResNet-18 (width 8) PoseTrack18 model saved with save_model; no init compile."""
  path = tmp_path_factory.mktemp("models") / "tiny"
  meta = sm.ModelMeta(depth=18, width=8, num_joints=17, deconv_filters=(16, 16, 16),
                      dataset="posetrack18", colour_order="rgb", source="test")
  # A positive bias lifts the maxima above the joint threshold.
  sm.save_model(path, sm.random_variables(meta, (64, 48), bias=0.5), meta)
  return path


def _run(model_dir, inp, out, *extra):
  return track.main(["--config", "posetrack18_res50", "--checkpoint", str(model_dir), str(inp),
                     "--out-dir", str(out), "--quiet", *extra, *SMALL])


def _check_outputs(out, name, n_frames):
  res = json.loads((out / f"{name}.json").read_text())
  assert len(res["images"]) == n_frames
  assert res["categories"][0]["keypoints"] == list(keypoints.get("posetrack18").joint_names)
  for a in res["annotations"]:
    assert len(a["keypoints"]) == 51 and len(a["scores"]) == 17 and a["track_id"] >= 0
  assert video.open_source(str(out / f"{name}.mp4")).num_frames == n_frames
  return res


def test_track_mp4_and_frame_folder(fixtures_dir, model_dir, tmp_path):
  clip = fixtures_dir / CLIP
  _run(model_dir, clip / "000001_mpiinew_test.mp4", tmp_path / "a", "--frames")
  res = _check_outputs(tmp_path / "a", "000001_mpiinew_test", 5)
  assert res["annotations"], "the whole-frame box of frame 0 yields a pose"
  assert len(list((tmp_path / "a/000001_mpiinew_test").glob("*.png"))) == 5
  folder = tmp_path / "frames"
  folder.mkdir()
  for f in sorted(clip.glob("*.jpg")):
    shutil.copy(f, folder / f.name)
  _run(model_dir, folder, tmp_path / "b", "--similarity", "iou")
  _check_outputs(tmp_path / "b", "frames", 5)


def test_truncated_video_names_the_frame_and_keeps_the_work(model_dir, tmp_path, capsys):
  import av  # why: pyAV loads only when a video is read or written
  src = tmp_path / "clip.mp4"
  with av.open(str(src), "w", options={"movflags": "faststart"}) as c:
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
    rng = np.random.default_rng(0)
    for _ in range(12):
      img = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
      for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  data = src.read_bytes()
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(data[:int(len(data) * 0.6)])
  with pytest.raises(SystemExit):
    _run(model_dir, bad, tmp_path / "o")
  err = capsys.readouterr().err
  assert "error:" in err and "frame" in err and "written" in err
  res = json.loads((tmp_path / "o/bad.json").read_text())
  assert 0 < len(res["images"]) < 12
  (tmp_path / "garbage.mp4").write_bytes(b"not a video" * 50)
  with pytest.raises(SystemExit):
    _run(model_dir, tmp_path / "garbage.mp4", tmp_path / "o2")
  assert "cannot open video" in capsys.readouterr().err


def test_posetrack_input_with_boxes_and_eval(fixtures_dir, model_dir, tmp_path, capsys):
  """A 5-frame PoseTrack18 sequence over the fixture frames, GT boxes as detections, --eval."""
  root = tmp_path / "pt"
  (root / "images/val/clip").mkdir(parents=True)
  (root / "annotations/val").mkdir(parents=True)
  clip = sorted((fixtures_dir / CLIP).glob("*.jpg"))
  names = list(keypoints.get("posetrack18").joint_names)
  images, anns, dets = [], [], []
  for i, f in enumerate(clip):
    shutil.copy(f, root / "images/val/clip" / f.name)
    images.append({"id": 100 + i, "file_name": f"images/val/clip/{f.name}", "frame_id": i})
    k = np.zeros((17, 3))
    k[:, 0] = 600 + 10 * np.arange(17) % 60
    k[:, 1] = 200 + 20 * np.arange(17)
    k[:, 2] = 1
    anns.append({"image_id": 100 + i, "track_id": 0, "keypoints": k.reshape(-1).tolist(),
                 "bbox_head": [600, 150, 60, 50], "bbox": [560, 150, 160, 400]})
    dets.append({"image_id": 100 + i, "category_id": 1, "bbox": [560, 150, 160, 400],
                 "score": 0.9})
  seq = root / "annotations/val/clip.json"
  seq.write_text(json.dumps({"images": images, "annotations": anns,
                             "categories": [{"id": 1, "name": "person", "keypoints": names}]}))
  (tmp_path / "dets.json").write_text(json.dumps(dets))
  _, scores = _run(model_dir, seq, tmp_path / "o", "--boxes", str(tmp_path / "dets.json"),
                   "--eval", "--similarity", "oks")
  res = _check_outputs(tmp_path / "o", "clip", 5)
  assert [im["id"] for im in res["images"]] == [100, 101, 102, 103, 104]
  assert set(scores) >= {"MOTA", "MOTP", "Prec", "Rec", "AP_Total"}
  assert "MOTA" in capsys.readouterr().out


def _synthetic_clip(n_frames=12, size=(320, 240), seed=0):
  """Two stick people walking towards each other's side; GT joints per frame."""
  rng = np.random.default_rng(seed)
  w, h = size
  poses = [synthetic.sample_pose(rng, 150.0, (70.0, 170.0), 0.0)[0],
           synthetic.sample_pose(rng, 150.0, (250.0, 165.0), 0.0)[0]]
  vel = [np.array([6.0, 0.0]), np.array([-6.0, 0.0])]
  colours = [rng.integers(40, 220, 3) for _ in poses]
  frames, joints = [], []
  for t in range(n_frames):
    img = np.full((h, w, 3), 90, np.uint8)
    js = []
    for p, v, c in zip(poses, vel, colours):
      j = np.asarray(p, np.float64)[:, :2] + v * t
      js.append(j)
      for a, b in keypoints.get("coco").skeleton:
        cv2.line(img, tuple(np.rint(j[a]).astype(int)), tuple(np.rint(j[b]).astype(int)),
                 tuple(int(x) for x in c), 4)
    frames.append(img)
    joints.append(np.stack(js))
  return frames, joints


@pytest.mark.parametrize("similarity", ["iou", "oks", "flow"])
def test_synthetic_people_keep_their_ids(similarity):
  frames, joints = _synthetic_clip()
  info = keypoints.get("coco")
  trk = tracker.Tracker(tracker.TrackSettings(similarity=similarity), info.sigmas_array)
  ids = []
  for img, js in zip(frames, joints):
    gt_boxes = np.concatenate([js.min(1) - 5, js.max(1) + 5], 1)
    boxes, scores = trk.propose(img, gt_boxes, np.full(len(gt_boxes), 0.9))
    # "Pose model": the GT pose of the person whose box overlaps most, slightly moved.
    who = np.argmax(matching.box_iou(boxes, gt_boxes), axis=1)
    kp = np.concatenate([js[who] + 0.5, np.full(js[who].shape[:2] + (1,), 0.9)], -1)
    people = trk.update(kp, boxes, scores)
    by_person = {}
    for p in people:
      d = np.linalg.norm(js.mean(1) - p["keypoints"][:, :2].mean(0), axis=1)
      by_person[int(np.argmin(d))] = p["track_id"]
    ids.append((by_person.get(0), by_person.get(1)))
  assert len(set(ids)) == 1 and None not in ids[0] and ids[0][0] != ids[0][1], ids


def test_unreadable_frame_in_a_folder(fixtures_dir, model_dir, tmp_path, capsys):
  folder = tmp_path / "frames"
  folder.mkdir()
  for f in sorted((fixtures_dir / CLIP).glob("*.jpg"))[:3]:
    shutil.copy(f, folder / f.name)
  (folder / "000001.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(SystemExit):
    _run(model_dir, folder, tmp_path / "o")
  err = capsys.readouterr().err
  assert "cannot read frame 1" in err and "000001.jpg" in err
  assert len(json.loads((tmp_path / "o/frames.json").read_text())["images"]) == 1


def test_read_boxes_formats(tmp_path):
  src = video.Source("x", "folder", "x", 30.0, 3, ["a.jpg", "b.jpg", "c.jpg"], "")
  p = tmp_path / "b.json"
  p.write_text(json.dumps({"b.jpg": [[10, 20, 30, 40, 0.7]], "2": [[0, 0, 5, 5]]}))
  boxes = video_loop.read_boxes(str(p), src)
  np.testing.assert_allclose(boxes[1][0], [[10, 20, 40, 60]])
  np.testing.assert_allclose(boxes[1][1], [0.7])
  np.testing.assert_allclose(boxes[2][1], [1.0])
  p.write_text(json.dumps([{"image_id": 0, "bbox": [1, 2, 3, 4], "score": 0.5,
                            "category_id": 1}, {"image_id": 0, "bbox": [1, 2, 3, 4],
                                                "category_id": 2}]))
  boxes = video_loop.read_boxes(str(p), src)
  assert list(boxes) == [0] and len(boxes[0][0]) == 1
  p.write_text(json.dumps("nonsense"))
  with pytest.raises(ValueError, match="--boxes"):
    video_loop.read_boxes(str(p), src)


def test_synthetic_tracking_scores_full_mota():
  """Tracker output (results_json) scored by posetrack_mota: ids kept through → MOTA 100."""
  from sbpose_jax.evaluators import posetrack_mota as pm  # why: only this test or script needs it
  frames, joints = _synthetic_clip()
  info = keypoints.get("posetrack18")     # same joint order as COCO but for head_bottom/top
  images = [{"id": 10 + t, "file_name": f"images/val/syn/{t:06d}.jpg"}
            for t in range(len(frames))]
  src = video.Source("syn.json", "posetrack", "syn", 30.0, len(frames), [], "", images)
  trk = tracker.Tracker(tracker.TrackSettings(similarity="flow"), info.sigmas_array)
  out, gt_anns = [], []
  for t, (img, js) in enumerate(zip(frames, joints)):
    gt_boxes = np.concatenate([js.min(1) - 5, js.max(1) + 5], 1)
    boxes, scores = trk.propose(img, gt_boxes, np.full(len(gt_boxes), 0.9))
    who = np.argmax(matching.box_iou(boxes, gt_boxes), axis=1)
    kp = np.concatenate([js[who] + 0.5, np.full(js[who].shape[:2] + (1,), 0.9)], -1)
    out.append(trk.update(kp, boxes, scores))
    for pid, j in enumerate(js):
      head = np.concatenate([j[:5].min(0) - 8, j[:5].max(0) - j[:5].min(0) + 16])
      gt_anns.append({"image_id": 10 + t, "track_id": 7 + pid, "bbox_head": head.tolist(),
                      "keypoints": np.concatenate([j, np.ones((17, 1))], 1).reshape(-1).tolist()})
  res = track_results.results_json(src, info, out)
  gt = {"images": images, "annotations": gt_anns, "categories": res["categories"]}
  scores = pm.evaluate_sequences([(pm.parse_sequence(gt, predictions=False),
                                   pm.parse_sequence(res), "syn")])
  assert scores["MOTA"] == pytest.approx(100.0)
  assert scores["Prec"] == pytest.approx(100.0) and scores["Rec"] == pytest.approx(100.0)
