"""Saved models: ModelMeta (the one record of the architecture), save/load, the atomic swap,
building the network and the fit checks. No PyTorch, no compile (shapes via eval_shape)."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbpose_jax.commands import config as config_lib
from sbpose_jax import models
from sbpose_jax.weights import saved_model

TINY = saved_model.ModelMeta(depth=18, num_joints=5, width=8, deconv_filters=(8, 8, 8),
                             dataset="", source="test", step=7)


def random_variables(meta, seed=0):
  """Random {"params", "batch_stats"} of `meta`'s network, built from shapes alone."""
  model = saved_model.build_model(meta)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def test_meta_json_round_trip_keeps_tuples_and_step():
  again = saved_model.ModelMeta.from_json(TINY.to_json())
  assert again == TINY and again.step == 7 and again.deconv_filters == (8, 8, 8)
  data = json.loads(TINY.to_json())
  data["from_a_newer_version"] = 1                      # unknown fields are ignored
  assert saved_model.ModelMeta.from_json(json.dumps(data)) == TINY
  with pytest.raises(ValueError, match="m.json: not a valid model description"):
    saved_model.ModelMeta.from_json("{'depth': 18", "m.json")
  with pytest.raises(ValueError, match="colour_order"):
    dataclasses.replace(TINY, colour_order="gbr")


def test_architecture_defaults_live_once():
  """The base config's model section is ModelMeta's defaults (nothing written twice)."""
  base = config_lib.load("common").model
  assert {f: base[f] for f in saved_model.ARCHITECTURE} == \
      saved_model.ModelMeta.default_architecture()
  cfg = config_lib.load("demo")
  meta = saved_model.ModelMeta.from_config(cfg, step=3)
  assert (meta.depth, meta.width, meta.num_joints, meta.dataset) == (18, 16, 17, "coco")
  assert meta.architecture() == {f: cfg.model[f] for f in saved_model.ARCHITECTURE}
  assert meta.step == 3


def test_save_load_and_atomic_replace(tmp_path):
  variables = random_variables(TINY)
  saved_model.save_model(tmp_path / "m", variables, TINY)
  assert saved_model.is_saved_model(tmp_path / "m")
  assert saved_model.read_meta(tmp_path / "m") == TINY
  loaded, meta = saved_model.load_model(tmp_path / "m")
  assert meta == TINY
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  other = random_variables(TINY, seed=1)
  newer = dataclasses.replace(TINY, step=8)
  saved_model.save_model_atomic(tmp_path / "m", other, newer)
  loaded, meta = saved_model.load_model(tmp_path / "m")
  assert meta.step == 8
  jax.tree.map(np.testing.assert_array_equal, loaded, other)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]     # no temporary left beside
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="not a saved model"):
    saved_model.load_model(tmp_path / "empty")


def test_build_model_forms_and_dtypes():
  model = saved_model.build_model(TINY)
  assert isinstance(model, models.PoseResNet) and model.num_joints == 5 and model.width == 8
  assert model.precision == "highest" and model.dtype == jnp.float32   # float32 means float32
  fast = saved_model.build_model(TINY, "bfloat16", "subpixel")
  assert fast.dtype == jnp.bfloat16 and fast.precision is None
  assert fast.deconv_impl == "subpixel"
  backbone = saved_model.build_model(dataclasses.replace(TINY, num_joints=0, backbone_only=True))
  assert isinstance(backbone, models.ResNet)


def test_fit_checks_name_the_problem():
  saved_model.check_fits(dataclasses.replace(TINY, num_joints=17), "coco", "m")
  with pytest.raises(ValueError, match="m predicts 5 joints but dataset 'coco' has 17"):
    saved_model.check_fits(TINY, "coco", "m")
  with pytest.raises(ValueError, match="backbone without a pose head"):
    saved_model.check_fits(dataclasses.replace(TINY, backbone_only=True), "coco", "m")
  config = config_lib.load("demo")
  fits = saved_model.ModelMeta.from_config(config)
  saved_model.check_matches_config(fits, config)
  with pytest.raises(ValueError, match="width=8 but config demo implies 16"):
    saved_model.check_matches_config(dataclasses.replace(fits, width=8), config)
  with pytest.raises(ValueError, match=r"num_joints=5 .*\(data.dataset\)"):
    saved_model.check_matches_config(dataclasses.replace(fits, num_joints=5), config)


def test_random_variables_have_the_init_tree_and_are_deterministic():
  meta = saved_model.ModelMeta(depth=18, width=8, num_joints=5, deconv_filters=(8, 8, 8))
  a = saved_model.random_variables(meta, (64, 48), bias=0.5)
  want = jax.eval_shape(saved_model.build_model(meta).init, jax.random.PRNGKey(0),
                        jnp.zeros((1, 64, 48, 3)))
  assert jax.tree.structure(a) == jax.tree.structure(want)
  jax.tree.map(lambda x, s: np.testing.assert_equal((x.shape, x.dtype), (s.shape, s.dtype)),
               a, want)
  jax.tree.map(np.testing.assert_array_equal, a, saved_model.random_variables(meta, (64, 48),
                                                                              bias=0.5))
  np.testing.assert_array_equal(a["params"]["final_layer"]["bias"], 0.5)
  np.testing.assert_array_equal(a["batch_stats"]["bn1"]["var"], 1.0)
  kernel = a["params"]["conv1"]["kernel"]      # (7, 7, 3, 8): variance 1 / fan-in
  assert abs(kernel.std() * np.sqrt(7 * 7 * 3) - 1.0) < 0.15
