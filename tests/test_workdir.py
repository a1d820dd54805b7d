"""Training workdirs: config check, best/last bookkeeping, and a workdir read as a model (its
model_best, else model_last, else its latest training checkpoint). No model is compiled."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from sbpose_jax.commands import config as config_lib
from sbpose_jax.weights import saved_model
from sbpose_jax.training import workdir
from sbpose_jax.training import checkpoints as checkpoints_lib

META = saved_model.ModelMeta(depth=18, num_joints=17, width=8, deconv_filters=(8, 8, 8),
                             dataset="coco", source="test")


def _variables(value: float):
  return {"params": {"w": np.full((2, 3), value, np.float32)},
          "batch_stats": {"m": np.full((3,), value, np.float32)}}


def test_workdir_of_another_config_is_refused(tmp_path):
  a = config_lib.load("coco_res50")
  workdir.check_config(tmp_path, config_lib.load("coco_res101"))  # no checkpoint: replaced
  workdir.check_config(tmp_path, a)
  (tmp_path / checkpoints_lib.CHECKPOINT_DIR / "3").mkdir(parents=True)
  workdir.check_config(tmp_path, config_lib.load(
      "coco_res50", ["--config.log_every_steps=7", "--config.max_steps=3"]))  # operational
  # optim.lr may change on resume (issue 10): the BatchNorm grouping may not.
  with pytest.raises(ValueError, match=r"another config.*bn_group_size"):
    workdir.check_config(tmp_path, config_lib.load("coco_res50", ["--config.bn_group_size=8"]))
  with pytest.raises(ValueError, match="model.depth"):
    workdir.check_config(tmp_path, config_lib.load("coco_res101"))
  (tmp_path / "b" / checkpoints_lib.CHECKPOINT_DIR / "5").mkdir(parents=True)
  with pytest.raises(ValueError, match="no config.json"):
    workdir.check_config(tmp_path / "b", a)


def test_best_and_last_bookkeeping(tmp_path):
  at = lambda step: dataclasses.replace(META, step=step)
  assert workdir.read_best(tmp_path) is None and workdir.last_step(tmp_path) is None
  assert workdir.save_if_best(tmp_path, "val/AP", 0.5, _variables(1), at(10))
  assert not workdir.save_if_best(tmp_path, "val/AP", 0.4, _variables(2), at(20))   # worse
  assert not workdir.save_if_best(tmp_path, "val/AP", float("nan"), _variables(2), at(20))
  assert workdir.save_if_best(tmp_path, "val/AP", 0.45, _variables(3), at(10))  # redo its step
  assert workdir.read_best(tmp_path) == {"metric": "val/AP", "value": 0.45, "step": 10}
  workdir.save_last(tmp_path, _variables(4), at(30))
  assert workdir.last_step(tmp_path) == 30
  # A workdir as a model: model_best first, then model_last.
  variables, meta = workdir.load_model(tmp_path)
  assert meta.step == 10 and variables["params"]["w"][0, 0] == 3
  assert workdir.read_meta(tmp_path) == meta
  (tmp_path / workdir.MODEL_BEST / "meta.json").unlink()
  assert workdir.load_model(tmp_path)[1].step == 30


def test_latest_training_checkpoint_as_a_model(tmp_path):
  """A run still in progress (no model_best/last yet): the latest checkpoint, meta from config."""
  config = config_lib.load("demo", ["--config.model.width=8"])
  workdir.check_config(tmp_path, config)
  ckpts = checkpoints_lib.TrainCheckpoints(tmp_path, keep=1)
  for step in (2, 4):
    ckpts.save(step, {**_variables(step), "step": np.int32(step)})
  ckpts.close()
  assert checkpoints_lib.latest_step(tmp_path) == 4
  variables, meta = workdir.load_model(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, variables, _variables(4))
  assert (meta.step, meta.width, meta.depth, meta.num_joints) == (4, 8, 18, 17)
  assert "training checkpoint" in meta.source and workdir.read_meta(tmp_path) == meta
  assert json.loads((tmp_path / workdir.CONFIG_FILE).read_text())["name"] == "demo"


def test_no_model_anywhere(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="neither a saved model"):
    workdir.load_model(tmp_path / "empty")
  with pytest.raises(ValueError, match="neither a saved model"):
    workdir.read_meta(tmp_path / "empty")
  with pytest.raises(FileNotFoundError):
    workdir.load_model(tmp_path / "nowhere")
