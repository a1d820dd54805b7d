"""Test-time inference: normalisation, flip test, on-device decoding, the predict function."""
import functools

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import mm_decode_default, mm_flip_back
from sbpose_jax.commands import config as config_lib
from sbpose_jax import geometry, keypoints
from sbpose_jax.inference import pose as inference

TINY = ["--config.data.input_size=(48,64)", "--config.data.heatmap_size=(12,16)"]


# ------------------------------------------------------------------ reference implementations
# Written from docs/reference.md §5 independently of the package (loops, as MMPose).

def ref_transform(coords, center, scale, hm_wh):
  s = scale * 200.0
  out = np.empty_like(coords)
  out[:, 0] = coords[:, 0] * (s[0] / hm_wh[0]) + center[0] - s[0] * 0.5
  out[:, 1] = coords[:, 1] * (s[1] / hm_wh[1]) + center[1] - s[1] * 0.5
  return out


# ------------------------------------------------------------------------------------ tests

def test_normalize_values_and_channel_order():
  img = np.zeros((1, 2, 2, 3), np.uint8)
  img[..., 0], img[..., 1], img[..., 2] = 10, 120, 250
  rgb = np.asarray(inference.normalize(img, "rgb", "rgb"))
  want = (np.array([10, 120, 250]) / 255.0 - np.array(geometry.IMAGENET_MEAN_RGB)) / np.array(
      geometry.IMAGENET_STD_RGB)
  np.testing.assert_allclose(rgb[0, 0, 0], want, rtol=1e-5)
  # Data RGB, weights BGR: channels are swapped, constants still applied by index.
  bgr = np.asarray(inference.normalize(img, "rgb", "bgr"))
  want_bgr = (np.array([250, 120, 10]) / 255.0 - np.array(geometry.IMAGENET_MEAN_RGB)) / np.array(
      geometry.IMAGENET_STD_RGB)
  np.testing.assert_allclose(bgr[0, 0, 0], want_bgr, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(inference.normalize(img, "bgr", "bgr")), rgb)
  with pytest.raises(ValueError, match="colour order"):
    inference.normalize(img, "rgb", "yuv")


def _equivariant_apply(info, seed=0):
  """A stride-1 conv 'network' with h(mirror x) == mirror(swap(h(x))) exactly.

  Channel b of a flip pair uses the mirrored kernel of channel a; unpaired channels use
  left-right symmetric kernels.
  """
  rng = np.random.default_rng(seed)
  k = info.num_joints
  w = rng.normal(size=(3, 3, 3, k)).astype(np.float32)
  paired = set()
  for a, b in info.flip_pairs:
    w[..., b] = w[:, ::-1, :, a]
    paired |= {a, b}
  for j in range(k):
    if j not in paired:
      w[..., j] = 0.5 * (w[..., j] + w[:, ::-1, :, j])
  w = jnp.asarray(w)

  def apply(x):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision="highest")
  return apply


def test_flip_test_of_an_equivariant_model_is_the_plain_prediction():
  info = keypoints.COCO
  apply = _equivariant_apply(info)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 10, 8, 3)), jnp.float32)
  h1 = np.asarray(apply(x))
  no_shift = np.asarray(inference.flip_test_heatmaps(apply, x, info.flip_index, shift=False))
  np.testing.assert_allclose(no_shift, h1, rtol=1e-5, atol=1e-5)
  # The shift moves only the flipped half one pixel right; column 0 keeps its value.
  shifted = np.asarray(inference.flip_test_heatmaps(apply, x, info.flip_index, shift=True))
  h1_right = np.concatenate([h1[:, :, :1], h1[:, :, :-1]], axis=2)
  np.testing.assert_allclose(shifted, (h1 + h1_right) / 2, rtol=1e-5, atol=1e-5)


def test_flip_test_breaks_for_wrong_pairs():
  info = keypoints.COCO
  apply = _equivariant_apply(info)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 10, 8, 3)), jnp.float32)
  wrong = np.arange(info.num_joints)  # no channel swap
  out = np.asarray(inference.flip_test_heatmaps(apply, x, wrong, shift=False))
  assert np.abs(out - np.asarray(apply(x))).max() > 1e-2


