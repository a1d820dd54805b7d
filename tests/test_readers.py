"""Readers against the real samples in ../shared/fixtures, each json re-read independently here.

The reference below is a literal per-annotation transcription of MMPose 0.x's readers (Python
floats, one instance at a time), so the vectorised readers must agree with it bit for bit.
"""
import dataclasses
import json
import pathlib
import pickle

import numpy as np
import pytest

from sbpose_jax.data import readers
from sbpose_jax.data.records import Records, concat

WHOLEBODY = ("keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts")


def _cs(x, y, w, h, input_size, padding=1.25):
  """MMPose 0.x `_xywh2cs` (test mode), written the way the reference writes it."""
  aspect = input_size[0] / input_size[1]
  center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
  if w > aspect * h:
    h = w * 1.0 / aspect
  elif w < aspect * h:
    w = h * aspect
  scale = np.array([w / 200.0, h / 200.0], dtype=np.float32) * padding
  return center, scale


def _ref_coco_gt(ann_file, dataset, input_size=(192, 256)):
  data = json.loads(pathlib.Path(ann_file).read_text())
  out = []
  for im in data["images"]:
    width, height = im["width"], im["height"]
    for a in data["annotations"]:
      if a["image_id"] != im["id"] or a.get("iscrowd", 0) or "keypoints" not in a:
        continue
      x, y, w, h = a["bbox"]
      x1, y1 = max(0, x), max(0, y)
      x2 = min(width - 1, x1 + max(0, w - 1))   # 2020: w-1
      y2 = min(height - 1, y1 + max(0, h - 1))
      if not (("area" not in a or a["area"] > 0) and x2 > x1 and y2 > y1):
        continue
      if max(a["keypoints"]) == 0:
        continue
      if dataset != "coco_wholebody" and a.get("num_keypoints", 1) == 0:
        continue
      fields = WHOLEBODY if dataset == "coco_wholebody" else ("keypoints",)
      pts = np.array(sum((a[f] for f in fields), [])).reshape(-1, 3)
      vis = (pts[:, 2] > 0) * 1.0 if dataset == "coco_wholebody" else np.minimum(1, pts[:, 2])
      center, scale = _cs(x1, y1, x2 - x1, y2 - y1, input_size)
      area = 0.53 * w * h if dataset in ("aic", "crowdpose") else a.get("area", 0)
      out.append(dict(file=im["file_name"], image_id=im["id"], ann_id=a["id"],
                      box=[x1, y1, x2 - x1, y2 - y1], center=center, scale=scale,
                      joints=pts[:, :2], vis=vis, area=area, ann=a, image=im))
  return out


def _check(rec, ref, *, score=1.0):
  assert len(rec) == len(ref) > 0
  for i, r in enumerate(ref):
    assert rec.image_files[rec.image_index[i]] == r["file"]
    assert rec.image_ids[rec.image_index[i]] == r["image_id"]
    assert rec.ann_ids[i] == r["ann_id"]
    # float64: the clean box as the reference's Python floats (the frozen shift scales it).
    np.testing.assert_array_equal(rec.bbox_xywh[i], np.float64(r["box"]))
    np.testing.assert_array_equal(rec.center_xy[i], r["center"])
    np.testing.assert_array_equal(rec.scale_wh[i], r["scale"])
    np.testing.assert_array_equal(rec.joints_xy[i], np.float32(r["joints"]))
    np.testing.assert_array_equal(rec.joints_vis[i], np.float32(r["vis"]))
    assert rec.area[i] == np.float32(r["area"])
  np.testing.assert_array_equal(rec.bbox_score, score)
  assert set(np.unique(rec.joints_vis)) <= {0.0, 1.0}


@pytest.mark.parametrize("dataset,ann", [
    ("coco", "coco/test_coco.json"), ("coco_wholebody", "coco/test_coco_wholebody.json"),
    ("ochuman", "ochuman/test_ochuman.json"), ("aic", "aic/test_aic.json"),
    ("crowdpose", "crowdpose/test_crowdpose.json"),
    ("posetrack18", "posetrack18/annotations/test_posetrack18_val.json")])
