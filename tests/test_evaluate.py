"""The evaluate command on the real COCO samples, against an independent reference pipeline.

The reference below follows MMPose 0.x test-time code (docs/reference.md §1, §2, §5) with
json, cv2 and numpy only: box → centre/scale, cv2.getAffineTransform + warpAffine crop,
normalisation, two separate forward passes (plain and mirrored), flip_back + shift, 'default'
decoding, transform_preds, rescoring and OKS-NMS.
"""
import json
import pathlib

import jax
import numpy as np
import pytest

import cv2
from helpers import mm_decode_default, mm_get_affine_transform, mm_oks_nms
from sbpose_jax import keypoints
from sbpose_jax.commands import evaluate
from sbpose_jax.weights import saved_model
from sbpose_jax.evaluators import loop
from sbpose_jax.commands import config as config_lib

# Small crops keep the ResNet-18 cheap on a CPU; every test shares one compiled shape.
SMALL = ["--config.data.input_size=(48,64)", "--config.data.heatmap_size=(12,16)",
         "--config.data.num_workers=0", "--config.model.dtype='float32'"]
BATCH = 16


def save_tiny_model(path, num_joints=17, dataset="coco", colour_order="rgb", bias=0.25):
  """A random ResNet-18 PoseResNet saved with saved_model.save_model (no init compile)."""
  meta = saved_model.ModelMeta(depth=18, num_joints=num_joints, width=8,
                               deconv_filters=(16, 16, 16),
                               dataset=dataset, colour_order=colour_order, source="test")
  # A positive bias lifts the maxima above vis_thr.
  saved_model.save_model(path, saved_model.random_variables(meta, (64, 48), bias), meta)
  return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def coco_args(fixtures_dir, out_dir, *extra):
  f = fixtures_dir / "coco"
  return ["--config", "coco_res50", "--ann-file", str(f / "test_coco.json"), "--img-dir", str(f),
          "--out-dir", str(out_dir), "--batch-size", str(BATCH), "--quiet", *extra, *SMALL]


# ------------------------------------------------------------------------ reference pipeline

def small_det_file(fixtures_dir, out_dir, per_image=5):
  """The 5 best detector boxes of each image (overlapping ones, so OKS-NMS has work): 2 batches."""
  dets = json.loads((fixtures_dir / "coco" / "test_coco_det_AP_H_56.json").read_text())
  keep = []
  for image_id in sorted({d["image_id"] for d in dets}):
    mine = sorted((d for d in dets if d["image_id"] == image_id), key=lambda d: -d["score"])
    keep += mine[:per_image]
  path = out_dir / "dets.json"
  path.write_text(json.dumps(keep))
  return path


def ref_boxes(fixtures_dir, det_file):
  """(image_id, file, box xywh, box score) as MMPose's COCO dataset builds them."""
  gt = json.loads((fixtures_dir / "coco" / "test_coco.json").read_text())
  images = {im["id"]: im for im in gt["images"]}
  out = []
  if det_file:
    for d in json.loads(det_file.read_text()):
      if d["category_id"] == 1 and d["score"] >= 0.0:
        out.append((d["image_id"], images[d["image_id"]]["file_name"], d["bbox"], d["score"]))
    return out
  for a in gt["annotations"]:
    im = images[a["image_id"]]
    if a.get("iscrowd") or "keypoints" not in a or max(a["keypoints"]) == 0 or \
        a["num_keypoints"] == 0:
      continue
    x, y, w, h = a["bbox"]
    # 2020 sanitising (docs/reference.md §0/§1.1): width w - 1.
    x1, y1 = max(0, x), max(0, y)
    x2 = min(im["width"] - 1, x1 + max(0, w - 1))
    y2 = min(im["height"] - 1, y1 + max(0, h - 1))
    if a["area"] > 0 and x2 > x1 and y2 > y1:
      out.append((a["image_id"], im["file_name"], [x1, y1, x2 - x1, y2 - y1], 1.0))
  return out


