"""Inference that never lies (issue 21): one source of a model's test settings, outputs that
survive interruption, no silent empty result, one-line errors, help that teaches.

A tiny random PoseResNet (ResNet-18 of width 8) recorded at 64x96 crops with DARK decoding, as
a saved (converted) model, a training workdir and an exported StableHLO file; the same boxes
go through the API, predict, evaluate and track. The interruption tests run the commands in
subprocesses and send them real signals.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sbpose_jax import PoseEstimator
from sbpose_jax.commands import config as config_lib
from sbpose_jax.commands import evaluate, export, predict, track
from sbpose_jax.training import workdir as workdir_lib
from sbpose_jax.weights import saved_model
from sbpose_jax.weights.meta import ModelMeta, TestSettings
from test_evaluate import ref_boxes

REPO = pathlib.Path(__file__).resolve().parent.parent
ARCH = dict(depth=18, width=8, deconv_filters=(16, 16, 16))
# What the model records: not the configs' 192x256 and 'default' decoding.
RECORDED = TestSettings(input_size=(64, 96), heatmap_size=(16, 24), decode="unbiased")
IMAGE = "000000196141.jpg"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """{"saved": a saved model as `convert` writes it (its test settings recorded), "workdir": a
  training workdir whose model_last was saved as training saves it, "exported": StableHLO}."""
  root = tmp_path_factory.mktemp("models")
  meta = ModelMeta(**ARCH, num_joints=17, dataset="coco", source="test", test=RECORDED)
  variables = saved_model.random_variables(meta, (64, 48), bias=0.25)
  saved_model.save_model(root / "saved", variables, meta)
  cfg = config_lib.load("coco_res50", [
      "--config.model.depth=18", "--config.model.width=8",
      "--config.model.deconv_filters=(16, 16, 16)", "--config.data.input_size=(64, 96)",
      "--config.test.decode='unbiased'", "--config.data.num_workers=0"])
  work = root / "workdir"
  work.mkdir()
  (work / workdir_lib.CONFIG_FILE).write_text(workdir_lib.config_to_json(cfg))
  workdir_lib.save_last(work, variables, workdir_lib.model_meta(cfg, 5))
  export.main(["--checkpoint", str(root / "saved"), "--format", "stablehlo", "--out",
               str(root / "m.stablehlo"), "--platforms", "cpu"])
  return {"saved": root / "saved", "workdir": work, "exported": root / "m.stablehlo"}


def _boxes(fixtures_dir):
  out = {}
  for _, name, box, _ in ref_boxes(fixtures_dir, None):
    out.setdefault(name, []).append(box)
  return out


def _api_poses(model, fixtures_dir, **kw):
  # Batches of 64 as the commands' (config.test.batch_size): the same compiled computation.
  est = PoseEstimator.load(model, batch_sizes=(64,), **kw)
  return {name: est(fixtures_dir / "coco" / name, b) for name, b in
          _boxes(fixtures_dir).items()}


def _match(got_xy, want: dict, name, atol):
  """The API pose of image `name` that `got_xy` (K, 2) is; fails when none is within atol."""
  d = np.abs(want[name].keypoints - np.asarray(got_xy)[None]).max(axis=(1, 2))
  assert d.min() <= atol, (name, d.min())


def test_records_and_defaults_follow_the_config():
  """The defaults are the base config's; training and conversion record the config's values."""
  from sbpose_jax.configs import common
  assert TestSettings.from_config(common.get_config()) == TestSettings()
  demo = config_lib.load("demo")
  meta = workdir_lib.model_meta(demo, 3)              # what training writes into model_*
  assert meta.test.input_size == (96, 128) and meta.test.decode == "unbiased"
  assert ModelMeta.from_json(meta.to_json()) == meta
  old = json.loads(meta.to_json())
  del old["test"]                                    # a meta.json of an older version
  assert ModelMeta.from_json(json.dumps(old)).test is None
  from sbpose_jax.weights import conversion
  got = conversion.test_settings_of_name("res50_coco_384x288-3860d4c9_20200709.pth", meta)
  assert got.input_size == (288, 384) and got.heatmap_size == (72, 96)


@pytest.mark.parametrize("kind", ["saved", "workdir", "exported"])
def test_same_boxes_same_keypoints_everywhere(kind, models, fixtures_dir, tmp_path, capsys):
  """API, predict (with and without --config), evaluate and track agree on the same boxes, and
  all run at the model's own 64x96 with DARK although coco_res50 says 192x256, 'default'."""
  model = models[kind]
  api = _api_poses(model, fixtures_dir)
  assert PoseEstimator.load(model).test == RECORDED
  boxes = _boxes(fixtures_dir)
  (tmp_path / "boxes.json").write_text(json.dumps(boxes))
  images = [str(fixtures_dir / "coco" / n) for n in boxes]
  for name, config in (("with", ["--config", "coco_res50"]), ("without", [])):
    predict.main(["--checkpoint", str(model), *images, "--boxes", str(tmp_path / "boxes.json"),
                  "--out-dir", str(tmp_path / name), "--no-nms", *config])
    err = capsys.readouterr().err
    if config and kind != "workdir":
      assert "own test settings (input_size 64x96" in err and "decode unbiased" in err, err
    doc = json.loads((tmp_path / name / "predictions.json").read_text())
    assert doc["complete"] and doc["test"]["input_size"] == [64, 96]
    assert doc["test"]["decode"] == "unbiased"
    assert sum(len(e["instances"]) for e in doc["images"]) == sum(map(len, boxes.values()))
    for entry in doc["images"]:
      for inst in entry["instances"]:
        _match(np.asarray(inst["keypoints"])[:, :2], api, pathlib.Path(entry["file"]).name,
               2e-3)
  f = fixtures_dir / "coco"
  evaluate.main(["--checkpoint", str(model), "--ann-file", str(f / "test_coco.json"),
                 "--img-dir", str(f), "--gt-boxes", "--out-dir", str(tmp_path / "e"), "--quiet",
                 "--config.data.num_workers=0", "--config", "coco_res50"])
  gt = json.loads((f / "test_coco.json").read_text())
  names = {im["id"]: im["file_name"] for im in gt["images"]}
  evaluated = json.loads((tmp_path / "e" / "keypoints.json").read_text())
  assert len(evaluated) > 5
  for r in evaluated:
    _match(np.asarray(r["keypoints"]).reshape(-1, 3)[:, :2], api, names[r["image_id"]], 2e-3)
  metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
  assert metrics["test"]["input_size"] == [64, 96] and metrics["decode"] == "unbiased"
  frames = tmp_path / "frames"
  frames.mkdir()
  shutil.copy(f / IMAGE, frames / IMAGE)
  (tmp_path / "tb.json").write_text(json.dumps({IMAGE: [b + [1.0] for b in boxes[IMAGE]]}))
  for name, config in (("with", ["--config", "coco_res50"]), ("without", [])):
    track.main([str(frames), "--checkpoint", str(model), "--out-dir", str(tmp_path / name),
                "--boxes", str(tmp_path / "tb.json"), "--quiet", "--similarity", "iou",
                "--config.track.propagate=False", *config])
    tracked = json.loads((tmp_path / name / "frames.json").read_text())["annotations"]
    assert tracked
    for a in tracked:   # track pads a frame's boxes to 8, not 64: float32 differences of
      # another compiled batch, amplified by DARK's Newton step on a random model's flat
      # heatmaps (keypoints up to 2,000 px away); another decoding would differ by pixels.
      _match(np.asarray(a["keypoints"]).reshape(-1, 3)[:, :2], api, IMAGE, 0.05)