def _dot_model(hm_wh, sigma=1.5):
  """'Network' that finds the brightest input column u and draws a Gaussian at u/4.

  It mimics a model trained with the W/2 crop-centre convention (target at x_crop / 4).
  """
  w_hm, h_hm = hm_wh
  xs = jnp.arange(w_hm, dtype=jnp.float32)

  def apply(x):
    col = jnp.argmax(x[..., 0].max(axis=1), axis=1).astype(jnp.float32)    # (N,)
    g = jnp.exp(-(xs[None] - col[:, None] / 4.0) ** 2 / (2 * sigma**2))     # (N, W_hm)
    return jnp.broadcast_to(g[:, None, :, None], (x.shape[0], h_hm, w_hm, 1))
  return apply


def test_shift_direction_restores_alignment():
  """§8.2: flip + flip_back sits 0.75 px left; the +1 px shift leaves +0.25 px."""
  w_in, h_in = 192, 16
  hm_wh = (w_in // 4, 4)
  apply = _dot_model(hm_wh)
  u = 101
  x = np.zeros((1, h_in, w_in, 3), np.float32)
  x[0, :, u] = 1.0
  xs = np.arange(hm_wh[0])

  def centroid(hm):
    row = np.asarray(hm)[0, 0, :, 0]
    return float((row * xs).sum() / row.sum())
  flip_test = jax.jit(inference.flip_test_heatmaps, static_argnums=(0, 2, 3))
  plain = centroid(apply(jnp.asarray(x)))
  flipped = centroid(flip_test(apply, jnp.asarray(x), (0,), False))
  shifted = centroid(flip_test(apply, jnp.asarray(x), (0,), True))
  assert plain == pytest.approx(u / 4, abs=1e-3)
  assert flipped - plain == pytest.approx(-0.375, abs=1e-3)   # mean of 0 and -0.75
  assert shifted - plain == pytest.approx(0.125, abs=1e-3)    # mean of 0 and +0.25


def _random_heatmaps(rng, b=3, h=16, w=12, k=17):
  hm = rng.normal(scale=0.1, size=(b, h, w, k)).astype(np.float32)
  hm[0, 5, 6, 0] = 2.0            # interior peak
  hm[0, 0, 3, 1] = 2.0            # peak on the top edge: no offset
  hm[0, 7, 1, 2] = 2.0            # x = 1: no offset
  hm[0, 8, w - 2, 3] = 2.0        # x = W-2: offset allowed
  hm[0, 8, w - 1, 4] = 2.0        # x = W-1: no offset
  hm[1, ..., 5] = -1.0            # all negative → (-1, -1)
  hm[1, ..., 6] = 0.0             # all zero → (-1, -1)
  hm[2, 4, 4, 7] = hm[2, 4, 6, 7] = 3.0   # tie: first maximum wins
  hm[2, 4, 5, 8], hm[2, 4, 4, 8], hm[2, 4, 6, 8] = 3.0, 1.0, 1.0  # equal neighbours: sign 0
  return hm


def test_on_device_decoding_equals_numpy_reference():
  rng = np.random.default_rng(0)
  hm = _random_heatmaps(rng)
  b, h, w, k = hm.shape
  center = rng.uniform(50, 400, (b, 2)).astype(np.float32)
  scale = rng.uniform(0.3, 3, (b, 2)).astype(np.float32)
  scale[:, 1] = scale[:, 0] * 4 / 3
  s = inference.InferenceSettings(True, True, "default", 11, tuple(range(k)), (w, h), "rgb",
                                  "rgb")

  @jax.jit
  def decode(hm, c, sc):
    return inference.predict_keypoints(lambda x: hm, jnp.zeros((b, 4, 4, 3), jnp.uint8), c,
                                       sc, s._replace(flip=False))
  got = np.asarray(decode(hm, center, scale))
  coords, maxvals = mm_decode_default(np.moveaxis(hm, -1, 1))
  want = np.stack([ref_transform(coords[i], center[i], scale[i], (w, h)) for i in range(b)])
  np.testing.assert_allclose(got[..., :2], want, rtol=0, atol=2e-4)
  np.testing.assert_array_equal(got[..., 2], maxvals)
  # The edge cases really took the branches they are meant to.
  assert coords[0, 1, 0] % 1 == 0 and coords[0, 3, 0] % 1 != 0
  assert (coords[1, 5] == -1).all() and (coords[1, 6] == -1).all()
  assert abs(coords[2, 7, 0] - 4) <= 0.25 and coords[2, 8, 0] == 5


def test_settings_reject_joint_mismatch_and_bad_decode():
  cfg = config_lib.load("coco_res50")
  with pytest.raises(ValueError, match="14 joints"):
    inference.settings_from_config(cfg, num_joints=14)
  cfg = config_lib.load("coco_res50", ["--config.test.decode=dark"])
  with pytest.raises(ValueError, match="decode"):
    inference.settings_from_config(cfg)


class TinyNet(nn.Module):
  """Two stride-2 convs: a stand-in for PoseResNet that compiles in a second."""
  num_joints: int = 17

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(8, (3, 3), (2, 2), padding=((1, 1), (1, 1)))(x))
    return nn.Conv(self.num_joints, (3, 3), (2, 2), padding=((1, 1), (1, 1)))(x)