def ref_center_scale(box, aspect=48 / 64):
  x, y, w, h = box
  c = np.array([x + w * 0.5, y + h * 0.5], np.float32)
  if w > aspect * h:
    h = w * 1.0 / aspect
  elif w < aspect * h:
    w = h * aspect
  return c, np.array([w / 200.0, h / 200.0], np.float32) * 1.25


def ref_crop(img, c, s, out_wh=(48, 64)):
  m = mm_get_affine_transform(c, s, 0.0, out_wh)
  return cv2.warpAffine(img, m, tuple(out_wh), flags=cv2.INTER_LINEAR)


def reference_results(fixtures_dir, model_dir, det_file):
  """[(image_id, centre, keypoints (17, 3), score)] after rescoring + OKS-NMS."""
  variables, meta = saved_model.load_model(model_dir)
  model = saved_model.build_model(meta)
  boxes = ref_boxes(fixtures_dir, det_file)
  crops, cs = [], []
  for _, fname, box, _ in boxes:
    img = cv2.cvtColor(cv2.imread(str(fixtures_dir / "coco" / fname)), cv2.COLOR_BGR2RGB)
    c, s = ref_center_scale(box)
    crops.append(ref_crop(img, c, s))
    cs.append((c, s))
  x = (np.stack(crops).astype(np.float32) / 255 - np.float32([0.485, 0.456, 0.406])) / np.float32(
      [0.229, 0.224, 0.225])
  apply = jax.jit(lambda v: model.apply(variables, v, train=False))

  def fwd(v):  # chunks of a fixed size: one compile for every call
    pad = -len(v) % BATCH
    v = np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
    out = np.concatenate([np.asarray(apply(v[i:i + BATCH])) for i in range(0, len(v), BATCH)])
    return out[:len(out) - pad]
  h1 = np.moveaxis(fwd(x), -1, 1)
  h2 = np.moveaxis(fwd(np.ascontiguousarray(x[:, :, ::-1])), -1, 1)
  flipped = h2.copy()
  for a, b in keypoints.COCO.flip_pairs:
    flipped[:, a], flipped[:, b] = h2[:, b], h2[:, a]
  flipped = flipped[..., ::-1].copy()
  flipped[..., 1:] = flipped[..., :-1].copy()
  coords, maxvals = mm_decode_default((h1 + flipped) * 0.5)
  out_by_image = {}
  for i, ((image_id, _, _, score), (c, s)) in enumerate(zip(boxes, cs)):
    size = s * 200.0
    xy = coords[i] * (size / np.float32([12, 16])) + c - size * 0.5
    kp = np.concatenate([xy, maxvals[i][:, None]], 1)
    valid = maxvals[i] > 0.2
    inst = maxvals[i][valid].mean() * score if valid.any() else 0.0
    out_by_image.setdefault(image_id, []).append((c, kp, inst, size[0] * size[1]))
  results = []
  for image_id, items in out_by_image.items():
    kp = np.stack([it[1] for it in items])
    sc = np.array([it[2] for it in items])
    keep = mm_oks_nms(kp, sc, np.array([it[3] for it in items]), 0.9, keypoints.COCO.sigmas_array)
    results += [(image_id, items[k][0], kp[k], sc[k]) for k in keep]
  return results


# ------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("det", [True, False], ids=["detector_boxes", "gt_boxes"])
def test_evaluate_matches_reference_pipeline(fixtures_dir, model_dir, tmp_path, det, capsys):
  det_file = small_det_file(fixtures_dir, tmp_path) if det else None
  boxes = ["--det-file", str(det_file)] if det else ["--gt-boxes"]
  metrics = evaluate.main(["--checkpoint", str(model_dir)]
                          + coco_args(fixtures_dir, tmp_path, *boxes))
  table = capsys.readouterr().out
  assert "AP50" in table and "AR50" in table
  assert set(metrics) >= {"AP", "AP50", "AP75", "AR", "AR50"}
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved["metrics"] == pytest.approx(metrics) and saved["use_gt_bbox"] is not det

  ours = json.loads((tmp_path / "keypoints.json").read_text())
  ref = reference_results(fixtures_dir, model_dir, det_file)
  assert len(ours) == len(ref) > 0
  for r in ours:
    assert r["category_id"] == 1 and len(r["keypoints"]) == 51
    cands = [x for x in ref if x[0] == r["image_id"]
             and np.abs(x[1] - np.asarray(r["center"])).max() < 1e-3]
    assert len(cands) == 1, r["center"]
    _, _, kp, score = cands[0]
    got = np.asarray(r["keypoints"]).reshape(17, 3)
    np.testing.assert_allclose(got[:, :2], kp[:, :2], atol=2e-3)
    np.testing.assert_allclose(got[:, 2], kp[:, 2], rtol=1e-4, atol=1e-5)
    assert r["score"] == pytest.approx(score, rel=1e-4, abs=1e-6)


