"""grain transforms against MMPose 0.x's training pipeline (docs/reference.md §3, §4.1)."""
import json

import cv2
import grain
import jax
import numpy as np
import pytest

from helpers import mm_get_affine_transform
from sbpose_jax import geometry
from sbpose_jax import heatmaps
from sbpose_jax import keypoints
from sbpose_jax.data import transforms

COCO = keypoints.COCO
INPUT_WH, HEATMAP_WH = (192, 256), (48, 64)


# --- MMPose 0.x's pipeline, re-implemented here; randomness from the same generator -------------
def _mm_half_body(joints, vis, rng):
  upper, lower = [], []
  for j in range(len(joints)):
    if vis[j] > 0:
      # MM keeps joints as (K, 3) with z = 0.
      (upper if j in COCO.upper_body_ids else lower).append(np.r_[joints[j], np.float32(0)])
  if rng.standard_normal() < 0.5 and len(upper) > 2:
    sel = upper
  elif len(lower) > 2:
    sel = lower
  else:
    sel = upper
  if len(sel) < 2:
    return None, None
  sel = np.array(sel, dtype=np.float32)
  center = sel.mean(axis=0)[:2]
  w, h = (float(v) for v in (sel.max(axis=0) - sel.min(axis=0))[:2])   # numpy-1 float64
  if w > 0.75 * h:
    h = w * 1.0 / 0.75
  elif w < 0.75 * h:
    w = h * 0.75
  return center, np.array([w / 200.0, h / 200.0], dtype=np.float32) * 1.5


def mm_train_pipeline(img, center, scale, joints, vis, rng):
  """Flip → half-body → scale/rotation → affine, as MM (image mirrored for real)."""
  center, joints, vis = center.copy(), joints.copy(), vis.copy()
  seen = set()
  if rng.random() <= 0.5:
    seen.add("flip")
    img = img[:, ::-1, :]
    flipped, flipped_vis = joints.copy(), vis.copy()
    for left, right in COCO.flip_pairs:
      flipped[left], flipped[right] = joints[right], joints[left]
      flipped_vis[left], flipped_vis[right] = vis[right], vis[left]
    flipped[:, 0] = img.shape[1] - 1 - flipped[:, 0]
    joints, vis = flipped * flipped_vis[:, None], flipped_vis
    center[0] = img.shape[1] - center[0] - 1
  if np.sum(vis) > 8 and rng.random() < 0.3:
    c, s = _mm_half_body(joints, vis, rng)
    if c is not None:
      center, scale = c, s
      seen.add("half_body")
  s_factor = np.clip(rng.standard_normal() * 0.5 + 1, 0.5, 1.5)
  r_factor = np.clip(rng.standard_normal() * 40, -80, 80)
  rot = r_factor if rng.random() <= 0.6 else 0
  seen.add("rotation" if rot else "no_rotation")
  scale = scale * np.float32(s_factor)          # numpy 1: float32 array ⊗ float64 scalar
  trans = mm_get_affine_transform(center, scale, rot, INPUT_WH)
  crop = cv2.warpAffine(img, trans, INPUT_WH, flags=cv2.INTER_LINEAR)
  for i in range(len(joints)):
    if vis[i] > 0.0:
      joints[i, 0:2] = trans @ np.array([joints[i, 0], joints[i, 1], 1.])
  return crop, joints, vis, frozenset(seen)


def _pipeline(fold=False, with_heatmaps=True):
  return [transforms.RandomFlip(COCO.flip_pairs, 0.5, fold_into_affine=fold),
          transforms.HalfBody(COCO.upper_body_ids, INPUT_WH, 8, 0.3),
          transforms.RandomScaleRotation(0.5, 40, 0.6),
          transforms.TopDownAffine(INPUT_WH),
          transforms.GenerateTarget(INPUT_WH, HEATMAP_WH, 2.0, with_heatmaps)]


def _apply(pipeline, element, rng):
  for t in pipeline:
    element = t.random_map(element, rng) if hasattr(t, "random_map") else t.map(element)
  return element


