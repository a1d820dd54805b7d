"""Packed crops: the pack command, parity with the full-image path, the device warp, training."""
import json
import pathlib
import shutil

import cv2
import numpy as np
import pytest

from sbpose_jax.commands import config as config_lib
from sbpose_jax.commands import pack as pack_lib
from sbpose_jax.data import pack_geometry
from sbpose_jax.data import packed
from sbpose_jax.data import pipeline
from sbpose_jax.data import readers
from sbpose_jax.data import synthetic

IN_WH, HM_WH = (48, 64), (12, 16)


def _config(root, *extra, ann="annotations/person_keypoints_train.json", images="train"):
  return config_lib.load("coco_res50", [
      f"--config.data.root={root}", f"--config.data.train_ann={ann}",
      f"--config.data.train_images={images}", f"--config.data.input_size={IN_WH!r}",
      f"--config.data.heatmap_size={HM_WH!r}", "--config.data.num_workers=0",
      "--config.data.pack_scale=2.0", *extra])


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory):
  return synthetic.generate(tmp_path_factory.mktemp("syn"), {"train": 10, "val": 2}, seed=1,
                            image_size=(160, 120))


@pytest.fixture(scope="module")
def syn_pack(syn_root, tmp_path_factory):
  cfg = _config(syn_root)
  records = readers.read_split(cfg.data, "train")
  out = tmp_path_factory.mktemp("pack")
  pack_lib.write_pack(records, cfg, "train", out, workers=2, progress_bar=False)
  return cfg, records, packed.open_pack(out, cfg)


def _coco_fixture(fixtures_dir, *extra):
  cfg = config_lib.load("coco_res50", [
      f"--config.data.root={fixtures_dir / 'coco'}", "--config.data.train_ann=test_coco.json",
      "--config.data.train_images=", "--config.data.num_workers=0", *extra])
  return cfg, readers.read_split(cfg.data, "train")


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _pixels(full, pk):
  return np.concatenate([np.abs(a["image"].astype(np.int16) - b["image"]).ravel()
                         for a, b in zip(full, pk)])


# ---------------------------------------------------------------------------- the pack