@pytest.fixture(scope="module")
def tiny():
  cfg = config_lib.load("coco_res50", TINY)
  model = TinyNet()
  # Random values for the shapes of init: no compile of the init function.
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 48, 3)))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda a: rng.normal(0.0, 0.2, a.shape).astype(np.float32), shapes)
  return cfg, model, variables


def _batch(rng, b=5, pad=2):
  images = rng.integers(0, 256, (b, 64, 48, 3), dtype=np.uint8)
  center = rng.uniform(100, 300, (b, 2)).astype(np.float32)
  scale = np.stack([np.full(b, 1.2), np.full(b, 1.6)], 1).astype(np.float32)
  mask = np.arange(b) < b - pad
  return dict(image=images, center=center, scale=scale, bbox_score=np.ones(b, np.float32),
              index=np.arange(b, dtype=np.int32), mask=mask)


def test_predict_fn_matches_reference_pipeline(tiny):
  cfg, model, variables = tiny
  batch = _batch(np.random.default_rng(0))
  predict = inference.make_predict_fn(model, variables, cfg)
  got = np.asarray(predict(batch))

  # Reference: two separate forward passes, numpy flip-back/shift/average/decode/transform.
  x = (batch["image"].astype(np.float32) / 255 - np.array(geometry.IMAGENET_MEAN_RGB)) / np.array(
      geometry.IMAGENET_STD_RGB)
  fwd = jax.jit(functools.partial(model.apply, variables, train=False))
  h1 = np.moveaxis(np.asarray(fwd(jnp.asarray(x, jnp.float32))), -1, 1)
  h2 = np.moveaxis(np.asarray(fwd(jnp.asarray(x[:, :, ::-1], jnp.float32))), -1, 1)
  h2 = mm_flip_back(h2, keypoints.COCO.flip_pairs)
  h2[..., 1:] = h2[..., :-1].copy()
  coords, maxvals = mm_decode_default((h1 + h2) * 0.5)
  want = np.stack([ref_transform(coords[i], batch["center"][i], batch["scale"][i], (12, 16))
                   for i in range(len(coords))])
  np.testing.assert_allclose(got[..., 2], maxvals, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got[..., :2], want, atol=1e-3)


def test_predict_fn_colour_order_from_meta(tiny):
  cfg, model, variables = tiny
  batch = _batch(np.random.default_rng(1))
  meta = type("Meta", (), {"colour_order": "bgr", "num_joints": 17})()
  swapped = dict(batch, image=batch["image"][..., ::-1])
  a = np.asarray(inference.make_predict_fn(model, variables, cfg, meta)(batch))
  b = np.asarray(inference.make_predict_fn(model, variables, cfg)(swapped))
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_unbiased_decoding_runs_on_host(tiny):
  cfg, model, variables = tiny
  cfg = config_lib.load("coco_res50", TINY + ["--config.test.decode=unbiased"])
  out = inference.make_predict_fn(model, variables, cfg)(_batch(np.random.default_rng(2)))
  assert isinstance(out, np.ndarray) and out.shape == (5, 17, 3) and np.isfinite(out).all()
