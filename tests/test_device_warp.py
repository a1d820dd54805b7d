"""The device warp against cv2.warpAffine on real crops and against the host-warp path."""
import cv2
import jax
import numpy as np
import pytest

from sbpose_jax.commands import config as config_lib
from sbpose_jax import geometry
from sbpose_jax.commands import pack as pack_lib
from sbpose_jax.data import device_warp
from sbpose_jax.data import packed
from sbpose_jax.data import readers
from sbpose_jax.data import ycc420

OUT_WH = (48, 64)
warp = jax.jit(device_warp.warp_affine, static_argnums=2)


def test_matches_cv2_on_real_crops(fixtures_dir):
  """Random similarity warps (zoom, rotation, mirror, border) of the COCO fixture images."""
  rng = np.random.default_rng(0)
  images, mats, refs = [], [], []
  for name in sorted((fixtures_dir / "coco").glob("*.jpg")):
    img = cv2.imread(str(name))[:320, :320]
    for _ in range(4):
      center = rng.uniform(0, 320, 2)
      m = geometry.get_affine_transform(center, np.array([1.2, 1.6]) * rng.uniform(0.2, 1.5),
                                        rng.uniform(-80, 80), OUT_WH)
      if rng.random() < 0.5:
        m = geometry.fold_flip(m, img.shape[1])
      refs.append(cv2.warpAffine(img, m, OUT_WH, flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0))
      images.append(img)
      mats.append(cv2.invertAffineTransform(m).astype(np.float32))
  out = np.asarray(warp(np.stack(images), np.stack(mats), OUT_WH))
  d = np.abs(out - np.stack(refs))
  # float32 matrices move a rare source coordinate across cv2's 1/32 px step: one step moves
  # a bilinear weight by 1/32, at most 255/32 ≈ 8 levels per axis.
  assert d.max() <= 16 and (d > 0).mean() < 1e-3


@pytest.mark.parametrize("chroma", ["yuv420", "planes"])
def test_matches_host_warp_for_the_same_draws(fixtures_dir, tmp_path, chroma):
  """Planes: the host converts with numpy, the device with jnp (bit-equal, test_ycc420.py)."""
  cfg = config_lib.load("coco_res50", [
      f"--config.data.root={fixtures_dir / 'coco'}", "--config.data.train_ann=test_coco.json",
      "--config.data.train_images=", "--config.data.num_workers=0",
      f"--config.data.input_size={OUT_WH!r}", "--config.data.heatmap_size=(12, 16)",
      f"--config.data.pack_chroma={chroma}"])
  records = readers.read_split(cfg.data, "train")
  pack_lib.write_pack(records, cfg, "train", tmp_path, workers=1, progress_bar=False)
  pack = packed.open_pack(tmp_path, cfg)
  kw = dict(batch_size=4, seed=1, num_epochs=2, host_targets=False)
  host = list(packed.train_dataset(pack, cfg, on_device=False, **kw))
  dev = list(packed.train_dataset(pack, cfg, on_device=True, **kw))
  wp, hp = pack.pack_wh
  for a, b in zip(host, dev):
    assert b["image"].shape[1:] == ((hp * 3 // 2, wp) if chroma == "planes" else (hp, wp, 3))
    assert b["image"].dtype == np.uint8 and b["warp_matrix"].shape == (4, 2, 3)
    np.testing.assert_array_equal(a["joints"], b["joints"])
    np.testing.assert_array_equal(a["target_weight"], b["target_weight"])
    crops = ycc420.planes_to_colour_jnp(b["image"]) if chroma == "planes" else b["image"]
    d = np.abs(np.asarray(warp(crops, b["warp_matrix"], OUT_WH)) - a["image"])
    assert d.max() <= 16 and (d > 0).mean() < 1e-3


@pytest.mark.parametrize("chroma", ["yuv420", "planes"])
def test_train_step_warps_on_device(fixtures_dir, tmp_path, chroma):
  """One train step from packed crops + matrices equals the step on host-warped crops."""
  from sbpose_jax import models  # why: only this test or script needs it
  from sbpose_jax.training import loop as training
  from sbpose_jax.training import state as ts  # why: only this test or script needs it
  wh = (96, 96)
  cfg = config_lib.load("coco_res50", [
      f"--config.data.root={fixtures_dir / 'coco'}", "--config.data.train_ann=test_coco.json",
      "--config.data.train_images=", "--config.data.num_workers=0",
      f"--config.data.input_size={wh!r}", "--config.data.heatmap_size=(24, 24)",
      "--config.model.depth=18", "--config.model.width=8",
      "--config.model.deconv_filters=(8,8,8)", "--config.model.dtype=float32",
      "--config.data.source=packed", f"--config.data.packed_dir={tmp_path}",
      "--config.data.warp_on_device=True", f"--config.data.pack_chroma={chroma}"])
  with pytest.raises(FileNotFoundError, match="sbpose_jax.pack"):
    training._prepare_data(cfg)
  pack_lib.write_pack(readers.read_split(cfg.data, "train"), cfg, "train", tmp_path,
                      workers=1, progress_bar=False)
  pack = training._prepare_data(cfg)
  assert isinstance(pack, packed.Pack)
  kw = dict(batch_size=4, seed=0, host_targets=False)
  dev = next(iter(packed.train_dataset(pack, cfg, on_device=True, **kw)))
  host = next(iter(packed.train_dataset(pack, cfg, on_device=False, **kw)))
  model = models.build(cfg.model, 17)
  tx, _ = training.make_optimizer(cfg, 10)
  settings = training.StepSettings(0, "rgb", "rgb", (24, 24), 2.0, wh)
  losses = []
  for batch, keys in ((dev, ("image", "joints", "warp_matrix")), (host, ("image", "joints"))):
    state = ts.create_train_state(model, tx, jax.random.PRNGKey(0), wh[::-1])
    _, metrics = training.train_step(state, {k: batch[k] for k in keys}, model=model,
                                  settings=settings)
    losses.append(float(metrics["loss_sum"]) / float(metrics["count"]))
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-3)
