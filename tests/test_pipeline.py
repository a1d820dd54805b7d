"""grain pipelines: determinism, resume, sharding, evaluation order/padding, bad images."""
import dataclasses
import json
import pathlib
import shutil

import cv2
import numpy as np
import pytest

from sbpose_jax.commands import config as config_lib
from sbpose_jax import geometry
from sbpose_jax.data import pipeline
from sbpose_jax.data import readers
from sbpose_jax.data import synthetic

IN_WH, HM_WH = (48, 64), (12, 16)


def _config(**data):
  overrides = [f"--config.data.{k}={v!r}" for k, v in dict(
      input_size=IN_WH, heatmap_size=HM_WH, num_workers=0, **data).items()]
  return config_lib.load("coco_res50", overrides)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return synthetic.generate(tmp_path_factory.mktemp("syn"), {"train": 10, "val": 4}, seed=1,
                            image_size=(96, 72))


@pytest.fixture(scope="module")
def records(root):
  r = readers.read_coco(root / "annotations/person_keypoints_train.json", root / "train",
                        input_size=IN_WH)
  return r.select(np.arange(len(r) // 4 * 4))  # a multiple of 4 (the sharding test)


def _take(ds, n, state=None):
  it = iter(ds)
  if state is not None:
    it.set_state(state)
  out = [next(it) for _ in range(n)]
  return out, it


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batch_fields(records):
  cfg = _config()
  (b,), _ = _take(pipeline.train_dataset(records, cfg, batch_size=3, seed=0), 1)
  k = records.num_joints
  want = {"image": ((3, 64, 48, 3), np.uint8), "target": ((3, 16, 12, k), np.float32),
          "target_weight": ((3, k), np.float32), "joints": ((3, k, 3), np.float32)}
  assert {n: (v.shape, v.dtype) for n, v in b.items()} == want
  assert b["image"].max() > 0 and b["target"].max() == 1.0
  np.testing.assert_array_equal(b["joints"][..., 2], b["target_weight"])
  (b,), _ = _take(pipeline.train_dataset(records, cfg, batch_size=3, seed=0,
                                         host_targets=False), 1)
  assert "target" not in b and b["joints"].shape == (3, k, 3)


def test_same_seed_same_batches_and_resume(records):
  cfg = _config()
  make = lambda seed: pipeline.train_dataset(records, cfg, batch_size=4, seed=seed)
  first, it = _take(make(0), 5)
  again, _ = _take(make(0), 5)
  assert all(_same(a, b) for a, b in zip(first, again))
  other, _ = _take(make(1), 5)
  assert not all(_same(a, b) for a, b in zip(first, other))
  # Resume: state after 2 batches, restored into a fresh iterator → batches 3..5 again.
  _, it = _take(make(0), 2)
  state = it.get_state()
  resumed, _ = _take(make(0), 3, state=state)
  assert all(_same(a, b) for a, b in zip(first[2:], resumed))


def test_epochs_are_reshuffled_permutations(records):
  n = len(records)
  ds = pipeline.train_dataset(records, _config(), batch_size=1, seed=0, num_epochs=2,
                              extra_fields=("index",))
  order = np.concatenate([b["index"] for b in ds])
  assert len(order) == 2 * n
  e1, e2 = order[:n], order[n:]
  assert sorted(e1) == sorted(e2) == list(range(n))
  assert not np.array_equal(e1, e2)


def test_process_shards_are_disjoint_and_cover(records):
  cfg = _config()
  shards = [np.concatenate([b["index"] for b in pipeline.train_dataset(
      records, cfg, batch_size=2, seed=5, process_index=p, process_count=2, num_epochs=1,
      extra_fields=("index",))]) for p in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(records) // 2
  assert not set(shards[0]) & set(shards[1])
  assert sorted(np.concatenate(shards)) == list(range(len(records)))


def test_global_batch_is_the_same_on_any_topology(records):
  """Global batch k (records, order, augmented pixels, joints) on 1, 2 and 4 processes, with 0
  or 1 data workers, resumed at a batch: each process's part is its contiguous rows of it."""
  cfg = _config()
  g, n_batches = 4, 4        # 8 records: the stream crosses an epoch (reshuffled, redrawn)
  fields = ("index",)

  def batches(p, count, workers=0, start=0):
    it = iter(pipeline.train_dataset(records, cfg, batch_size=g // count, seed=7,
                                     process_index=p, process_count=count, host_targets=False,
                                     num_workers=workers, extra_fields=fields,
                                     start_batch=start))
    out = [next(it) for _ in range(n_batches - start)]
    if hasattr(it, "close"):
      it.close()
    return out

  reference = batches(0, 1)
  assert len({tuple(b["index"]) for b in reference}) > 1
  for count, workers, start in ((2, 0, 0), (4, 0, 0), (2, 1, 1), (4, 0, 2)):
    parts = [batches(p, count, workers, start) for p in range(count)]
    for k in range(start, n_batches):
      joined = {key: np.concatenate([parts[p][k - start][key] for p in range(count)])
                for key in reference[k]}
      assert _same(joined, reference[k]), (count, workers, start, k)


def test_frozen_centre_shift(records):
  cfg = _config()
  a = pipeline.shifted_records(records, cfg, seed=3)
  b = pipeline.shifted_records(records, cfg, seed=3)
  np.testing.assert_array_equal(a.center_xy, b.center_xy)
  moved = np.any(a.center_xy != records.center_xy, axis=1)
  assert 0 < moved.sum() < len(records)
  off = np.abs(a.center_xy - records.center_xy) / records.bbox_xywh[:, 2:]
  assert off.max() <= 0.2 + 1e-5
  assert pipeline.shifted_records(records, _config(shift_prob=0.0), 3) is records


def test_eval_every_box_once_padded(records):
  cfg = _config()
  n = len(records)
  batches = list(pipeline.eval_dataset(records, cfg, batch_size=3))
  assert len(batches) == pipeline.eval_num_batches(n, 3) == -(-n // 3)
  mask = np.concatenate([b["mask"] for b in batches])
  index = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(index[mask], np.arange(n))
  assert mask[:n].all() and not mask[n:].any() and len(mask) == len(batches) * 3
  b = batches[0]
  assert b["image"].shape == (3, 64, 48, 3) and b["image"].dtype == np.uint8
  assert b["index"].dtype == np.int32 and b["mask"].dtype == np.bool_
  assert b["center"].shape == b["scale"].shape == (3, 2) and b["bbox_score"].shape == (3,)
  # The crop is the reference warp of the full image, no augmentation.
  img = cv2.cvtColor(cv2.imread(records.image_path(0)), cv2.COLOR_BGR2RGB)
  m = geometry.get_affine_transform(records.center_xy[0], records.scale_wh[0], 0.0, IN_WH)
  np.testing.assert_array_equal(b["image"][0], cv2.warpAffine(img, m, IN_WH,
                                                              flags=cv2.INTER_LINEAR))
  # Two processes: disjoint, together every box once, same number of batches each.
  parts = [list(pipeline.eval_dataset(records, cfg, 2, process_index=p, process_count=2))
           for p in range(2)]
  assert len(parts[0]) == len(parts[1])
  seen = np.concatenate([b["index"][b["mask"]] for part in parts for b in part])
  assert sorted(seen) == list(range(n))


def _with_bad_image(records, tmp_path, kind):
  root = tmp_path / "images"
  shutil.copytree(records.image_root, root)
  bad = root / str(records.image_files[records.image_index[0]])
  if kind == "missing":
    bad.unlink()
  else:
    bad.write_bytes(b"not a jpeg")
  return dataclasses.replace(records, image_root=str(root)), bad


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_bad_image_named_or_skipped(records, tmp_path, kind):
  bad_records, bad = _with_bad_image(records, tmp_path, kind)
  n_bad = int((bad_records.image_index == bad_records.image_index[0]).sum())  # boxes on it
  with pytest.raises(pipeline.BadImageError, match=bad.name):
    list(pipeline.eval_dataset(bad_records, _config(), 4))
  with pytest.raises(pipeline.BadImageError, match=bad.name):
    list(pipeline.train_dataset(bad_records, _config(), batch_size=2, seed=0, num_epochs=1))
  cfg = _config(skip_bad_images=True)
  batches = list(pipeline.train_dataset(bad_records, cfg, batch_size=2, seed=0, num_epochs=1,
                                        extra_fields=("index",)))
  index = np.concatenate([b["index"] for b in batches])
  assert len(index) == len(records)  # batches stay full
  bad_rows = np.flatnonzero(bad_records.image_index == bad_records.image_index[0])
  assert not np.isin(index, bad_rows).any()
  assert sum(int(b["skipped"].sum()) for b in batches) >= n_bad
  ev = list(pipeline.eval_dataset(bad_records, cfg, 4))
  mask = np.concatenate([b["mask"] for b in ev])[:len(records)]
  assert (~mask).sum() == n_bad


def test_two_workers_give_the_same_batches(records):
  cfg = _config()
  kw = dict(batch_size=4, seed=2)
  ref, _ = _take(pipeline.train_dataset(records, cfg, num_workers=0, **kw), 4)
  mp, it = _take(pipeline.train_dataset(records, cfg, num_workers=2, **kw), 2)
  state = it.get_state()
  more = [next(it) for _ in range(2)]
  it.close()
  assert all(_same(a, b) for a, b in zip(ref, mp + more))
  resumed, it = _take(pipeline.train_dataset(records, cfg, num_workers=2, **kw), 2, state=state)
  it.close()
  assert all(_same(a, b) for a, b in zip(ref[2:], resumed))


def test_iterator_state_through_grain_checkpoint(records, tmp_path):
  """The state round-trips through grain's orbax handler (what training checkpoints)."""
  import grain  # why: only this test or script needs it
  from etils import epath  # why: only this test or script needs it
  cfg = _config()
  make = lambda: pipeline.train_dataset(records, cfg, batch_size=2, seed=4)
  ref, _ = _take(make(), 4)
  _, it = _take(make(), 3)
  grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), it)
  fresh = iter(make())
  grain.checkpoint.CheckpointHandler().restore(epath.Path(tmp_path), fresh)
  assert _same(next(fresh), ref[3])


def test_global_batches_single_process(records):
  import jax  # why: only this test or script needs it
  from jax import sharding as jsh  # why: only this test or script needs it
  sharding = jsh.NamedSharding(jsh.Mesh(np.array(jax.devices()), ("data",)),
                               jsh.PartitionSpec("data"))
  local, it = _take(pipeline.train_dataset(records, _config(), batch_size=2, seed=0), 1)
  (glob,) = list(pipeline.global_batches(iter(local), sharding))
  assert glob.keys() == local[0].keys()
  for k in glob:
    assert isinstance(glob[k], jax.Array) and glob[k].sharding == sharding
    np.testing.assert_array_equal(np.asarray(glob[k]), local[0][k])


def test_browse_dataset_writes_png(tmp_path):
  import importlib.util  # why: used by this function only
  path = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "browse_dataset.py"
  spec = importlib.util.spec_from_file_location("browse_dataset", path)
  browse = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(browse)
  common = [f"--config.data.root={tmp_path / 'syn'}", "--config.synthetic.num_train=3",
            "--config.synthetic.num_val=2", "--config.synthetic.image_size=(96, 72)",
            "--num", "4", "--out", str(tmp_path / "out")]
  browse.main(["--config", "demo"] + common)
  browse.main(["--config", "demo", "--eval"] + common)
  for name in ("demo_train.png", "demo_val.png"):
    img = cv2.imread(str(tmp_path / "out" / name))
    assert img is not None and img.shape[0] > 100 and img.std() > 10


# ------------------------------------------------------------------------------------------------
# Against the 2020 reference (MMPose ~v0.8, which trained the published checkpoints) with the
# same draws: one generator, consumed in the reference's order, feeds both sides.

class _CountingRng:
  """A generator that logs which draws are made, to compare the streams draw for draw."""

  def __init__(self, seed):
    self.g, self.calls = np.random.default_rng(seed), []

  def random(self, *size):
    self.calls.append(("rand", size))
    return self.g.random(*size)

  def standard_normal(self, *size):
    self.calls.append(("randn", size))
    return self.g.standard_normal(*size)


def test_frozen_shift_is_the_2020_readers_with_float64_boxes(fixtures_dir):
  """MMPose v0.8 `_xywh2cs` in train mode: per box `rand() < 0.3`, then `rand(2)`, on the clean
  box's Python floats; the shifted centre is `float32(c + 0.4·(u − 0.5)·(w, h))`."""
  from test_readers import _ref_coco_gt  # the transcription of the 2020 reader
  cfg = config_lib.load("coco_res50", ["--config.data.num_workers=0"])
  float32_box_differs = 0
  for folder, name, dataset in (("coco", "test_coco.json", "coco"),
                                ("crowdpose", "test_crowdpose.json", "crowdpose"),
                                ("aic", "test_aic.json", "aic"),
                                ("ochuman", "test_ochuman.json", "ochuman")):
    ann = fixtures_dir / folder / name
    rec = readers.read(dataset, ann, fixtures_dir / folder, input_size=(192, 256))
    ref = _ref_coco_gt(ann, dataset)
    assert len(rec) == len(ref) > 0
    for seed in range(40):
      got = pipeline.shifted_records(rec, cfg, seed).center_xy
      rng = _CountingRng(seed)
      for i, r in enumerate(ref):
        x, y, w, h = r["box"]
        center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
        if rng.random() < 0.3:
          center += 0.4 * (rng.random(2) - 0.5) * [w, h]
        np.testing.assert_array_equal(got[i], center)
      # The same draws on a float32-rounded box size (the previous code) move some centres.
      rounded = geometry.frozen_center_shift(rec.center_xy, rec.bbox_xywh[:, 2:].astype(
          np.float32), np.random.default_rng(seed))
      float32_box_differs += int(np.any(rounded != got, axis=1).sum())
  assert float32_box_differs > 0


def _mm2020_affine(center, scale, rot, output_size):
  """MMPose v0.8 `get_affine_transform`: arithmetic in the inputs' precision, float32 points."""
  scale_tmp = scale * 200.0
  src_w = scale_tmp[0]
  rot_rad = np.pi * rot / 180
  sn, cs = np.sin(rot_rad), np.cos(rot_rad)
  pt = [0., src_w * -0.5]
  src_dir = np.array([pt[0] * cs - pt[1] * sn, pt[0] * sn + pt[1] * cs])
  dst_dir = np.array([0., output_size[0] * -0.5])

  def third(a, b):
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=np.float32)
  src, dst = np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32)
  src[0, :] = center
  src[1, :] = center + src_dir
  src[2, :] = third(src[0, :], src[1, :])
  dst[0, :] = [output_size[0] * 0.5, output_size[1] * 0.5]
  dst[1, :] = np.array([output_size[0] * 0.5, output_size[1] * 0.5]) + dst_dir
  dst[2, :] = third(dst[0, :], dst[1, :])
  return cv2.getAffineTransform(np.float32(src), np.float32(dst))