def test_ground_truth_as_prediction_scores_one(fixtures_dir):
  """An oracle predict function returning the GT joints goes through the evaluator path."""
  from sbpose_jax import evaluators
  from sbpose_jax.data import readers
  f = fixtures_dir / "coco"
  cfg = config_lib.load("coco_res50", SMALL + [f"--config.data.root={f}",
                                               "--config.data.val_ann=test_coco.json",
                                               "--config.data.val_images=.",
                                               "--config.data.use_gt_bbox=True"])
  records = readers.read_split(cfg.data, "val")

  def oracle(batch):
    rows = np.asarray(batch["index"])
    return np.concatenate([records.joints_xy[rows], np.ones((len(rows), 17, 1), np.float32)], -1)
  ev = evaluators.EVALUATORS["coco"](records, cfg)
  metrics = loop.run_evaluation(oracle, records, cfg, ev, batch_size=4, progress=False)
  assert metrics["AP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)


def test_results_flag_scores_a_file_without_a_model(fixtures_dir, tmp_path):
  gt = json.loads((fixtures_dir / "coco" / "test_coco.json").read_text())
  res = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
         for a in gt["annotations"] if a["num_keypoints"] > 0]
  path = tmp_path / "res.json"
  path.write_text(json.dumps(res))
  metrics = evaluate.main(["--results", str(path)] + coco_args(fixtures_dir, tmp_path / "o"))
  assert metrics["AP"] == pytest.approx(1.0)
  assert json.loads((tmp_path / "o" / "metrics.json").read_text())["results"] == str(path)
  # A wrong joint count in the file is one clear error, not a traceback.
  res[0]["keypoints"] = res[0]["keypoints"][:42]
  path.write_text(json.dumps(res))
  with pytest.raises(SystemExit):
    evaluate.main(["--results", str(path)] + coco_args(fixtures_dir, tmp_path / "o"))


def test_joint_count_mismatch_fails_before_any_work(tmp_path, capsys, monkeypatch):
  model = save_tiny_model(tmp_path / "aic_model", num_joints=14, dataset="aic")
  from sbpose_jax.data import readers

  def boom(*a, **k):
    raise AssertionError("annotations were read before the joint check")
  monkeypatch.setattr(readers, "read_split", boom)
  # The data paths do not even exist: the joint check comes first.
  with pytest.raises(SystemExit):
    evaluate.main(["--config", "coco_res50", "--checkpoint", str(model), "--out-dir",
                   str(tmp_path / "o"), "--ann-file", str(tmp_path / "none.json")])
  err = capsys.readouterr().err
  assert "14 joints" in err and "'coco' has 17" in err


def test_bad_command_lines(tmp_path, capsys, model_dir):
  with pytest.raises(SystemExit):  # neither --checkpoint nor --results
    evaluate.main(["--config", "coco_res50", "--out-dir", str(tmp_path)])
  with pytest.raises(SystemExit):  # a stray argument
    evaluate.main(["--config", "coco_res50", "--results", "x", "--out-dir", str(tmp_path), "y"])
  with pytest.raises(SystemExit):  # missing annotation file, named in the message
    evaluate.main(["--config", "coco_res50", "--checkpoint", str(model_dir), "--out-dir",
                   str(tmp_path), "--ann-file", str(tmp_path / "missing.json")])
  assert "missing.json" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # a mistyped override
    evaluate.main(["--config", "coco_res50", "--results", "x", "--out-dir", str(tmp_path),
                   "--config.test.flipp=False"])