def test_coco_style_gt_matches_json(fixtures_dir, dataset, ann):
  root = (fixtures_dir / ann).parent
  rec = readers.read(dataset, fixtures_dir / ann, root)
  ref = _ref_coco_gt(fixtures_dir / ann, dataset)
  _check(rec, ref)
  assert rec.dataset == dataset and rec.image_root == str(root)
  assert rec.image_files.dtype.kind == "U" and rec.joints_xy.dtype == np.float32
  images = json.loads((fixtures_dir / ann).read_text())["images"]
  assert rec.num_images == len(images)   # every GT image, also those without people
  np.testing.assert_array_equal(rec.image_wh, [(im["width"], im["height"]) for im in images])
  if dataset == "crowdpose":
    np.testing.assert_allclose(rec.extra["crowd_index"],
                               [r["image"]["crowdIndex"] for r in ref], rtol=1e-6)
  if dataset == "posetrack18":
    np.testing.assert_array_equal(rec.extra["track_id"], [r["ann"]["track_id"] for r in ref])
    np.testing.assert_array_equal(rec.extra["bbox_head"], [r["ann"]["bbox_head"] for r in ref])
    np.testing.assert_array_equal(rec.image_extra["vid_id"], [im["vid_id"] for im in images])


def test_coco_values_by_hand(fixtures_dir):
  """Annotation 442619 (640x425 image, bbox 280.79 44.73 218.7 346.68), worked out by hand."""
  rec = readers.read_coco(fixtures_dir / "coco/test_coco.json", fixtures_dir / "coco")
  i = int(np.flatnonzero(rec.ann_ids == 442619)[0])
  # Clean box is 1 px narrower and shorter (2020 sanitising): w = 217.7, h = 345.68.
  np.testing.assert_allclose(rec.bbox_xywh[i], [280.79, 44.73, 217.7, 345.68], rtol=1e-6)
  np.testing.assert_allclose(rec.center_xy[i], [389.64, 217.57], rtol=1e-6)
  # Narrower than 3:4, so w = 0.75 * 345.68 = 259.26; scale = (259.26, 345.68) / 200 * 1.25.
  np.testing.assert_allclose(rec.scale_wh[i], [1.620375, 2.1605], rtol=1e-6)
  # 14 annotations, two with num_keypoints == 0 dropped.
  assert len(rec) == 12 and 1202706 not in rec.ann_ids and 508900 not in rec.ann_ids
  other = readers.read_coco(fixtures_dir / "coco/test_coco.json", ".", input_size=(288, 384))
  np.testing.assert_array_equal(other.scale_wh, rec.scale_wh)   # same aspect ratio
  square = readers.read_coco(fixtures_dir / "coco/test_coco.json", ".", input_size=(256, 256))
  assert square.scale_wh[i, 0] == square.scale_wh[i, 1] == np.float32(345.68 / 200 * 1.25)


@pytest.mark.parametrize("dataset,ann,det,thr", [
    ("coco", "coco/test_coco.json", "coco/test_coco_det_AP_H_56.json", 0.0),
    ("coco_wholebody", "coco/test_coco_wholebody.json", "coco/test_coco_det_AP_H_56.json", 0.5),
    ("crowdpose", "crowdpose/test_crowdpose.json", "crowdpose/test_crowdpose_det_AP_40.json", 0.),
    ("posetrack18", "posetrack18/annotations/test_posetrack18_val.json",
     "posetrack18/annotations/test_posetrack18_human_detections.json", 0.4)])