def _mm2020_mpii_sample(img, a, flip_pairs, rng):
  """MMPose v0.8 MPII: `_get_db` (np.float centre/scale), then RandomFlip → ScaleRotation(40,
  0.5, 0.6) → Affine, with the image mirrored for real. No half-body step exists."""
  center = np.array(a["center"], dtype=np.float64)
  scale = np.array([a["scale"], a["scale"]], dtype=np.float64)
  if center[0] != -1:
    center[1] = center[1] + 15 * scale[1]
    scale = scale * 1.25
  center = center - 1
  joints = np.zeros((16, 3), np.float32)
  joints[:, :2] = np.array(a["joints"])[:, :2] - 1
  vis = np.zeros((16, 3), np.float32)
  vis[:, :2] = np.array(a["joints_vis"])[:, None]
  if rng.random() <= 0.5:
    img = img[:, ::-1, :]
    flipped, flipped_vis = joints.copy(), vis.copy()
    for left, right in flip_pairs:
      flipped[left], flipped[right] = joints[right], joints[left]
      flipped_vis[left], flipped_vis[right] = vis[right], vis[left]
    flipped[:, 0] = img.shape[1] - 1 - flipped[:, 0]
    joints, vis = flipped * flipped_vis, flipped_vis
    center[0] = img.shape[1] - center[0] - 1
  s_factor = np.clip(rng.standard_normal() * 0.5 + 1, 0.5, 1.5)
  scale = scale * s_factor
  r_factor = np.clip(rng.standard_normal() * 40, -80, 80)
  rot = r_factor if rng.random() <= 0.6 else 0
  trans = _mm2020_affine(center, scale, rot, (256, 256))
  crop = cv2.warpAffine(img, trans, (256, 256), flags=cv2.INTER_LINEAR)
  for i in range(16):
    if vis[i, 0] > 0.0:
      joints[i, 0:2] = trans @ np.array([joints[i, 0], joints[i, 1], 1.])
  return crop, joints[:, :2], vis[:, 0]