def test_eval_config_applies_the_eval_entry():
  cfg, kind = config_lib.eval_config(config_lib.load("ochuman_res50"))
  assert kind == "ochuman" and cfg.data.dataset == "ochuman" and cfg.data.use_gt_bbox


def test_reproduce_table_plumbing(fixtures_dir, model_dir, tmp_path, capsys):
  """scripts/reproduce_table.py with a pre-converted model under the published file's stem."""
  import importlib.util
  import shutil
  path = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "reproduce_table.py"
  spec = importlib.util.spec_from_file_location("reproduce_table", path)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  ckpts = tmp_path / "ckpts"
  shutil.copytree(model_dir, ckpts / "res50_coco_256x192-ec54d7f3_20200709")
  dets = small_det_file(fixtures_dir, tmp_path)
  rows = script.main([
      "--checkpoints", str(ckpts), "--data-root", str(fixtures_dir), "--out-dir",
      str(tmp_path / "out"), "--rows", "coco_res50,mpii_res50,coco_res101", "--quiet",
      "--batch-size", str(BATCH), "--override", "coco:data.val_ann=test_coco.json",
      "--override", "coco:data.val_images=.", "--override", f"coco:data.det_file={dets}", *SMALL])
  out = capsys.readouterr().out
  assert [r["config"] for r in rows] == ["coco_res50"]
  assert rows[0]["published"][0] == 0.718 and len(rows[0]["ours"]) == 5
  assert "| coco_res50 | AP " in out and "/ 0.718 (" in out
  assert "| coco_res101 | skipped: checkpoint res101_coco_256x192" in out
  assert "| mpii_res50 | skipped: annotation file" in out
  saved = json.loads((tmp_path / "out" / "table.json").read_text())
  assert len(saved["rows"]) == 1 and len(saved["skipped"]) == 2


def test_no_detections_gives_zero_metrics(fixtures_dir, model_dir, tmp_path):
  (tmp_path / "none.json").write_text("[]")
  metrics = evaluate.main(["--checkpoint", str(model_dir), "--det-file",
                           str(tmp_path / "none.json")]
                          + coco_args(fixtures_dir, tmp_path))
  assert metrics["AP"] == 0 and metrics["AR"] == 0
  assert json.loads((tmp_path / "keypoints.json").read_text()) == []


# ------------------------------------------------------------- metric rules on the command line

def test_crowdpose_ignore_flag(fixtures_dir, tmp_path, capsys):
  """--crowdpose-ignore current = xtcocotools 1.14.3's rule; 2020 (default) = the published."""
  from sbpose_jax.evaluators import coco
  gt = json.loads((fixtures_dir / "crowdpose" / "test_crowdpose.json").read_text())
  for a in gt["annotations"][::2]:          # all joints occluded: num_keypoints (v = 2) is 0
    a["keypoints"] = [1 if i % 3 == 2 and v > 0 else v for i, v in enumerate(a["keypoints"])]
    a["num_keypoints"] = 0
  ann = tmp_path / "crowd.json"
  ann.write_text(json.dumps(gt))
  rng = np.random.default_rng(3)
  res = [{"image_id": a["image_id"], "category_id": 1, "score": float(rng.uniform(0.2, 1)),
          "keypoints": (np.asarray(a["keypoints"], float).reshape(-1, 3)
                        + [*rng.normal(0, 4, 2), 0.5]).ravel().tolist()}
         for a in gt["annotations"]]
  path = tmp_path / "res.json"
  path.write_text(json.dumps(res))
  args = ["--config", "crowdpose_res50", "--ann-file", str(ann), "--results", str(path),
          "--quiet"]
  default = evaluate.main(args + ["--out-dir", str(tmp_path / "a")])
  old = evaluate.main(args + ["--out-dir", str(tmp_path / "b"), "--crowdpose-ignore", "2020"])
  new = evaluate.main(args + ["--out-dir", str(tmp_path / "c"), "--crowdpose-ignore", "current"])
  ref = coco.score_keypoints(gt, res, keypoints.CROWDPOSE.sigmas, crowd=True, use_area=False,
                             backend="xtcocotools", crowd_ignore="num_keypoints",
                             gt_path=str(ann))
  assert default == old and new == pytest.approx(ref, abs=1e-12) and new != old
  info = json.loads((tmp_path / "c" / "metrics.json").read_text())
  assert info["crowdpose_ignore"] == "current"
  with pytest.raises(SystemExit):
    evaluate.main(coco_args(fixtures_dir, tmp_path / "d", "--results", str(path),
                            "--crowdpose-ignore", "current"))
  assert "--crowdpose-ignore applies to CrowdPose" in capsys.readouterr().err