def test_detection_boxes_match_json(fixtures_dir, dataset, ann, det, thr):
  rec = readers.read(dataset, fixtures_dir / ann, fixtures_dir, use_gt_bbox=False,
                     det_file=fixtures_dir / det, det_score_thr=thr)
  dets = [d for d in json.loads((fixtures_dir / det).read_text())
          if d["category_id"] == 1 and d["score"] >= thr]
  assert len(rec) == len(dets) > 0
  all_dets = json.loads((fixtures_dir / det).read_text())
  assert thr == 0 or len(dets) < len(all_dets)   # the threshold really filters
  for i, d in enumerate(dets):
    assert rec.image_ids[rec.image_index[i]] == d["image_id"]
    np.testing.assert_array_equal(rec.bbox_xywh[i], np.float64(d["bbox"]))   # as is
    center, scale = _cs(*d["bbox"], (192, 256))
    np.testing.assert_array_equal(rec.center_xy[i], center)
    np.testing.assert_array_equal(rec.scale_wh[i], scale)
    assert rec.bbox_score[i] == np.float32(d["score"])
  assert (rec.ann_ids == -1).all() and (rec.joints_vis == 0).all()
  if dataset == "posetrack18":
    assert (rec.extra["track_id"] == -1).all()
  if dataset == "crowdpose":
    assert set(rec.extra["crowd_index"]) == {np.float32(0.33), np.float32(0.39)}


def test_posetrack_per_video_files_equal_merged(fixtures_dir):
  ann = fixtures_dir / "posetrack18/annotations"
  merged = readers.read_posetrack18(ann / "test_posetrack18_val.json", fixtures_dir)
  videos = readers.read_posetrack18(ann / "val", fixtures_dir)
  assert len(videos) == len(merged) == 14 and videos.num_images == 3
  order = [int(np.flatnonzero(merged.ann_ids == a)[0]) for a in videos.ann_ids]
  assert sorted(order) == list(range(len(merged)))
  for name in ("center_xy", "scale_wh", "joints_xy", "joints_vis", "bbox_xywh"):
    np.testing.assert_array_equal(getattr(videos, name), getattr(merged, name)[order])
  np.testing.assert_array_equal(videos.extra["track_id"], merged.extra["track_id"][order])
  files = [videos.image_files[i] for i in videos.image_index]
  assert files == [merged.image_files[merged.image_index[i]] for i in order]
  # The per-video file each frame belongs to, as the PoseTrack evaluator writes them.
  assert sorted(videos.image_extra["sequence"]) == sorted(p.stem for p in (ann / "val").iterdir())
  dets = readers.read_posetrack18(
      ann / "val", fixtures_dir, use_gt_bbox=False, det_score_thr=0.4,
      det_file=ann / "test_posetrack18_human_detections.json")
  assert len(dets) > 0 and (dets.bbox_score >= 0.4).all()


def test_mpii_matches_json(fixtures_dir):
  path = fixtures_dir / "mpii/test_mpii.json"
  rec = readers.read_mpii(path, fixtures_dir / "mpii")
  data = json.loads(path.read_text())
  assert len(rec) == len(data) == 5
  # The 2020 reader (MMPose v0.8 `_get_db`) kept centre and scale as np.float (float64).
  assert rec.center_xy.dtype == rec.scale_wh.dtype == np.float64
  for i, a in enumerate(data):   # json order: PCKh pairs predictions with GT by row
    c = np.array(a["center"], dtype=np.float64)
    s = np.array([a["scale"], a["scale"]], dtype=np.float64)
    if c[0] != -1:
      c[1] = c[1] + 15 * s[1]
      s = s * 1.25
    np.testing.assert_array_equal(rec.center_xy[i], c - 1)
    np.testing.assert_array_equal(rec.scale_wh[i], s)
    np.testing.assert_allclose(rec.joints_xy[i], np.array(a["joints"]) - 1, rtol=1e-6)
    np.testing.assert_array_equal(rec.joints_vis[i], a["joints_vis"])
    assert rec.image_files[rec.image_index[i]] == a["image"]
    assert rec.image_ids[rec.image_index[i]] == int(a["image"][:-4])
  assert rec.joints_vis.min() == 0 and (rec.bbox_xywh == 0).all()