def test_explicit_overrides_are_noted_or_refused(models, fixtures_dir, tmp_path, capsys):
  image = str(fixtures_dir / "coco" / IMAGE)
  out = tmp_path / "o"
  predict.main(["--checkpoint", str(models["saved"]), image, "--out-dir", str(out),
                "--config.test.decode=default"])
  err = capsys.readouterr().err
  assert "note: decode unbiased -> default (--config.test.decode)" in err
  doc = json.loads((out / "predictions.json").read_text())
  assert doc["test"]["decode"] == "default"
  want = PoseEstimator.load(models["saved"], decode="default")(image)
  np.testing.assert_allclose(doc["images"][0]["instances"][0]["keypoints"],
                             want.keypoints_xys()[0], atol=6e-4)
  for model, args, message in (
      (models["saved"], ["--config.data.input_size=(96, 128)"],
       "--config.data.input_size 96x128: "),
      (models["exported"], ["--config.test.decode=default"], "decode"),
      (models["exported"], ["--config.test.flip=False"], "flip")):
    with pytest.raises(SystemExit) as e:
      predict.main(["--checkpoint", str(model), image, "--out-dir", str(tmp_path / "x"), *args])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], lines
  with pytest.raises(ValueError, match="input_size=.*runs at input_size 64x96"):
    PoseEstimator.load(models["saved"], input_size=(96, 128))