def test_mpii_gt_file_flag_and_no_silent_replacement(fixtures_dir, tmp_path, capsys):
  """--gt-file takes the .mat or the JSON head-box form; --ann-file never swaps the GT file."""
  import scipy.io
  anns = json.loads((fixtures_dir / "mpii" / "test_mpii.json").read_text())
  joints = np.asarray([a["joints"] for a in anns], np.float64)
  boxes = np.stack([joints[:, 9] - 20, joints[:, 9] + 20], 1)           # (N, 2 corners, 2)
  names = np.empty((1, 16), object)
  names[0] = ["rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck", "head",
              "rwri", "relb", "rsho", "lsho", "lelb", "lwri"]
  vis = np.asarray([a["joints_vis"] for a in anns], np.float64)
  mat = tmp_path / "gt" / "my_gt.mat"
  mat.parent.mkdir()
  scipy.io.savemat(mat, {"pos_gt_src": joints.transpose(1, 2, 0), "jnt_missing": (1 - vis).T,
                         "headboxes_src": boxes.transpose(1, 2, 0), "dataset_joints": names})
  gt_json = tmp_path / "gt" / "my_gt.json"
  gt_json.write_text(json.dumps([dict(a, headbox=b.ravel().tolist())
                                 for a, b in zip(anns, boxes)]))
  preds = joints + np.random.default_rng(1).normal(0, 6, joints.shape)
  res = tmp_path / "pred.mat"
  scipy.io.savemat(res, {"preds": preds})
  # A decoy beside the annotation file: the old code silently switched to it.
  ann_dir = tmp_path / "ann"
  ann_dir.mkdir()
  (ann_dir / "test_mpii.json").write_text(json.dumps(anns))
  scipy.io.savemat(ann_dir / "mpii_gt_val.mat", {
      "pos_gt_src": (joints + 50).transpose(1, 2, 0), "jnt_missing": (1 - vis).T,
      "headboxes_src": boxes.transpose(1, 2, 0), "dataset_joints": names})
  args = ["--config", "mpii_res50", "--ann-file", str(ann_dir / "test_mpii.json"),
          "--results", str(res), "--quiet"]
  by_mat = evaluate.main(args + ["--out-dir", str(tmp_path / "a"), "--gt-file", str(mat)])
  by_json = evaluate.main(args + ["--out-dir", str(tmp_path / "b"), "--gt-file", str(gt_json)])
  assert by_mat == pytest.approx(by_json, abs=1e-12) and 0 < by_mat["Mean"] < 1
  assert json.loads((tmp_path / "b" / "metrics.json").read_text())["gt_file"] == str(gt_json)
  with pytest.raises(SystemExit):   # the configured data.gt_mat_file is absent: said, not swapped
    evaluate.main(args + ["--out-dir", str(tmp_path / "c")])
  err = capsys.readouterr().err
  assert "--gt-file / data.gt_mat_file" in err and "mpii_gt_val.mat" in err
  assert str(ann_dir) not in err
  with pytest.raises(SystemExit):
    evaluate.main(coco_args(fixtures_dir, tmp_path / "d", "--results", str(res), "--gt-file",
                            str(mat)))
  assert "--gt-file is MPII's" in capsys.readouterr().err