def test_pack_contents_and_frames(syn_pack):
  cfg, records, pack = syn_pack
  assert len(pack) == len(records) and pack.pack_wh == pack_geometry.pack_size(cfg.data)
  for row in (0, len(pack) - 1):
    ex = pack.source[row]
    crop = cv2.imdecode(np.frombuffer(ex["image"], np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (pack.pack_wh[1], pack.pack_wh[0], 3)
    assert ex["ann_id"] == records.ann_ids[row] and ex["record_index"] == row
    t = ex["image_to_crop"]
    np.testing.assert_allclose(ex["joints"], records.joints_xy[row] @ t[:, :2].T + t[:, 2],
                               atol=1e-3)
    np.testing.assert_allclose(ex["center"], records.center_xy[row] @ t[:, :2].T + t[:, 2],
                               atol=1e-3)
    np.testing.assert_allclose(ex["scale"], records.scale_wh[row] * np.diag(t[:, :2]),
                               rtol=1e-6)


@pytest.mark.parametrize("chroma", ["yuv420", "yuv444"])
def test_decode_equals_cv2_on_real_crops(fixtures_dir, tmp_path, chroma):
  """simplejpeg's decode (the loader's) gives cv2.imdecode's pixels (+ BGR→RGB), so the
  packed path's pixel differences against the full-image path are the pack's alone."""
  cfg, records = _coco_fixture(fixtures_dir, f"--config.data.pack_chroma={chroma}")
  pack_lib.write_pack(records, cfg, "train", tmp_path, workers=1, progress_bar=False)
  pack = packed.open_pack(tmp_path, cfg)
  for row in range(len(pack)):
    jpeg, _ = packed.read_jpeg(pack.source, row)
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert bgr.shape == (pack.pack_wh[1], pack.pack_wh[0], 3) and bgr.std() > 10
    np.testing.assert_array_equal(packed.decode_crop(jpeg, "bgr"), bgr)
    np.testing.assert_array_equal(packed.decode_crop(jpeg, "rgb"),
                                  cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
  with pytest.raises(ValueError, match="example 7: undecodable JPEG"):
    packed.decode_crop(jpeg[: len(jpeg) // 2], "rgb", "example 7")
  with pytest.raises(ValueError, match="undecodable"):
    packed.decode_crop(b"not a jpeg")


def test_same_draws_as_full_image_path(syn_pack):
  """Same seed: joints and target weights equal; pixels differ by resampling + JPEG only."""
  cfg, records, pack = syn_pack
  kw = dict(batch_size=2, seed=3, num_epochs=3, host_targets=False, extra_fields=("index",))
  full = list(pipeline.train_dataset(records, cfg, **kw))
  pk = list(packed.train_dataset(pack, cfg, on_device=False, **kw))
  assert len(full) == len(pk) > 0
  for a, b in zip(full, pk):
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_allclose(a["joints"], b["joints"], atol=1e-4)
    np.testing.assert_array_equal(a["target_weight"], b["target_weight"])
  assert _pixels(full, pk).mean() < 3.0


def test_device_batches_equal_host_batches_but_for_the_pixels(syn_pack):
  """The device path's batch-level tail (PackedDeviceFinish) gives the per-sample tail's
  joints, target weights and heatmaps bit for bit."""
  cfg, _, pack = syn_pack
  kw = dict(batch_size=3, seed=5, num_epochs=2, host_targets=True,
            extra_fields=("index", "center", "scale"))
  host = list(packed.train_dataset(pack, cfg, on_device=False, **kw))
  dev = list(packed.train_dataset(pack, cfg, on_device=True, **kw))
  assert len(host) == len(dev) > 0
  for a, b in zip(host, dev):
    assert set(b) == set(a) | {"warp_matrix"}
    for k in set(a) - {"image"}:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("half_body", [0.0, 1.0])
def test_fixture_parity_with_and_without_half_body(fixtures_dir, tmp_path, half_body):
  """Real COCO crops at a pack scale that keeps native resolution: JPEG is the difference."""
  cfg, records = _coco_fixture(fixtures_dir, "--config.data.pack_scale=3.0",
                               "--config.data.pack_chroma=yuv444",
                               f"--config.data.half_body_prob={half_body}")
  pack_lib.write_pack(records, cfg, "train", tmp_path, workers=1, progress_bar=False)
  pack = packed.open_pack(tmp_path, cfg)
  kw = dict(batch_size=4, seed=0, num_epochs=4, host_targets=False)
  full = list(pipeline.train_dataset(records, cfg, **kw))
  pk = list(packed.train_dataset(pack, cfg, on_device=False, **kw))
  for a, b in zip(full, pk):
    np.testing.assert_allclose(a["joints"], b["joints"], atol=1e-4)
    np.testing.assert_array_equal(a["target_weight"], b["target_weight"])
  d = _pixels(full, pk)
  assert d.mean() < 2.5 and np.percentile(d, 99) < 30


def test_planes_pack_same_draws_and_pixels(fixtures_dir, tmp_path):
  """A planes pack (4:2:0 planes in one grayscale JPEG) gives the full-image path's draws and
  pixels at least as close as the colour 4:2:0 pack (its chroma is quantised with the finer
  luma table); its planes make the crop libjpeg-turbo would decode from a colour JPEG."""
  diffs = {}
  for chroma in ("yuv420", "planes"):
    cfg, records = _coco_fixture(fixtures_dir, f"--config.data.pack_chroma={chroma}")
    pack_lib.write_pack(records, cfg, "train", tmp_path / chroma, workers=1,
                        progress_bar=False)
    pack = packed.open_pack(tmp_path / chroma, cfg)
    assert pack.planes == (chroma == "planes")
    kw = dict(batch_size=4, seed=0, num_epochs=2, host_targets=False)
    full = list(pipeline.train_dataset(records, cfg, **kw))
    pk = list(packed.train_dataset(pack, cfg, on_device=False, **kw))
    for a, b in zip(full, pk):
      np.testing.assert_array_equal(a["joints"], b["joints"])
      np.testing.assert_array_equal(a["target_weight"], b["target_weight"])
    diffs[chroma] = _pixels(full, pk).mean()
    jpeg, _ = packed.read_jpeg(pack.source, 0)
    if chroma == "planes":
      wp, hp = pack.pack_wh
      planes = packed.decode_crop(jpeg, "planes")
      assert planes.shape == (hp * 3 // 2, wp) and planes.dtype == np.uint8
      with pytest.raises(ValueError, match="undecodable"):
        packed.decode_crop(jpeg[:100], "planes")
  assert diffs["planes"] <= diffs["yuv420"] + 0.05, diffs


@pytest.mark.parametrize("on_device", [False, True])
def test_resume_workers_and_shards(syn_pack, on_device):
  cfg, _, pack = syn_pack
  make = lambda **kw: packed.train_dataset(pack, cfg, batch_size=2, seed=2, on_device=on_device,
                                           **kw)
  it = iter(make(num_workers=0))
  ref = [next(it) for _ in range(4)]
  it = iter(make(num_workers=2))
  first = [next(it) for _ in range(2)]
  state = it.get_state()
  it.close()
  assert all(_same(a, b) for a, b in zip(ref, first))
  it = iter(make(num_workers=2))
  it.set_state(state)
  resumed = [next(it) for _ in range(2)]
  it.close()
  assert all(_same(a, b) for a, b in zip(ref[2:], resumed))
  shards = [np.concatenate([b["index"] for b in make(
      process_index=p, process_count=2, num_epochs=1, extra_fields=("index",))])
      for p in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert len(shards[0]) == len(shards[1]) > 0


def test_refuses_other_settings(syn_pack, syn_root, tmp_path):
  _, _, pack = syn_pack
  with pytest.raises(ValueError, match="max_rotation"):
    packed.open_pack(pack.directory, _config(syn_root, "--config.data.rot_factor=30.0"))
  with pytest.raises(ValueError, match="pack_wh|pack_scale"):
    packed.open_pack(pack.directory, _config(syn_root, "--config.data.pack_scale=0.9"))
  ann = tmp_path / "ann.json"
  data = json.loads((syn_root / "annotations/person_keypoints_train.json").read_text())
  data["annotations"] = data["annotations"][:-1]
  ann.write_text(json.dumps(data))
  with pytest.raises(ValueError, match="another annotation file"):
    packed.open_pack(pack.directory, _config(syn_root, ann=str(ann)))
  with pytest.raises(FileNotFoundError, match="sbpose_jax.pack"):
    packed.open_pack(tmp_path / "none", _config(syn_root))


def test_interrupted_pack_resumes(syn_root, tmp_path, monkeypatch):
  cfg = _config(syn_root)
  records = readers.read_split(cfg.data, "train").select(np.arange(40) % 12)
  real = pack_lib._pack_shard
  calls = []

  def dying(i):
    calls.append(i)
    if i == 1 and calls.count(1) == 1:
      raise KeyboardInterrupt
    return real(i)

  monkeypatch.setattr(pack_lib, "_pack_shard", dying)
  with pytest.raises(KeyboardInterrupt):
    pack_lib.write_pack(records, cfg, "train", tmp_path, workers=1, progress_bar=False)
  assert calls == [0, 1] and not (tmp_path / "pack-train.json").exists()
  first = sorted(tmp_path.glob("sbpose_pack-train.*"))
  mtime = first[0].stat().st_mtime_ns
  meta = pack_lib.write_pack(records, cfg, "train", tmp_path, workers=1, progress_bar=False)
  n = len(meta["shard_lengths"])
  assert calls == [0, 1] + list(range(1, n)) and meta["num_examples"] == 40
  assert first[0].stat().st_mtime_ns == mtime
  assert len(packed.open_pack(tmp_path, cfg)) == 40


def test_bad_image_named_or_skipped(syn_root, tmp_path, capsys):
  root = tmp_path / "data"
  shutil.copytree(syn_root, root)
  cfg = _config(root)
  records = readers.read_split(cfg.data, "train")
  bad = pathlib.Path(records.image_path(0))
  bad.write_bytes(b"not a jpeg")
  n_bad = int((records.image_index == records.image_index[0]).sum())
  args = ["--config", "coco_res50", "--out", str(tmp_path / "p"), "--no-progress",
          f"--config.data.root={root}", f"--config.data.input_size={IN_WH!r}",
          "--config.data.train_ann=annotations/person_keypoints_train.json",
          "--config.data.train_images=train"]
  assert pack_lib.main(args) == 2
  err = [line for line in capsys.readouterr().err.strip().splitlines()
         if not line.startswith("note:")]   # the derived heatmap size and sigma
  assert len(err) == 1 and err[0].startswith("error:") and bad.name in err[0]
  assert pack_lib.main(args + ["--skip-bad"]) == 0
  meta = json.loads((tmp_path / "p" / "pack-train.json").read_text())
  assert meta["num_skipped"] == n_bad and meta["num_examples"] == len(records) - n_bad
  assert f"({n_bad} skipped" in capsys.readouterr().out


@pytest.mark.parametrize("name,folder,ann", [
    ("aic_res101", "aic", "test_aic.json"),
    ("crowdpose_res50", "crowdpose", "test_crowdpose.json"),
    ("mpii_res50", "mpii", "test_mpii.json"),
    ("mpii_trb_res50", "mpii", "test_mpii_trb.json"),
    ("ochuman_res50", "ochuman", "test_ochuman.json"),
    ("coco_wholebody_res50", "coco", "test_coco_wholebody.json"),
    ("posetrack18_res50", "posetrack18", "annotations/val")])
def test_every_fixture_dataset_packs_with_the_same_draws(fixtures_dir, tmp_path, name, folder,
                                                         ann):
  cfg = config_lib.load(name, [f"--config.data.root={fixtures_dir / folder}",
                               f"--config.data.train_ann={ann}", "--config.data.train_images=",
                               "--config.data.num_workers=0"])
  records = readers.read_split(cfg.data, "train")
  pack_lib.write_pack(records, cfg, "train", tmp_path, workers=1, progress_bar=False)
  pack = packed.open_pack(tmp_path, cfg)
  kw = dict(batch_size=1, seed=0, num_epochs=2, host_targets=False)
  full = list(pipeline.train_dataset(records, cfg, **kw))
  pk = list(packed.train_dataset(pack, cfg, on_device=False, **kw))
  assert len(full) == len(pk) == 2 * len(records)
  for a, b in zip(full, pk):
    np.testing.assert_allclose(a["joints"], b["joints"], atol=1e-4)
    np.testing.assert_array_equal(a["target_weight"], b["target_weight"])
  assert _pixels(full, pk).mean() < 10


def test_annotation_folder_digest(tmp_path):
  (tmp_path / "a.json").write_text("[1]")
  (tmp_path / "b.json").write_text("[2]")
  first = packed.file_digest(tmp_path)
  (tmp_path / "b.json").write_text("[3]")
  assert packed.file_digest(tmp_path)["sha256"] != first["sha256"]
  assert first["bytes"] == 6


def test_repack_with_other_settings_names_them(syn_pack, syn_root):
  """A finished pack in --out refuses a pack of other settings, naming each one that differs."""
  cfg, records, pack = syn_pack
  other = _config(syn_root, "--config.data.rot_factor=30.0", "--config.data.pack_quality=80")
  with pytest.raises(ValueError) as e:
    pack_lib.write_pack(records, other, "train", pack.directory, workers=1, progress_bar=False)
  text = str(e.value)
  assert "ranges.max_rotation: 80.0 -> 60.0" in text and "jpeg_quality: 95 -> 80" in text, text
  assert "\n" not in text
