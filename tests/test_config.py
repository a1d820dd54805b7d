import pathlib

import pytest

from sbpose_jax.commands import config as config_lib

PUBLISHED_ROWS = (
    "coco_res50", "coco_res50_384x288", "coco_res101", "coco_res101_384x288", "coco_res152",
    "coco_res152_384x288", "coco_wholebody_res50", "coco_wholebody_res50_384x288",
    "coco_wholebody_res101", "coco_wholebody_res101_384x288", "coco_wholebody_res152",
    "coco_wholebody_res152_384x288", "ochuman_res50", "ochuman_res50_384x288", "ochuman_res101",
    "ochuman_res101_384x288", "ochuman_res152", "ochuman_res152_384x288", "aic_res101",
    "mpii_res50", "mpii_res101", "mpii_res152", "mpii_trb_res50", "mpii_trb_res101",
    "mpii_trb_res152", "crowdpose_res50", "crowdpose_res101", "crowdpose_res101_320x256",
    "crowdpose_res152", "posetrack18_res50", "posetrack18_res50_det")


@pytest.mark.parametrize("name", PUBLISHED_ROWS + ("demo",))
def test_every_config_loads_with_consistent_sizes(name):
  cfg = config_lib.load(name)
  w, h = cfg.data.input_size
  assert tuple(cfg.data.heatmap_size) == (w // 4, h // 4)
  assert cfg.name == name
  _, eval_type = config_lib.eval_config(cfg)
  assert eval_type


def test_overrides_are_typed_and_typos_are_refused():
  cfg = config_lib.load("coco_res50", ["--config.optim.lr=1e-3", "data.input_size=(288, 384)",
                                       "--config.data.root=/data/coco"])
  assert cfg.optim.lr == 1e-3 and tuple(cfg.data.input_size) == (288, 384)
  assert cfg.data.root == "/data/coco"
  with pytest.raises(ValueError, match="optim.lr"):
    config_lib.load("coco_res50", ["--config.optim.lrr=1"])
  with pytest.raises(ValueError, match="key=value"):
    config_lib.load("coco_res50", ["--config.optim.lr"])
  with pytest.raises(ValueError, match="known configs"):
    config_lib.load("no_such_config")


def test_a_config_file_outside_the_repo(tmp_path: pathlib.Path):
  path = tmp_path / "mine.py"
  path.write_text("from sbpose_jax.configs import common\n\n"
                  "def get_config():\n  c = common.get_config()\n"
                  "  c.name = 'mine'\n  c.model.depth = 101\n  return c\n")
  cfg = config_lib.load(str(path))
  assert cfg.name == "mine" and cfg.model.depth == 101


def test_eval_config_applies_the_entry_data_and_leaves_the_original():
  cfg = config_lib.load("ochuman_res50")
  ecfg, eval_type = config_lib.eval_config(cfg)
  assert eval_type == "ochuman" and ecfg.data.dataset == "ochuman"
  assert cfg.data.dataset == "coco"
  with pytest.raises(ValueError, match="has evals"):
    config_lib.eval_config(cfg, "nope")


def test_loading_every_config_imports_no_jax():
  """Configs are plain data: a process that loads every named config (and a user's config file
  extending `common`) has imported no JAX, Flax, orbax, grain, optax or TFDS."""
  import subprocess  # why: only this test starts a fresh interpreter
  import sys  # why: as above
  repo = pathlib.Path(__file__).resolve().parent.parent
  code = (
      "import sys, pathlib, tempfile\n"
      "from sbpose_jax.commands import config\n"
      "for name in config.names():\n"
      "  config.load(name)\n"
      "user = pathlib.Path(tempfile.mkdtemp()) / 'mine.py'\n"
      "user.write_text('from sbpose_jax.configs import demo\\n'\n"
      "                'def get_config():\\n'\n"
      "                '  c = demo.get_config(); c.name = \"mine\"; return c\\n')\n"
      "config.load(str(user))\n"
      "heavy = ('jax', 'jaxlib', 'flax', 'orbax', 'grain', 'optax', 'tensorflow_datasets', 'cv2')\n"
      "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
      "print(len(config.names()))\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  loaded, count = proc.stdout.strip().splitlines()
  assert loaded == "[]", loaded
  assert int(count) >= len(PUBLISHED_ROWS) + 1