def test_mpii_gt_mat(fixtures_dir, tmp_path):
  scipy_io = pytest.importorskip("scipy.io")
  rng = np.random.default_rng(0)
  heads = rng.uniform(0, 500, (2, 2, 5))
  missing = rng.integers(0, 2, (16, 5))
  pos = rng.uniform(0, 500, (16, 2, 5))
  scipy_io.savemat(tmp_path / "gt.mat", dict(headboxes_src=heads, jnt_missing=missing,
                                             pos_gt_src=pos, dataset_joints=np.zeros((1, 16))))
  ann = fixtures_dir / "mpii/test_mpii.json"
  rec = readers.read_mpii(ann, ".", gt_mat_file=tmp_path / "gt.mat")
  np.testing.assert_allclose(rec.extra["headbox"][3], [*heads[0, :, 3], *heads[1, :, 3]],
                             rtol=1e-6)
  np.testing.assert_array_equal(rec.extra["jnt_missing"][2], missing[:, 2] > 0)
  np.testing.assert_allclose(rec.extra["pos_gt_src"][4, 7], pos[7, :, 4], rtol=1e-6)
  scipy_io.savemat(tmp_path / "short.mat", dict(
      headboxes_src=heads[..., :4], jnt_missing=missing[:, :4], pos_gt_src=pos[..., :4]))
  with pytest.raises(ValueError, match="short.mat.*4 instances.*5"):
    readers.read_mpii(ann, ".", gt_mat_file=tmp_path / "short.mat")


def test_mpii_trb_matches_json(fixtures_dir):
  path = fixtures_dir / "mpii/test_mpii_trb.json"
  rec = readers.read_mpii_trb(path, fixtures_dir / "mpii", input_size=(256, 256))
  data = json.loads(path.read_text())
  names = {im["id"]: im["file_name"] for im in data["images"]}
  anns = sorted((a for a in data["annotations"] if max(a["keypoints"]) > 0), key=lambda a: a["id"])
  assert len(rec) == len(anns) == 5
  assert rec.center_xy.dtype == np.float32 and rec.scale_wh.dtype == np.float64
  for i, a in enumerate(anns):
    pts = np.array(a["keypoints"]).reshape(40, 3)
    assert rec.ann_ids[i] == a["id"]
    assert rec.image_files[rec.image_index[i]] == names[a["image_id"]]
    np.testing.assert_array_equal(rec.center_xy[i], np.float32(a["center"]))   # no -1, no +15
    # No 1.25 padding for TRB; float64 as the 2020 reader (image_size / scale / 200.0).
    np.testing.assert_array_equal(rec.scale_wh[i], np.array([256, 256]) / a["scale"] / 200.0)
    np.testing.assert_array_equal(rec.joints_xy[i], np.float32(pts[:, :2]))
    np.testing.assert_array_equal(rec.joints_vis[i], np.minimum(pts[:, 2], 1))
  assert np.isnan(rec.extra["headbox"]).all()   # this sample carries no head boxes
  rec = readers.read_mpii_trb(path, ".", input_size=(192, 256))
  np.testing.assert_allclose(rec.scale_wh[:, 0] / rec.scale_wh[:, 1], 0.75, rtol=1e-6)


# ------------------------------------------------------------------------------ bad data
def _write(tmp_path, name, obj) -> pathlib.Path:
  path = tmp_path / name
  path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return path


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d["annotations"][3].update(keypoints=[1.0] * 50), r"annotations\[3\]\.keypoints"),
    (lambda d: d.pop("annotations"), "'annotations'"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\]\.bbox"),
    (lambda d: d["annotations"][1].update(image_id=12345), r"annotations\[1\]\.image_id.*12345"),
    (lambda d: d["images"][2].pop("width"), r"images\[2\]\.width"),
    (lambda d: d["annotations"][0].update(keypoints=["a"] * 51), "annotations"),
])
def test_bad_coco_file_names_field_and_file(fixtures_dir, tmp_path, mutate, field):
  data = json.loads((fixtures_dir / "coco/test_coco.json").read_text())
  mutate(data)
  path = _write(tmp_path, "broken_ann.json", data)
  with pytest.raises(ValueError, match=f"broken_ann.json.*{field}"):
    readers.read_coco(path, ".")


