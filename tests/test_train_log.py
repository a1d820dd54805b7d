"""Training logs: JSONL lines, TensorBoard scalars, sample pictures; silent on other processes."""
import json
import subprocess
import sys

import numpy as np
import pytest

from sbpose_jax.training import log as train_log


def test_jsonl_tensorboard_and_pictures(tmp_path, capsys):
  log = train_log.RunLogger(tmp_path, total_steps=10, start_step=0, progress=False)
  log.train_line(5, {"loss": 0.5, "lr": 1e-3, "img_per_s": 12.0})
  log.eval_line(10, "val", {"AP": 0.25, "AR": float("nan")})
  picture = np.zeros((8, 6, 3), np.uint8)
  path = log.image(10, "val", picture)
  log.close()
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(line["step"], line["kind"]) for line in lines] == [(5, "train"), (10, "eval/val")]
  assert lines[0]["loss"] == 0.5 and lines[1]["AP"] == 0.25
  assert path == tmp_path / "samples" / "val_0000010.png" and path.is_file()
  assert list((tmp_path / "tb").iterdir())
  out = capsys.readouterr().out
  assert "step 10 val: AP 0.2500" in out
  assert "step 5/10 loss 5.0000e-01 lr 1.00e-03 12.0 img/s" in out   # no bar: one line per log


def test_disabled_logger_writes_nothing(tmp_path):
  log = train_log.RunLogger(tmp_path, total_steps=10, start_step=0, enabled=False)
  log.train_line(1, {"loss": 1.0, "lr": 1.0})
  assert log.image(1, "val", np.zeros((4, 4, 3), np.uint8)) is None
  log.close()
  assert not list(tmp_path.iterdir())


def test_sample_picture_draws_the_unpadded_crops():
  b, h, w = 3, 64, 48
  batch = dict(image=np.full((b, h, w, 3), 128, np.uint8),
               center=np.full((b, 2), 100.0, np.float32),
               scale=np.full((b, 2), [0.24, 0.32], np.float32),
               mask=np.array([True, True, False]))
  kpts = np.concatenate([np.full((b, 17, 2), 100.0), np.ones((b, 17, 1))], -1)
  crops = train_log.keypoints_to_crop(kpts, batch["center"], batch["scale"], (w, h))
  np.testing.assert_allclose(crops[..., :2], np.broadcast_to([w / 2, h / 2], (b, 17, 2)),
                             atol=1e-4)   # the crop centre maps to the middle of the crop
  picture = train_log.sample_picture(batch, kpts, "coco", "rgb", (w, h))
  assert picture.dtype == np.uint8 and picture.ndim == 3
  assert (picture != 128).any()   # skeletons were drawn


def test_tensorboard_writer_does_not_import_torch(tmp_path):
  """tensorboardX imports torch whenever it is installed (1.5 s per run); we hide it, and only
  for that import: torch stays importable afterwards."""
  pytest.importorskip("torch")
  code = ("import sys; from sbpose_jax.training import log as train_log; "
          f"log = train_log.RunLogger({str(tmp_path)!r}, 10, 0, progress=False); "
          "log.train_line(1, {'loss': 1.0, 'lr': 0.1}); log.close(); "
          "assert log._tb is not None and 'torch' not in sys.modules, sorted(sys.modules); "
          "import torch; print(torch.__name__)")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.splitlines()[-1] == "torch" and list((tmp_path / "tb").iterdir())
