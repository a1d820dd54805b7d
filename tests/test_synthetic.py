"""Synthetic dataset: deterministic by seed, valid COCO keypoints, atomic ensure_synthetic."""
import filecmp
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from sbpose_jax.commands import config as config_lib
from sbpose_jax.data import synthetic

SIZE = (128, 96)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return synthetic.generate(tmp_path_factory.mktemp("a"), {"train": 12, "val": 4}, seed=3,
                            image_size=SIZE)


def _tree(root):
  return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_same_seed_identical_files(dataset, tmp_path):
  again = synthetic.generate(tmp_path, {"train": 12, "val": 4}, seed=3, image_size=SIZE)
  files = _tree(dataset)
  assert files == _tree(again)
  _, mismatch, errors = filecmp.cmpfiles(dataset, again, files, shallow=False)
  assert not mismatch and not errors


def test_other_seed_differs(dataset, tmp_path):
  other = synthetic.generate(tmp_path, {"train": 12}, seed=4, image_size=SIZE)
  ann = "annotations/person_keypoints_train.json"
  assert (dataset / ann).read_bytes() != (other / ann).read_bytes()


def test_coco_valid(dataset):
  coco = COCO(str(dataset / "annotations" / "person_keypoints_train.json"))
  cat = coco.loadCats([1])[0]
  assert len(cat["keypoints"]) == 17 and len(cat["skeleton"]) == 19
  assert len(coco.getImgIds()) == 12
  anns = coco.loadAnns(coco.getAnnIds())
  assert len(anns) >= 12  # at least one person per image
  vis = []
  for ann in anns:
    img = coco.loadImgs(ann["image_id"])[0]
    assert (img["width"], img["height"]) == SIZE
    assert (dataset / "train" / img["file_name"]).is_file()
    k = np.asarray(ann["keypoints"], np.float64).reshape(17, 3)
    assert set(np.unique(k[:, 2])) <= {0, 1, 2}
    on = k[:, 2] > 0
    assert ann["num_keypoints"] == on.sum()
    assert np.all(k[on, 0] >= 0) and np.all(k[on, 0] <= SIZE[0] - 1)
    assert np.all(k[on, 1] >= 0) and np.all(k[on, 1] <= SIZE[1] - 1)
    assert np.all(k[~on] == 0)
    x, y, w, h = ann["bbox"]
    assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE[0] and y + h <= SIZE[1]
    assert ann["area"] == pytest.approx(0.53 * w * h, rel=1e-3)
    vis.append(k[:, 2])
  vis = np.concatenate(vis)
  # Occlusion and leaving the frame both happen, but most joints are visible.
  assert (vis == 1).any() and (vis == 0).any() and (vis == 2).mean() > 0.5


def test_val_split_has_detections(dataset):
  """The val split comes with a fake detector file: one jittered, scored box per person."""
  d = json.loads((dataset / "annotations" / "person_keypoints_val.json").read_text())
  assert d["images"] and d["annotations"]
  dets = json.loads((dataset / "annotations" / "person_detections_val.json").read_text())
  assert len(dets) == len(d["annotations"])
  assert all(0.5 <= x["score"] <= 1 for x in dets)


def test_render_marks_occluded_joints():
  rng = np.random.default_rng(0)
  img, anns = synthetic.render_image(rng, 160, 120)
  assert img.shape == (120, 160, 3) and img.dtype == np.uint8
  canvas = synthetic.Canvas(np.zeros((120, 160, 3), np.uint8))
  joints, u = synthetic.sample_pose(np.random.default_rng(1), 100, (80, 100), 0.0)
  synthetic.draw_person(canvas, np.random.default_rng(2), joints, u, 1)
  k = synthetic.annotate_joints(canvas, joints, 1, 160, 120)
  assert (k[k[:, 2] > 0, 2] == 2).all()
  canvas.polygon([(0, 0), (160, 0), (160, 60), (0, 60)], (0, 0, 0), synthetic.OCCLUDER)
  k2 = synthetic.annotate_joints(canvas, joints, 1, 160, 120)
  upper = (joints[:, 1] < 59) & (k[:, 2] > 0)
  assert upper.any() and (k2[upper, 2] == 1).all()
  # Left joints (odd ids from 1, e.g. left shoulder 5) lie right of the right ones on screen.
  assert joints[5, 0] > joints[6, 0] and joints[11, 0] > joints[12, 0]


def test_ensure_synthetic_idempotent_and_checked(tmp_path):
  root = tmp_path / "syn"
  kw = dict(num_images={"train": 2, "val": 1}, seed=0, image_size=(64, 48))
  assert synthetic.ensure_synthetic(root, **kw) == root
  stamp = (root / "annotations" / "person_keypoints_train.json").stat().st_mtime_ns
  synthetic.ensure_synthetic(root, **kw)
  assert (root / "annotations" / "person_keypoints_train.json").stat().st_mtime_ns == stamp
  assert [p.name for p in tmp_path.iterdir()] == ["syn"]  # no temp folder left behind
  with pytest.raises(ValueError, match="generated with"):
    synthetic.ensure_synthetic(root, num_images={"train": 3}, seed=0, image_size=(64, 48))
  (tmp_path / "other").mkdir()
  with pytest.raises(ValueError, match="not a synthetic dataset"):
    synthetic.ensure_synthetic(tmp_path / "other", **kw)


def test_ensure_from_config(tmp_path):
  cfg = config_lib.load("coco_res50", [f"--config.data.root={tmp_path / 'd'}"])
  assert synthetic.ensure_from_config(cfg) is None and not (tmp_path / "d").exists()
  cfg.synthetic.update(enabled=True, num_train=2, num_val=1, seed=0, image_size=(64, 48))
  root = synthetic.ensure_from_config(cfg)
  assert (root / "annotations" / "person_keypoints_val.json").is_file()
  assert len(list((root / "train").glob("*.jpg"))) == 2


def test_synthesize_command_writes_people_and_videos(tmp_path, capsys):
  """`python -m sbpose_jax.synthesize`: both kinds, deterministic, one summary line."""
  from sbpose_jax.commands import synthesize  # why: only this test runs the command
  assert synthesize.main(["people", "--out", str(tmp_path / "p"), "--num-train", "2",
                          "--num-val", "1", "--width", "96", "--height", "64"]) == 0
  assert "wrote 2+1 images" in capsys.readouterr().err
  assert len(list((tmp_path / "p" / "train").glob("*.jpg"))) == 2
  assert synthesize.main(["videos", "--out", str(tmp_path / "v"), "--clips", "1",
                          "--frames", "3", "--people", "2", "--stills-train", "1",
                          "--width", "96", "--height", "64"]) == 0
  assert "wrote 1 clips, 1+0 stills" in capsys.readouterr().err
  assert any((tmp_path / "v" / "clips").rglob("*.mp4"))
  with pytest.raises(SystemExit):       # argparse: --out is required
    synthesize.main(["people"])