def test_bad_files(fixtures_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="no_such.json"):
    readers.read_coco(tmp_path / "no_such.json", ".")
  with pytest.raises(ValueError, match="not_json.json.*not a valid JSON"):
    readers.read_aic(_write(tmp_path, "not_json.json", "{'images': oops"), ".")
  with pytest.raises(ValueError, match="as_list.json.*COCO-style"):
    readers.read_ochuman(_write(tmp_path, "as_list.json", [1, 2]), ".")
  data = json.loads((fixtures_dir / "coco/test_coco_wholebody.json").read_text())
  data["annotations"][5].pop("foot_kpts")
  with pytest.raises(ValueError, match=r"wb.json.*annotations\[5\]\.foot_kpts.*missing"):
    readers.read_coco_wholebody(_write(tmp_path, "wb.json", data), ".")
  mpii = json.loads((fixtures_dir / "mpii/test_mpii.json").read_text())
  mpii[2]["joints"] = mpii[2]["joints"][:14]
  with pytest.raises(ValueError, match=r"mpii.json.*\[2\]\.joints.*14 values, expected 16"):
    readers.read_mpii(_write(tmp_path, "mpii.json", mpii), ".")
  trb = json.loads((fixtures_dir / "mpii/test_mpii_trb.json").read_text())
  trb["annotations"][1].pop("center")
  with pytest.raises(ValueError, match=r"trb.json.*annotations\[1\]\.center"):
    readers.read_mpii_trb(_write(tmp_path, "trb.json", trb), ".")
  ann = fixtures_dir / "coco/test_coco.json"
  with pytest.raises(FileNotFoundError, match="detection results file.*dets.json"):
    readers.read_coco(ann, ".", use_gt_bbox=False, det_file=tmp_path / "dets.json")
  dets = [{"bbox": [1, 2, 3, 4], "category_id": 1, "image_id": 785, "score": 0.9},
          {"bbox": [1, 2, 3], "category_id": 1, "image_id": 785, "score": 0.9}]
  with pytest.raises(ValueError, match=r"dets.json.*\[1\]\.bbox"):
    readers.read_coco(ann, ".", use_gt_bbox=False, det_file=_write(tmp_path, "dets.json", dets))
  dets[1] = {"bbox": [1, 2, 3, 4], "category_id": 1, "image_id": 7, "score": 0.9}
  with pytest.raises(ValueError, match=r"dets.json.*\[1\]\.image_id.*7"):
    readers.read_coco(ann, ".", use_gt_bbox=False, det_file=_write(tmp_path, "dets.json", dets))
  with pytest.raises(ValueError, match="det_file"):
    readers.read_coco(ann, ".", use_gt_bbox=False)
  with pytest.raises(ValueError, match="no reader"):
    readers.read("coco17", ann, ".")


def test_empty_files_give_empty_records(tmp_path):
  coco = _write(tmp_path, "empty.json", {"images": [], "annotations": []})
  for name in ("coco", "coco_wholebody", "ochuman", "aic", "crowdpose", "posetrack18",
               "mpii_trb"):
    rec = readers.read(name, coco, ".")
    assert len(rec) == 0 and rec.joints_xy.shape[1:] == (rec.num_joints, 2)
  assert len(readers.read_mpii(_write(tmp_path, "mpii.json", []), ".")) == 0


def test_read_split(fixtures_dir):
  from sbpose_jax.commands import config as config_lib
  cfg = config_lib.load("coco_res50", [
      f"--config.data.root={fixtures_dir / 'coco'}", "--config.data.train_ann=test_coco.json",
      "--config.data.train_images=.", "--config.data.val_ann=test_coco.json",
      "--config.data.val_images=.", "--config.data.det_file=test_coco_det_AP_H_56.json",
      "--config.data.use_gt_bbox=False", "--config.data.det_score_thr=0.5"]).data
  assert len(readers.read_split(cfg, "train")) == 12
  val = readers.read_split(cfg, "val")
  assert len(val) > 12 and (val.bbox_score >= 0.5).all() and (val.ann_ids == -1).all()