@pytest.fixture
def coco_elements(fixtures_dir):
  root = fixtures_dir / "coco"
  data = json.loads((root / "test_coco.json").read_text())
  images = {im["id"]: im["file_name"] for im in data["images"]}
  decoded = {}
  out = []
  for ann in data["annotations"]:
    if ann.get("num_keypoints", 0) == 0 or ann.get("iscrowd"):
      continue
    fname = images[ann["image_id"]]
    if fname not in decoded:
      decoded[fname] = cv2.cvtColor(cv2.imread(str(root / fname)), cv2.COLOR_BGR2RGB)
    kp = np.asarray(ann["keypoints"], np.float32).reshape(-1, 3)
    c, s = geometry.box_to_center_scale(np.asarray(ann["bbox"], np.float64), 0.75)
    out.append(dict(image=decoded[fname], center=c, scale=s, joints=kp[:, :2].copy(),
                    joints_vis=np.minimum(1, kp[:, 2]), index=len(out)))
  return out


def test_training_pipeline_equals_reference(coco_elements):
  """Same seed → same draws → crop equal pixel for pixel, joints and targets bit for bit."""
  cases = set()
  for seed in range(6):
    for el in coco_elements:
      ref_crop, ref_joints, ref_vis, seen = mm_train_pipeline(
          el["image"], el["center"], el["scale"], el["joints"], el["joints_vis"],
          np.random.default_rng((seed, el["index"])))
      ref_t, ref_w = heatmaps.encode(ref_joints, ref_vis, HEATMAP_WH, 2.0, 4.0)
      out = _apply(_pipeline(fold=False), dict(el), np.random.default_rng((seed, el["index"])))
      np.testing.assert_array_equal(out["image"], ref_crop)
      np.testing.assert_array_equal(out["joints"][:, :2] * 4, ref_joints)
      np.testing.assert_array_equal(out["joints_vis"], ref_vis)
      np.testing.assert_array_equal(out["target"], ref_t)
      np.testing.assert_array_equal(out["target_weight"], ref_w)
      np.testing.assert_array_equal(out["joints"][:, 2], ref_w)
      folded = _apply(_pipeline(fold=True), dict(el), np.random.default_rng((seed, el["index"])))
      # Folding the flip is close, not exact, under OpenCV 4 (docs/parity.md): opt-in.
      assert np.abs(folded["image"].astype(int) - ref_crop).max() <= 16
      np.testing.assert_array_equal(folded["target"], ref_t)
      assert folded["flipped"] == ("flip" in seen)
      cases.add(seen)
  # Every branch was exercised: flip alone, half-body with and without flip, rotation or not.
  assert {frozenset({"flip", "no_rotation"}), frozenset({"flip", "rotation"}),
          frozenset({"half_body", "rotation"}), frozenset({"flip", "half_body", "rotation"}),
          frozenset({"no_rotation"})} <= cases, cases


def test_inputs_are_not_modified(coco_elements):
  el = coco_elements[0]
  before = {k: np.copy(v) for k, v in el.items() if isinstance(v, np.ndarray)}
  for seed in range(5):
    _apply(_pipeline(), el, np.random.default_rng(seed))
  for k, v in before.items():
    np.testing.assert_array_equal(el[k], v)


def _toy(k=17, vis=None):
  rng = np.random.default_rng(0)
  return dict(image=np.zeros((100, 160, 3), np.uint8), center=np.float32([80, 50]),
              scale=np.float32([0.5, 0.6667]), joints=rng.uniform(20, 90, (k, 2)).astype(
                  np.float32), joints_vis=np.ones(k, np.float32) if vis is None else vis)