# ------------------------------------------------------------------ box files: nothing silent

def _clip(fixtures_dir, tmp_path, n=3):
  folder = tmp_path / "clip"
  folder.mkdir()
  for f in sorted((fixtures_dir / "posetrack18/videos/000001_mpiinew_test").glob("*.jpg"))[:n]:
    shutil.copy(f, folder / f.name)
  return folder


def _track(models, inp, out, *extra):
  return track.main([str(inp), "--checkpoint", str(models["saved"]), "--out-dir", str(out),
                     "--quiet", *extra])


@pytest.mark.parametrize("case", ["empty", "no_match", "bad_boxes"])
def test_track_box_files_are_never_silent(case, models, fixtures_dir, tmp_path, capsys):
  clip = _clip(fixtures_dir, tmp_path)
  boxes = tmp_path / "b.json"
  if case == "empty":
    boxes.write_text("[]")
  elif case == "no_match":
    boxes.write_text(json.dumps({"17": [[10, 10, 100, 200]], "nothing.jpg": [[1, 1, 5, 5]]}))
  else:                        # frame 1: a zero-size box and one outside; a good one each
    boxes.write_text(json.dumps({"0": [[100, 50, 200, 300, 1.0]],
                                 "1": [[100, 50, 0, 0, 1.0], [5000, 5000, 50, 50, 1.0],
                                       [100, 50, 200, 300, 1.0]]}))
  _track(models, clip, tmp_path / "o", "--boxes", str(boxes))
  err = capsys.readouterr().err
  res = json.loads((tmp_path / "o/clip.json").read_text())
  assert len(res["images"]) == 3
  if case == "bad_boxes":
    assert f"--boxes {boxes}: frame 1 (" in err and "skipping box 0 [x, y, w, h] = [100, 50, 0, 0]"\
        in err and "smaller than 1 px" in err
    assert "skipping box 1 [x, y, w, h] = [5000, 5000, 50, 50]: outside the" in err
    assert res["annotations"]
    assert not [a for a in res["annotations"] if a["bbox"][:2] == [5000, 5000]]  # no pose of it
    assert "boxes for 2 of the 3 frames" in err
  else:
    assert "boxes for 0 of the 3 frames" in err and "0-based frame numbers" in err
    if case == "no_match":
      assert "2 box entries match no frame" in err


@pytest.mark.parametrize("case,message", [
    ("nan", "holds NaN or inf"),
    ("short", "a box must be [x, y, w, h]"),
    ("not_json", "cannot read JSON"),
])
def test_bad_box_files_name_file_and_entry(case, message, models, fixtures_dir, tmp_path, capsys):
  clip = _clip(fixtures_dir, tmp_path, 1)
  boxes = tmp_path / "b.json"
  boxes.write_text({"nan": '{"0": [[1, 2, NaN, 4]]}', "short": '{"0": [[1, 2, 3]]}',
                    "not_json": "{"}[case])
  for run in (lambda: _track(models, clip, tmp_path / "o", "--boxes", str(boxes)),
              lambda: predict.main(["--checkpoint", str(models["saved"]), str(clip),
                                    "--out-dir", str(tmp_path / "p"), "--boxes", str(boxes)])):
    with pytest.raises(SystemExit) as e:
      run()
    assert e.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: --boxes {boxes}") and message in line, line
    if case != "not_json":
      assert "['0']" in line