# ------------------------------------------------------------------------------- Records
def test_records_select_concat_and_validation(fixtures_dir):
  rec = readers.read_crowdpose(fixtures_dir / "crowdpose/test_crowdpose.json", ".")
  sub = rec.select([3, 1])
  assert len(sub) == 2 and sub.num_images == rec.num_images and sub.num_joints == 14
  np.testing.assert_array_equal(sub.joints_xy, rec.joints_xy[[3, 1]])
  np.testing.assert_array_equal(sub.extra["crowd_index"], rec.extra["crowd_index"][[3, 1]])
  assert len(rec.select(rec.image_index == 0)) == int((rec.image_index == 0).sum())
  both = concat([rec, sub])
  assert len(both) == 6 and both.num_images == 2 * rec.num_images
  assert both.image_path(5) == rec.image_path(1)
  with pytest.raises(ValueError, match="joints_xy.*shape"):
    Records(**{**rec._as_dict(), "joints_xy": rec.joints_xy[:, :13]})
  with pytest.raises(ValueError, match="unknown dataset"):
    Records(**{**rec._as_dict(), "dataset": "coco18"})
  with pytest.raises(ValueError, match="image_index out of range"):
    Records(**{**rec._as_dict(), "image_index": rec.image_index + 5})
  with pytest.raises(ValueError, match=r"extra\['crowd_index'\]"):
    Records(**{**rec._as_dict(), "extra": {"crowd_index": np.zeros(3)}})


def test_records_save_load_mmap_pickle(fixtures_dir, tmp_path):
  rec = readers.read_posetrack18(fixtures_dir / "posetrack18/annotations/val", fixtures_dir)
  rec.save(tmp_path / "rec")
  for mmap in (True, False):
    back = Records.load(tmp_path / "rec", mmap=mmap)
    assert isinstance(back.joints_xy, np.memmap) == mmap
    for name in ("image_files", "image_ids", "center_xy", "joints_vis", "ann_ids"):
      np.testing.assert_array_equal(getattr(back, name), getattr(rec, name))
    np.testing.assert_array_equal(back.image_extra["sequence"], rec.image_extra["sequence"])
  mapped = Records.load(tmp_path / "rec", mmap=True)
  # Memory-mapped arrays pickle as their file (spawned workers share the page cache).
  small, full = len(pickle.dumps(mapped)), len(pickle.dumps(rec))
  assert small < full - rec.joints_xy.nbytes
  again = pickle.loads(pickle.dumps(mapped))
  names = [f.name for f in dataclasses.fields(Records) if f.name not in ("dataset", "image_root")]
  for name in names:   # every array, the image names included, re-mapped rather than copied
    value = getattr(again, name)
    for v in value.values() if isinstance(value, dict) else [value]:
      assert isinstance(v, np.memmap), name
  np.testing.assert_array_equal(again.extra["track_id"], rec.extra["track_id"])
  np.testing.assert_array_equal(again.image_files, rec.image_files)
  shifted = dataclasses.replace(mapped, center_xy=mapped.center_xy + 1)
  again = pickle.loads(pickle.dumps(shifted))
  assert isinstance(again.joints_xy, np.memmap) and not isinstance(again.center_xy, np.memmap)
  np.testing.assert_array_equal(again.center_xy, rec.center_xy + 1)
  again = pickle.loads(pickle.dumps(rec))
  np.testing.assert_array_equal(again.scale_wh, rec.scale_wh)
  assert len(pickle.loads(pickle.dumps(mapped.select([0, 2])))) == 2
  with pytest.raises(FileNotFoundError, match="meta.json"):
    Records.load(tmp_path)