def test_random_flip_twice_is_identity_and_folds():
  el = _toy()
  flip = transforms.RandomFlip(COCO.flip_pairs, prob=1.0, fold_into_affine=True)
  once = flip.random_map(el, np.random.default_rng(0))
  assert once["flipped"] and once["flip_pending"] and once["image"] is el["image"]
  np.testing.assert_array_equal(once["joints"][1], [159 - el["joints"][2, 0], el["joints"][2, 1]])
  twice = flip.random_map(once, np.random.default_rng(0))
  assert not twice["flipped"] and not twice["flip_pending"]
  np.testing.assert_allclose(twice["joints"], el["joints"], atol=1e-4)
  np.testing.assert_allclose(twice["center"], el["center"], atol=1e-4)
  never = transforms.RandomFlip(COCO.flip_pairs, prob=0.0).random_map(el, np.random.default_rng(0))
  assert not never["flipped"]
  np.testing.assert_array_equal(never["joints"], el["joints"])
  eager = transforms.RandomFlip(COCO.flip_pairs, 1.0).random_map(   # default: mirror the image
      dict(el, image=np.arange(160, dtype=np.uint8)[None, :, None].repeat(3, 2)),
      np.random.default_rng(0))
  assert not eager["flip_pending"] and eager["image"][0, 0, 0] == 159


def test_half_body_applies_only_above_the_joint_count():
  hb = transforms.HalfBody(COCO.upper_body_ids, INPUT_WH, 8, prob=1.0)
  vis8 = np.zeros(17, np.float32)
  vis8[:8] = 1
  el = _toy(vis=vis8)
  assert hb.random_map(el, np.random.default_rng(0)) is el            # Σvis = 8: not > 8
  el = _toy()
  applied = [not np.array_equal(hb.random_map(el, np.random.default_rng(s))["center"],
                                el["center"]) for s in range(50)]
  assert all(applied)
  hb = transforms.HalfBody(COCO.upper_body_ids, INPUT_WH, 8, prob=0.3)
  rate = np.mean([not np.array_equal(hb.random_map(el, np.random.default_rng(s))["center"],
                                     el["center"]) for s in range(600)])
  assert 0.22 < rate < 0.38


def test_random_scale_rotation_ranges():
  t = transforms.RandomScaleRotation(0.5, 40, 0.6)
  el = _toy()
  outs = [t.random_map(el, np.random.default_rng(s)) for s in range(800)]
  factors = np.array([o["scale"][0] / el["scale"][0] for o in outs])
  rots = np.array([o["rotation"] for o in outs])
  assert factors.min() >= 0.5 - 1e-6 and factors.max() <= 1.5 + 1e-6
  assert np.abs(rots).max() <= 80 and 0.33 < np.mean(rots == 0) < 0.47
  assert outs[0]["scale"].dtype == np.float32


def test_generate_target_modes_and_device_targets():
  el = dict(joints=np.float32([[81, 122], [-31, 10], [500, 10]]), joints_vis=np.float32([1, 1, 1]))
  full = transforms.GenerateTarget(INPUT_WH, HEATMAP_WH, 2.0).map(el)
  assert full["target"].shape == (64, 48, 3) and full["target"][31, 20, 0] == 1.0
  np.testing.assert_array_equal(full["target_weight"], [1, 1, 0])
  np.testing.assert_array_equal(full["joints"], [[20.25, 30.5, 1], [-7.75, 2.5, 1], [125, 2.5, 0]])
  light = transforms.GenerateTarget(INPUT_WH, HEATMAP_WH, 2.0, with_heatmaps=False).map(el)
  assert "target" not in light
  np.testing.assert_array_equal(light["target_weight"], full["target_weight"])
  t_dev, w_dev = jax.jit(lambda j: heatmaps.encode_jnp(j, HEATMAP_WH, 2.0))(light["joints"][None])
  np.testing.assert_array_equal(np.asarray(t_dev[0]), full["target"])
  np.testing.assert_array_equal(np.asarray(w_dev[0]), full["target_weight"])
  with pytest.raises(KeyError, match="joints_vis"):
    transforms.GenerateTarget(INPUT_WH, HEATMAP_WH, 2.0).map({"joints": el["joints"]})


def test_transforms_in_a_grain_dataset_are_deterministic(coco_elements):
  def run(seed):
    ds = grain.MapDataset.source(coco_elements[:3]).seed(seed)
    for t in _pipeline(with_heatmaps=False):
      ds = ds.random_map(t) if isinstance(t, grain.transforms.RandomMap) else ds.map(t)
    return [ds[i] for i in range(3)]
  a, b, c = run(1), run(1), run(2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["joints"], y["joints"])
    assert x["image"].shape == (256, 192, 3) and x["joints"].shape == (17, 3)
  assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))