def test_predict_box_file_matching_no_image_is_a_warning(models, fixtures_dir, tmp_path, capsys):
  boxes = tmp_path / "b.json"
  boxes.write_text("[]")
  predict.main(["--checkpoint", str(models["saved"]), str(fixtures_dir / "coco" / IMAGE),
                "--out-dir", str(tmp_path / "o"), "--boxes", str(boxes)])
  err = capsys.readouterr().err
  assert "boxes for 0 of the 1 input images" in err and "wrote 1 pictures" in err


def test_truncated_frame_in_a_folder_is_named_or_skipped(models, fixtures_dir, tmp_path, capsys):
  clip = _clip(fixtures_dir, tmp_path)
  second = sorted(clip.glob("*.jpg"))[1]
  second.write_bytes(second.read_bytes()[:len(second.read_bytes()) // 2])   # a truncated JPEG
  with pytest.raises(SystemExit) as e:
    _track(models, clip, tmp_path / "o")
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert f"cannot read frame 1 of {clip}: {second}" in err and "--skip-bad-frames" in err
  assert len(json.loads((tmp_path / "o/clip.json").read_text())["images"]) == 1
  _track(models, clip, tmp_path / "s", "--skip-bad-frames")
  err = capsys.readouterr().err
  assert "skipped 1 undecodable frames" in err and "(1 undecodable frames skipped)" in err
  images = json.loads((tmp_path / "s/clip.json").read_text())["images"]
  assert [im["file_name"] for im in images] == [p.name for p in sorted(clip.glob("*.jpg"))
                                               if p != second]
  assert [im["frame_id"] for im in images] == [0, 2]


# --------------------------------------------------------------------- outputs that survive

def _synthetic_clip(path: pathlib.Path, frames: int = 150):
  import av  # why: pyAV loads only when a video is read or written
  rng = np.random.default_rng(0)
  with av.open(str(path), "w") as c:
    s = c.add_stream("mpeg4", rate=25)
    s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
    for _ in range(frames):
      img = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
      for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def _start(args):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  return subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc, timeout=300):
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    if condition():
      return
    if proc.poll() is not None:
      pytest.fail(f"ended before the signal: {proc.communicate()}")
    time.sleep(0.2)
  proc.kill()
  pytest.fail("timed out")


def _frames_of(mp4) -> int:
  import av  # why: pyAV loads only when a video is read or written
  with av.open(str(mp4)) as c:
    return sum(1 for _ in c.decode(video=0))


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_track_interrupted_writes_everything_done(sig, status, models, tmp_path):
  """A re-run into the out-dir of a finished run is interrupted: its json, mp4 and PNG folder
  replace the first run's together, each complete, with the same frames."""
  clip = tmp_path / "clip.mp4"
  _synthetic_clip(clip)
  out = tmp_path / "o"
  base = ["sbpose_jax.track", str(clip), "--checkpoint", str(models["saved"]), "--out-dir",
          str(out), "--quiet", "--frames"]
  _synthetic_clip(tmp_path / "short.mp4", 8)
  first = _start(base[:1] + [str(tmp_path / "short.mp4")] + base[2:])
  assert first.wait(300) == 0, first.communicate()
  (out / "short.json").rename(out / "clip.json")        # an earlier run's files, as if of clip
  (out / "short.mp4").rename(out / "clip.mp4")
  (out / "short").rename(out / "clip")
  proc = _start(base)
  part = out / ".clip.part"
  _wait_for(lambda: part.is_dir() and len(list(part.glob("*.png"))) >= 12, proc)
  proc.send_signal(sig)
  stdout, err = proc.communicate(timeout=120)
  assert proc.returncode == status, err
  last = err.strip().splitlines()[-1]
  assert last.startswith("interrupted at frame ") and "were tracked and written to" in last
  assert "Traceback" not in err
  done = int(last.split("interrupted at frame ")[1].split()[0])
  assert 12 <= done < 150
  res = json.loads((out / "clip.json").read_text())
  assert len(res["images"]) == done
  assert _frames_of(out / "clip.mp4") == done
  assert len(list((out / "clip").glob("*.png"))) == done
  assert not [p.name for p in out.iterdir() if ".part" in p.name]


def test_kill_9_leaves_no_half_written_file(models, tmp_path):
  clip = tmp_path / "clip.mp4"
  _synthetic_clip(clip)
  out = tmp_path / "o"
  proc = _start(["sbpose_jax.track", str(clip), "--checkpoint", str(models["saved"]),
                 "--out-dir", str(out), "--quiet", "--frames"])
  _wait_for(lambda: len(list((out / ".clip.part").glob("*.png"))) >= 5, proc)
  proc.kill()
  proc.wait()
  # The mp4's part file exists once the encoder has emitted its first packets.
  assert {p.name for p in out.iterdir()} <= {".clip.part", ".clip.part.mp4"}


def test_predict_interrupted_writes_the_images_done(models, fixtures_dir, tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  for i in range(60):
    shutil.copy(fixtures_dir / "coco" / IMAGE, folder / f"{i:03d}.jpg")
  out = tmp_path / "o"
  proc = _start(["sbpose_jax.predict", "--checkpoint", str(models["saved"]), str(folder),
                 "--out-dir", str(out), "--batch-size", "2"])
  _wait_for(lambda: len(list(out.glob("[0-9]*.png"))) >= 4, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  assert "interrupted after " in err and "Traceback" not in err
  doc = json.loads((out / "predictions.json").read_text())
  assert doc["complete"] is False and 4 <= len(doc["images"]) < 60
  assert sorted(p.stem for p in out.glob("[0-9]*.png")) == sorted(
      pathlib.Path(e["file"]).stem for e in doc["images"])
  assert not [p.name for p in out.iterdir() if ".part" in p.name]


def test_predict_video_summary_names_its_files(models, tmp_path, capsys):
  clip = tmp_path / "v.mp4"
  _synthetic_clip(clip, 6)
  predict.main(["--checkpoint", str(models["saved"]), str(clip), "--out-dir",
                str(tmp_path / "o")])
  err = capsys.readouterr().err
  assert f"wrote {tmp_path / 'o' / 'v.mp4'} and {tmp_path / 'o' / 'v.json'}" in err
  assert "pictures" not in err.strip().splitlines()[-1]
  assert json.loads((tmp_path / "o/v.json").read_text())["complete"] is True
  assert _frames_of(tmp_path / "o/v.mp4") == 6


# ------------------------------------------------------------------------ export: one line each

def test_export_errors_are_one_line_and_leave_nothing(models, tmp_path, capsys):
  folder = tmp_path / "out_folder"
  folder.mkdir()
  cases = [(["--checkpoint", str(models["exported"]), "--format", "stablehlo", "--out",
             str(tmp_path / "a.stablehlo")], "is a file (an exported model?)"),
           (["--checkpoint", str(models["saved"]), "--format", "stablehlo", "--out",
             str(tmp_path / "b.stablehlo"), "--input-size", "0", "0"],
            "--input-size must be two positive sizes"),
           (["--checkpoint", str(models["saved"]), "--format", "stablehlo", "--out",
             str(tmp_path / "c.stablehlo"), "--input-size", "96", "128"],
            "--input-size 96x128: "),
           (["--checkpoint", str(models["saved"]), "--format", "stablehlo", "--out",
             str(folder)], "is a folder"),
           (["--checkpoint", str(models["saved"]), "--format", "onnx", "--out",
             str(tmp_path / "d.onnx")], "not exported to ONNX")]   # the model decodes with DARK
  for args, message in cases:
    with pytest.raises(SystemExit) as e:
      export.main(args)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], lines
    assert not [ln for ln in lines if "Traceback" in ln or "unexpected" in ln]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out_folder"]
  assert not list(folder.iterdir())


def test_onnx_hint_is_one_command_that_installs_what_works(monkeypatch):
  import importlib.util
  from sbpose_jax import exporting
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "jax2onnx" else real(name, *a))
  with pytest.raises(ValueError) as e:
    exporting.check_onnx_tools()
  text = str(e.value)
  assert "jax2onnx" in text and exporting.ONNX_INSTALL in text
  # The command installs the export extra, then jax2onnx without its orbax pin (as
  # scripts/test.sh does), the version pyproject's export extra was measured with.
  assert "pip install --no-deps 'jax2onnx==0.17.1'" in exporting.ONNX_INSTALL
  assert "jax2onnx==0.17.1" in (REPO / "scripts/test.sh").read_text()


def test_onnx_export_prints_no_third_party_warnings(models, tmp_path, capsys):
  pytest.importorskip("jax2onnx")
  export.main(["--checkpoint", str(models["saved"]), "--format", "onnx", "--decode", "default",
               "--out", str(tmp_path / "m.onnx")])
  err = capsys.readouterr().err
  assert "note: decode unbiased -> default (--decode)" in err
  assert "onnx_ir" not in err and "WARNING" not in err, err
  assert json.loads((tmp_path / "m.onnx.json").read_text())["test"]["decode"] == "default"


# --------------------------------------------------------------------------- help that teaches

@pytest.mark.parametrize("command", ["predict", "track", "export", "pack", "evaluate"])
def test_every_flag_has_help(command):
  import importlib
  parser = importlib.import_module(f"sbpose_jax.commands.{command}").build_parser()
  missing = [a.option_strings or a.dest for a in parser._actions
             if not a.help and a.dest != "help"]
  assert not missing, missing


@pytest.mark.parametrize("command", ["predict", "track"])
def test_help_describes_box_files(command):
  import importlib
  text = importlib.import_module(f"sbpose_jax.commands.{command}").build_parser().format_help()
  assert '[{"image_id": ' in text and '"bbox": [x, y, w, h]' in text
  assert "whole" in text and ("0-based" in text if command == "track" else True)


def test_interrupted_before_the_first_frame_replaces_nothing(tmp_path):
  """An earlier run's json and mp4 stay as they were when a re-run tracks no frame."""
  from sbpose_jax import video
  from sbpose_jax.tracking import video_loop
  cfg, _ = config_lib.eval_config(config_lib.load("posetrack18_res50"))
  clip = tmp_path / "clip.mp4"
  _synthetic_clip(clip, 5)
  out = tmp_path / "o"
  out.mkdir()
  (out / "clip.json").write_text("earlier")
  (out / "clip.mp4").write_text("earlier")

  def interrupted(frame, boxes, scores):
    raise KeyboardInterrupt()
  with pytest.raises(KeyboardInterrupt, match="no frame was tracked: nothing was written"):
    video_loop.track_video(cfg, interrupted, video.open_source(str(clip)), out,
                           write_frames=True, progress=False)
  assert sorted(p.name for p in out.iterdir()) == ["clip.json", "clip.mp4"]
  assert (out / "clip.json").read_text() == (out / "clip.mp4").read_text() == "earlier"


def test_a_config_of_other_joints_is_refused(models, fixtures_dir, tmp_path, capsys):
  """posetrack18's 17 joints are not COCO's: a COCO model run with its flip pairs would give
  wrong poses without a word."""
  with pytest.raises(SystemExit) as e:
    predict.main(["--checkpoint", str(models["saved"]), str(fixtures_dir / "coco" / IMAGE),
                  "--out-dir", str(tmp_path / "o"), "--config", "posetrack18_res50"])
  assert e.value.code == 2
  line = capsys.readouterr().err.strip().splitlines()[-1]
  assert "predicts the 17 joints of 'coco', but config posetrack18_res50 is for " \
      "'posetrack18'" in line, line


def test_predict_rerun_says_which_pictures_it_does_not_replace(models, fixtures_dir, tmp_path,
                                                              capsys):
  out = tmp_path / "o"
  for name in ("000000000785.jpg", IMAGE):
    predict.main(["--checkpoint", str(models["saved"]), str(fixtures_dir / "coco" / name),
                  "--out-dir", str(out)])
  err = capsys.readouterr().err
  assert f"{out} holds 1 pictures of an earlier run that this run does not replace " \
      "(000000000785.png); predictions.json is replaced" in err
  doc = json.loads((out / "predictions.json").read_text())
  assert [pathlib.Path(e["file"]).name for e in doc["images"]] == [IMAGE]