def test_mpii_training_samples_are_the_2020_references(fixtures_dir):
  """MPII crops, joints and targets bit-equal to the 2020 code given the same draws, and the
  same draws in number and order (the half-body step of probability 0 draws nothing)."""
  from sbpose_jax import heatmaps, keypoints
  ann = fixtures_dir / "mpii" / "test_mpii.json"
  data = json.loads(ann.read_text())
  rec = readers.read_mpii(ann, fixtures_dir / "mpii")
  cfg = config_lib.load("mpii_res50", ["--config.data.num_workers=0"])
  info = keypoints.get("mpii")
  loader = pipeline.ImageLoader(rec)
  steps = pipeline.augmentations(cfg, info) + pipeline.crop_and_target(cfg)
  as_float32 = dataclasses.replace(rec, center_xy=rec.center_xy.astype(np.float32),
                                   scale_wh=rec.scale_wh.astype(np.float32))
  float32_differs = 0
  for seed in range(8):
    for i, a in enumerate(data):
      el = loader.map(i)
      ref_rng, rng = _CountingRng((seed, i)), _CountingRng((seed, i))
      ref_crop, ref_joints, ref_vis = _mm2020_mpii_sample(el["image"], a, info.flip_pairs,
                                                          ref_rng)
      out = dict(el)
      for t in steps:
        out = t.random_map(out, rng) if hasattr(t, "random_map") else t.map(out)
      assert rng.calls == ref_rng.calls
      np.testing.assert_array_equal(out["image"], ref_crop)
      ref_t, ref_w = heatmaps.encode(ref_joints, ref_vis, (64, 64), 2.0, 4.0)
      np.testing.assert_array_equal(out["target"], ref_t)
      np.testing.assert_array_equal(out["target_weight"], ref_w)
      # The same draws from float32 centre/scale (the previous records) move crop pixels.
      low = dict(pipeline.ImageLoader(as_float32).map(i))
      low_rng = _CountingRng((seed, i))
      for t in steps:
        low = t.random_map(low, low_rng) if hasattr(t, "random_map") else t.map(low)
      float32_differs += int(not np.array_equal(low["image"], ref_crop))
  assert float32_differs > 0
  # Evaluation crops: the 2020 test pipeline warps with the float64 centre and scale as well.
  crops = pipeline.EvalBatchLoader(rec, (256, 256)).map((np.arange(len(rec)), np.ones(
      len(rec), bool)))
  for i, a in enumerate(data):
    c = np.array(a["center"], dtype=np.float64)
    s = np.array([a["scale"], a["scale"]], dtype=np.float64)
    c[1], s = c[1] + 15 * s[1], s * 1.25
    image = loader.map(i)["image"]
    ref = cv2.warpAffine(image, _mm2020_affine(c - 1, s, 0, (256, 256)), (256, 256),
                         flags=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(crops[i]["image"], ref)
