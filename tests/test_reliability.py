"""What users do to runs: damaged checkpoints, a second run, settings changed on resume, bad
values and data, Ctrl-C. A thin ResNet-18 (width 8) on 6 synthetic images, in this process
(one compile for the whole file) except where a signal or a second process is the point.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from sbpose_jax.commands import cli
from sbpose_jax.commands import config as config_lib
from sbpose_jax import models
from sbpose_jax.training import optim
from sbpose_jax.commands import train
from sbpose_jax.training import loop as training
from sbpose_jax.training import log as train_log
from sbpose_jax.training import state as ts
from sbpose_jax.training import workdir as workdir_lib
from sbpose_jax.training import checkpoints as checkpoints_lib
from sbpose_jax.training import lock as lock_lib
from sbpose_jax.data import synthetic

from helpers import tensorboard_scalars

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic") / "data"
  synthetic.ensure_synthetic(root, {"train": 6, "val": 3}, seed=3)
  return root


def _overrides(root, steps, *extra):
  return [f"--config.data.root={root}", "--config.synthetic.num_train=6",
          "--config.synthetic.num_val=3", "--config.synthetic.seed=3",
          "--config.data.val_ann=annotations/person_keypoints_train.json",
          "--config.data.val_images=train", "--config.batch_size_per_device=4",
          "--config.data.num_workers=0", f"--config.max_steps={steps}",
          "--config.checkpoint_every_steps=2", "--config.log_every_steps=2",
          "--config.keep_checkpoints=3", "--config.evals.val.every_epochs=0",
          "--config.model.width=8", "--config.model.deconv_filters=(8,8,8)",
          "--config.data.input_size=(96,96)", "--config.data.heatmap_size=(24,24)",
          "--config.test.batch_size=8", *extra]


def _config(root, steps, *extra):
  return config_lib.load("demo", _overrides(root, steps, *extra))


@pytest.fixture(scope="module")
def template(data_root, tmp_path_factory):
  """A workdir with checkpoints at steps 2 and 4 (and the run's logs)."""
  work = tmp_path_factory.mktemp("template") / "run"
  training.train_and_evaluate(_config(data_root, 4), work, progress=False)
  assert checkpoints_lib.latest_step(work) == 4
  return work


def _copy(template, tmp_path) -> pathlib.Path:
  work = tmp_path / "run"
  shutil.copytree(template, work)
  return work


# ------------------------------------------------------------------ checkpoint fallback

def _abstract_state(cfg, num_records=6):
  epoch_steps = optim.steps_per_epoch(num_records, int(cfg.batch_size_per_device))
  tx, _ = training.make_optimizer(cfg, epoch_steps)
  model = models.build(cfg.model, 17)
  return jax.eval_shape(lambda: ts.create_train_state(
      model, tx, jax.random.PRNGKey(0), tuple(cfg.data.input_size)[::-1]))


def _remove(path: pathlib.Path):
  shutil.rmtree(path) if path.is_dir() else path.unlink()


def _truncate(path: pathlib.Path):
  path.write_bytes(path.read_bytes()[:7])


# part of checkpoint 4 -> damage, and the step that restores: 2 after a fallback, 4 where the
# part is not needed (orbax then logs the damage and reads the state without it).
DAMAGES = {
    "state/manifest.ocdbt missing": ("state/manifest.ocdbt", _remove, 2),
    "state/manifest.ocdbt truncated": ("state/manifest.ocdbt", _truncate, 2),
    "state/ missing": ("state", _remove, 2),
    "state/_METADATA missing": ("state/_METADATA", _remove, 2),
    "state/_METADATA truncated": ("state/_METADATA", _truncate, 2),
    "state/d/ (array data) missing": ("state/d", _remove, 2),
    "state/ocdbt.process_0/ missing": ("state/ocdbt.process_0", _remove, 2),
    "_CHECKPOINT_METADATA truncated": ("_CHECKPOINT_METADATA", _truncate, 4),
    "_CHECKPOINT_METADATA missing": ("_CHECKPOINT_METADATA", _remove, 4),
    "commit_success.txt missing": ("commit_success.txt", _remove, 4),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_restores(
    template, data_root, tmp_path, damage):
  work = _copy(template, tmp_path)
  part, action, expected = DAMAGES[damage]
  action(work / "checkpoints" / "4" / part)
  lines = []
  ckpts = checkpoints_lib.TrainCheckpoints(work, keep=3)
  state, step = ckpts.restore_newest(_abstract_state(_config(data_root, 4)), log=lines.append)
  assert step == expected and int(state.step) == expected
  if expected == 4:
    assert not lines and ckpts.latest_step() == 4
    ckpts.close()
    return
  assert len(lines) == 1 and "checkpoint step 4 cannot be restored" in lines[0], lines
  assert "resuming from step 2" in lines[0]
  assert (work / checkpoints_lib.BROKEN_DIR / "4").is_dir()        # kept for a post-mortem
  assert ckpts.latest_step() == 2 and not (work / "checkpoints" / "4").exists()
  ckpts.close()


def test_no_checkpoint_restoring_moves_nothing(template, data_root, tmp_path):
  """A failure of every step is a mismatch (another model), not damage: one line, no moves."""
  work = _copy(template, tmp_path)
  other = _config(data_root, 4, "--config.model.deconv_filters=(16,16,16)")
  ckpts = checkpoints_lib.TrainCheckpoints(work, keep=3)
  with pytest.raises(ValueError, match="no checkpoint in .* can be restored"):
    ckpts.restore_newest(_abstract_state(other), log=print)
  ckpts.close()
  assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["2", "4"]


def test_run_resumes_past_a_damaged_checkpoint(template, data_root, tmp_path, capsys):
  work = _copy(template, tmp_path)
  _remove(work / "checkpoints" / "4" / "state" / "manifest.ocdbt")
  _, state = training.train_and_evaluate(_config(data_root, 6), work, progress=False,
                                      return_state=True)
  out = capsys.readouterr().out
  assert "checkpoint step 4 cannot be restored" in out and "resumed from step 2" in out
  assert int(state.step) == 6 and checkpoints_lib.latest_step(work) == 6
  # The replayed steps 3-4 are logged once: metrics.jsonl has no line of a step twice.
  lines = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  steps = [(l["step"], l["kind"]) for l in lines]
  assert len(steps) == len(set(steps)) and (6, "train") in steps
  # TensorBoard: the resumed run's file starts with a purge marker at step 3, which hides the
  # earlier file's point of step 4; each tag then has one point per step, the resumed run's.
  scalars, purges = tensorboard_scalars(work / "tb")
  assert purges == [3]
  assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6]
  for points in scalars.values():
    assert len({s for s, _ in points}) == len(points)
  loss = {l["step"]: l["loss"] for l in lines if l["kind"] == "train"}
  assert [v for _, v in scalars["train/loss"]] == pytest.approx([loss[2], loss[4], loss[6]])


# ----------------------------------------------------------------- settings on resume

def test_operational_changes_are_accepted_and_listed_others_refused_with_reason(tmp_path):
  base = config_lib.load("coco_res50")
  assert workdir_lib.check_config(tmp_path, base) == []
  (tmp_path / checkpoints_lib.CHECKPOINT_DIR / "3").mkdir(parents=True)
  changed = config_lib.load("coco_res50", ["--config.optim.lr=1e-4",
                                           "--config.data.skip_bad_images=True",
                                           "--config.data.num_workers=2", "--config.epochs=300"])
  changes = workdir_lib.check_config(tmp_path, changed)
  assert changes == ["data.num_workers: 8 -> 2", "data.skip_bad_images: False -> True",
                     "epochs: 210 -> 300", "optim.lr: 0.0005 -> 0.0001"]
  assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 1e-4
  assert workdir_lib.check_config(tmp_path, changed) == []     # now the stored config
  with pytest.raises(ValueError, match=r"model\.depth: 50 -> 101 \(the saved parameters"):
    workdir_lib.check_config(tmp_path, config_lib.load("coco_res101"))


def test_the_global_batch_is_kept_across_topologies_or_refused_in_one_line(tmp_path):
  """The same command on other devices keeps the run's global batch (a note says how it is
  split now); a device count it does not divide over is refused naming the counts that work."""
  base = config_lib.load("coco_res50")           # batch_size_per_device 64, global derived
  resolved, notes = workdir_lib.resolve_batch(base, tmp_path, 8)
  assert (resolved.global_batch_size, resolved.batch_size_per_device, notes) == (512, 64, [])
  workdir_lib.check_config(tmp_path, resolved)
  (tmp_path / checkpoints_lib.CHECKPOINT_DIR / "3").mkdir(parents=True)
  resumed, notes = workdir_lib.resolve_batch(base, tmp_path, 32)
  assert (resumed.global_batch_size, resumed.batch_size_per_device) == (512, 64)
  assert notes == ["note: global batch 512 of the workdir's run kept on 32 devices: 16 per "
                   "device (not batch_size_per_device=64)"]
  assert workdir_lib.check_config(tmp_path, resumed) == []   # the same command
  # Another per-device batch on the same devices is another global batch: refused.
  with pytest.raises(ValueError, match=r"global_batch_size: 512 -> 256 \(the data stream, "):
    workdir_lib.check_config(tmp_path, workdir_lib.resolve_batch(config_lib.load(
        "coco_res50", ["--config.batch_size_per_device=32"]), tmp_path, 8)[0])
  with pytest.raises(ValueError) as e:
    workdir_lib.resolve_batch(base, tmp_path, 12)
  assert str(e.value) == (
      f"workdir {tmp_path} holds a run with a global batch of 512, which does not divide over "
      "12 devices: resume it on a number of devices that divides 512 (1, 2, 4, 8, 16, 32, 64, "
      "128, 256, 512), or use another --workdir")
  # Explicit settings, without a workdir's run.
  fresh = tmp_path / "fresh"
  with pytest.raises(ValueError, match=r"^global_batch_size 100 does not divide over 8 devices: "
                     r"use a number of devices that divides it \(1, 2, 4, 5, 10, 20, 25, 50, "
                     r"100\), or a global batch that is a multiple of 8 \(e.g. 96\)$"):
    workdir_lib.resolve_batch(config_lib.load("coco_res50", [
        "--config.global_batch_size=100", "--config.batch_size_per_device=0"]), fresh, 8)
  with pytest.raises(ValueError, match=r"disagree on 4 devices \(64 x 4 = 256\): set one"):
    workdir_lib.resolve_batch(config_lib.load("coco_res50", ["--config.global_batch_size=512"]),
                              fresh, 4)
  derived, _ = workdir_lib.resolve_batch(config_lib.load("coco_res50", [
      "--config.global_batch_size=512", "--config.batch_size_per_device=0"]), fresh, 4)
  assert (derived.global_batch_size, derived.batch_size_per_device) == (512, 0)
  # A workdir written before global_batch_size existed resumes on its devices as before.
  old = tmp_path / "old"
  (old / checkpoints_lib.CHECKPOINT_DIR / "3").mkdir(parents=True)
  stored = json.loads(workdir_lib.config_to_json(base))
  del stored["global_batch_size"]
  (old / workdir_lib.CONFIG_FILE).write_text(json.dumps(stored))
  assert workdir_lib.check_config(old, workdir_lib.resolve_batch(base, old, 8)[0]) == []


def test_nan_hint_is_accepted_on_resume(template, data_root, tmp_path, capsys):
  """Diverge after step 2 with a huge learning rate; the hint's value then resumes."""
  work = _copy(template, tmp_path)
  with pytest.raises(training.TrainingDiverged) as e:
    training.train_and_evaluate(_config(data_root, 8, "--config.optim.lr=1e30"), work,
                             progress=False)
  message = str(e.value)
  assert "last good checkpoint is step" in message and "None" not in message
  assert "--config.optim.lr=1e+29" in message   # a tenth: the setting the hint names
  results = training.train_and_evaluate(_config(data_root, 6, "--config.optim.lr=1e-3"),
                                     work, progress=False)
  out = capsys.readouterr().out
  assert "config change on resume: optim.lr: 1e+30 -> " in out and "resumed from step" in out
  assert results and checkpoints_lib.latest_step(work) == 6


def test_nan_without_checkpoint_says_so(tmp_path):
  ckpts = checkpoints_lib.TrainCheckpoints(tmp_path, keep=2)
  nan = np.float32(np.nan)
  run = training._Run(None, tmp_path, None, None, 10, 100, 100, 8, lambda s: 0.1, None, ckpts,
                   None, pending=[dict(loss_sum=nan, count=np.float32(2), visible=np.float32(1),
                                       grad_norm=np.float32(1))])
  with pytest.raises(training.TrainingDiverged, match="No checkpoint was written yet") as e:
    training._flush_metrics(run, 5, log=True)
  assert "None" not in str(e.value)
  ckpts.close()


def test_bad_image_hint_is_accepted_on_resume(template, data_root, tmp_path, capsys):
  work = _copy(template, tmp_path)
  bad_root = tmp_path / "data"
  shutil.copytree(data_root, bad_root)
  victim = sorted((bad_root / "train").iterdir())[0]
  victim.write_bytes(b"not a jpeg")
  with pytest.raises(Exception) as e:
    training.train_and_evaluate(_config(bad_root, 6), work, progress=False)
  line = cli.describe(cli._find_user_error(e.value))
  assert victim.name in line and "data.skip_bad_images=True" in line and "\n" not in line
  training.train_and_evaluate(_config(bad_root, 6, "--config.data.skip_bad_images=True"), work,
                           progress=False)
  out = capsys.readouterr().out
  assert "data.skip_bad_images: False -> True" in out and "resumed from step 4" in out
  assert checkpoints_lib.latest_step(work) == 6


# ------------------------------------------------------------------ one line per error

def test_bad_override_type_is_one_line(capsys):
  assert train.main(["--config", "demo", "--config.batch_size_per_device=abc"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: --config.batch_size_per_device='abc': expected an integer (like 8), "
                 "got str"]


def test_input_size_override_derives_heatmap_and_sigma():
  cfg = config_lib.load("coco_res50", ["--config.data.input_size=(288, 384)"])
  assert tuple(cfg.data.heatmap_size) == (72, 96) and cfg.data.sigma == 3.0  # as published
  config_lib.check_sizes(cfg)
  with pytest.raises(ValueError, match="multiples of 32"):
    config_lib.check_sizes(config_lib.load("coco_res50", ["--config.data.input_size=(100,128)"]))
  with pytest.raises(ValueError, match=r"heatmap_size \(10, 10\) does not match.*\(72, 96\)"):
    config_lib.check_sizes(config_lib.load("coco_res50", [
        "--config.data.input_size=(288, 384)", "--config.data.heatmap_size=(10,10)"]))


def test_unwritable_workdir_is_one_line(tmp_path, capsys):
  blocker = tmp_path / "a_file"      # root ignores read-only modes; a file in the way does not
  blocker.write_text("")
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  for work in ([blocker / "run"] + ([ro / "run"] if os.geteuid() != 0 else [])):
    assert train.main(["--config", "demo", "--workdir", str(work)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(work) in err[0] and err[0].startswith("error: "), err


def test_os_errors_name_the_path():
  e = OSError(28, "No space left on device", "/data/run/checkpoints/4")
  line = cli.describe(e)
  assert "/data/run/checkpoints/4" in line and "No space left" in line and "free" in line
  assert "Read-only" in cli.describe(OSError(30, "Read-only file system", "/ro/x"))


def test_cli_exit_codes_and_debug():
  import argparse  # why: only this test or script needs it

  def boom(error):
    def command(args, rest):
      raise error
    return command

  parser = lambda: argparse.ArgumentParser(prog="x")  # noqa: E731
  assert cli.run(boom(ValueError("bad key")), parser(), []) == 2
  assert cli.run(boom(RuntimeError("a bug")), parser(), []) == 1
  assert cli.run(boom(KeyboardInterrupt()), parser(), []) == 130
  wrapped = RuntimeError("grain: worker failed")
  wrapped.__cause__ = FileNotFoundError("missing.jpg")
  assert cli.run(boom(wrapped), parser(), []) == 2
  with pytest.raises(ValueError):
    cli.run(boom(ValueError("x")), parser(), ["--debug"])


# -------------------------------------------------- second process: lock, Ctrl-C, help

def _command(root, work, steps, *extra):
  return [sys.executable, "-m", "sbpose_jax.train", "--config", "demo", "--workdir", str(work),
          "--no-progress", *_overrides(root, steps, *extra)]


def _env():
  # A compilation cache outside the user's home (the train command's default is ~/.cache).
  cache = os.path.join(tempfile.gettempdir(), "sbpose_test_xla")
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
              JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR", cache))


def test_second_run_on_a_workdir_is_refused_while_the_first_lives(tmp_path):
  work = tmp_path / "run"
  with lock_lib.WorkdirLock(work):
    holder = (work / lock_lib.LOCK_FILE).read_text()
    assert f"pid {os.getpid()}" in holder
    second = subprocess.run(_command(tmp_path, work, 2), env=_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    err = second.stderr.strip().splitlines()
    assert err == [f"error: workdir {work} is in use by {holder.strip()}; wait for that run to "
                   "end (or stop it), or use another --workdir"], err
  with lock_lib.WorkdirLock(work):   # released: taken again
    pass


def test_lock_of_a_killed_process_is_free(tmp_path):
  work = tmp_path / "run"
  code = ("import sys, time; from sbpose_jax.training import lock as w; "
          f"l = w.WorkdirLock({str(work)!r}).__enter__(); print('locked', flush=True); "
          "time.sleep(600)")
  proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  with pytest.raises(ValueError, match=f"pid {proc.pid}"):
    lock_lib.WorkdirLock(work).__enter__()
  proc.kill()
  proc.wait()
  with lock_lib.WorkdirLock(work):
    pass


def test_ctrl_c_names_the_resume_step_and_exits_130(data_root, tmp_path):
  work = tmp_path / "run"
  proc = subprocess.Popen(_command(data_root, work, 400, "--config.data.num_workers=1"),
                          env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("step 6/"):
      os.killpg(proc.pid, signal.SIGINT)
      break
  rest = proc.communicate(timeout=300)[0]
  assert proc.returncode == 130, rest
  resume = checkpoints_lib.latest_step(work)
  tail = rest.strip().splitlines()
  assert tail[-1].startswith("interrupted at step ") and tail[-1].endswith(
      f"resumes from step {resume}"), rest
  assert "Traceback" not in rest and "leaked" not in rest and "ERROR" not in rest, rest


@pytest.mark.parametrize("checkpoints", [True, False], ids=["checkpoints", "none"])
def test_ctrl_c_before_the_first_step_names_the_resume_step(data_root, template, tmp_path,
                                                           checkpoints):
  work = _copy(template, tmp_path)   # its config with max_steps=4: the change line is printed
  if not checkpoints:
    shutil.rmtree(work / checkpoints_lib.CHECKPOINT_DIR)
  proc = subprocess.Popen(_command(data_root, work, 400), env=_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
  for line in proc.stdout:
    if line.startswith("config change on resume"):   # then data, model, restore, compile
      os.killpg(proc.pid, signal.SIGINT)
      break
  rest = proc.communicate(timeout=300)[0]
  assert proc.returncode == 130, rest
  expected = ("re-running the same command resumes from step 4" if checkpoints else
              "no checkpoint was written yet, so re-running the same command starts from step 0")
  assert rest.strip().splitlines()[-1] == (
      f"interrupted before the first step of this run; {expected}"), rest
  assert "Traceback" not in rest and "ERROR" not in rest and "\nstep " not in rest, rest
  assert checkpoints_lib.latest_step(work) == (4 if checkpoints else None)


# ------------------------------------------------------------------------------ preemption

# The train command, with checkpoint writes (TEST_SLOW_WRITE seconds before each step's commit)
# and evaluations (TEST_SLOW_EVAL) made slow and announced on stdout: the signals of the tests
# below land inside them.
SLOW_TRAIN = """
import asyncio, os, sys, time
slow_write = float(os.environ.get("TEST_SLOW_WRITE", "0"))
slow_after = int(os.environ.get("TEST_SLOW_WRITE_AFTER", "0"))
slow_eval = float(os.environ.get("TEST_SLOW_EVAL", "0"))
if slow_write:
  from orbax.checkpoint._src.path import atomicity
  finalize = atomicity.AtomicRenameTemporaryPath.finalize
  async def slow_finalize(self):
    # Training checkpoints after step TEST_SLOW_WRITE_AFTER, not saved models.
    if self._final_path.name.isdigit() and int(self._final_path.name) > slow_after:
      print(f"writing checkpoint {self._final_path.name}", flush=True)
      await asyncio.sleep(slow_write)
    await finalize(self)
  atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize
if slow_eval:
  from sbpose_jax.evaluators import loop
  run_evaluation = loop.run_evaluation
  def slow_run_evaluation(*args, **kwargs):
    print("evaluating", flush=True)
    time.sleep(slow_eval)
    return run_evaluation(*args, **kwargs)
  loop.run_evaluation = slow_run_evaluation
from sbpose_jax.commands import train
sys.exit(train.main(sys.argv[1:]))
"""


def _start_slow_train(root, work, slow: dict, *extra):
  """The training command slowed by SLOW_TRAIN (400 steps), started with `slow` (TEST_SLOW_*)
  in its env."""
  command = [sys.executable, "-c", SLOW_TRAIN] + _command(root, work, 400, *extra)[3:]
  return subprocess.Popen(command, env=dict(_env(), **slow), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _complete_steps(work):
  return sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())


def _signal_on(proc, pid, predicate, sig=signal.SIGTERM):
  """Reads proc's output until a line satisfies `predicate`, then sends `sig` to `pid`."""
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if predicate(line):
      os.kill(pid, sig)
      return lines
  raise AssertionError("".join(lines))


def test_sigterm_during_a_checkpoint_write_checkpoints_the_step_and_exits_75(data_root, tmp_path):
  """SIGTERM while step 2's checkpoint is being written: that write completes, the step the run
  stops at gets its own checkpoint, one line names it, exit 75; the same command resumes there."""
  work = tmp_path / "run"
  proc = _start_slow_train(data_root, work, {"TEST_SLOW_WRITE": "2"},
                           "--config.data.num_workers=1")
  _signal_on(proc, proc.pid, lambda line: line.startswith("writing checkpoint 2"))
  rest = proc.communicate(timeout=300)[0]
  assert proc.returncode == 75, rest
  last = rest.strip().splitlines()[-1]
  step = int(last.split("at step ")[1].split(":")[0])
  assert last == (f"preempted (SIGTERM) at step {step}: its checkpoint is written; re-running "
                  f"the same command resumes from step {step}"), rest
  assert step >= 2 and _complete_steps(work)[-2:] in ([2, step], [step])
  assert checkpoints_lib.latest_step(work) == step
  assert not [p for p in (work / "checkpoints").iterdir() if not p.name.isdigit()]
  assert "Traceback" not in rest and "leaked" not in rest, rest
  again = subprocess.Popen(_command(data_root, work, 400), env=_env(), cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  first = next(l for l in again.stdout if "training instances" in l)   # names where it starts
  again.kill()
  again.communicate(timeout=60)
  assert first.rstrip().endswith(f"; resumed from step {step}"), first


def test_sigterm_during_evaluation_lets_it_finish_and_checkpoints_its_step(data_root, tmp_path):
  work = tmp_path / "run"
  proc = _start_slow_train(data_root, work, {"TEST_SLOW_EVAL": "2"},
                           "--config.evals.val.every_steps=4")
  _signal_on(proc, proc.pid, lambda line: line.startswith("evaluating"))
  rest = proc.communicate(timeout=300)[0]
  assert proc.returncode == 75, rest
  assert rest.strip().splitlines()[-1].startswith("preempted (SIGTERM) at step 4: "), rest
  assert checkpoints_lib.latest_step(work) == 4
  rows = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  assert {"step": 4, "kind": "eval/val"}.items() <= next(
      r for r in rows if r["kind"] != "train").items(), rows   # the evaluation was logged


@pytest.mark.parametrize("how", ["second_sigterm", "grace_period"])
def test_second_sigterm_or_the_grace_period_falls_back_to_the_last_checkpoint(
    data_root, tmp_path, how):
  """During the preemption checkpoint's write: a second SIGTERM, or the grace period (1 s here)
  running out, ends the run at once (exit 143, one line); that write is abandoned, and the
  newest complete checkpoint is the one a re-run resumes from, as after kill -9."""
  work = tmp_path / "run"
  extra = ["--config.checkpoint_every_steps=4"] + (
      ["--config.preemption_grace_s=1"] if how == "grace_period" else [])
  proc = _start_slow_train(data_root, work,
                           {"TEST_SLOW_WRITE": "4", "TEST_SLOW_WRITE_AFTER": "4"}, *extra)
  # From step 6 on, once step 4's (fast) checkpoint is complete on disk: on a loaded machine
  # its asynchronous write can still be running when step 6 is logged.
  lines = _signal_on(proc, proc.pid, lambda line: line.startswith("step ") and int(
      line.split()[1].split("/")[0]) >= 6 and 4 in _complete_steps(work))
  if how == "second_sigterm":
    for line in proc.stdout:   # the write of the step the run stops at (>= 6; 4 was fast)
      lines.append(line)
      if line.startswith("writing checkpoint") and int(line.split()[-1]) > 4:
        os.kill(proc.pid, signal.SIGTERM)
        break
  rest = "".join(lines) + proc.communicate(timeout=300)[0]
  assert proc.returncode == 143, rest
  last = rest.strip().splitlines()[-1]
  why = "a second SIGTERM arrived" if how == "second_sigterm" else (
      "the grace period of 1 s ran out")
  if how == "grace_period" and "before this run reached a step to stop at" in last:
    # A loaded machine: the step after the signal took longer than the 1 s grace period.
    assert last == (f"preempted: {why} before this run reached a step to stop at; stopped "
                    "without it; re-running the same command resumes from step 4"), rest
  else:
    stopping = int(last.split("checkpoint of step ")[-1].split()[0])
    assert last == (f"preempted: {why} before the checkpoint of step {stopping} was complete; "
                    "stopped without it; re-running the same command resumes from step 4"), rest
    assert stopping >= 6
  assert _complete_steps(work) == [4]
  assert "Traceback" not in rest, rest


# Runs the rest of its command line with files limited to 150 KB (a preexec_fn would fork a
# process that has JAX's threads).
LIMIT_FILE_SIZE = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, "
                   "(150 * 1024, resource.RLIM_INFINITY)); os.execv(sys.argv[1], sys.argv[1:])")


@pytest.mark.parametrize("how", ["file_size_limit", "full_tmpfs"])
def test_failed_checkpoint_write_is_one_line(data_root, tmp_path, how):
  """A checkpoint write that fails (the state's files exceed a file-size limit, or the workdir is
  an 800 KB tmpfs): one line, none of tensorstore's "Event loop is closed" tracebacks."""
  work = tmp_path / "disk"
  work.mkdir()
  command = _command(data_root, work / "run", 20)
  env = _env()
  if how == "file_size_limit":   # EFBIG: needs nothing, exercises the same failure path
    env.pop("JAX_COMPILATION_CACHE_DIR")
    env["SBPOSE_COMPILATION_CACHE"] = "0"   # cache entries would hit the limit too
    command = [sys.executable, "-c", LIMIT_FILE_SIZE] + command
  else:                          # a real ENOSPC, in a private mount namespace
    unshare = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else
                                        ["--user", "--map-root-user"])
    mount = ["sh", "-c", 'mount -t tmpfs -o size=800k tmpfs "$1" && shift && exec "$@"', "sh",
             str(work)]
    if shutil.which("unshare") is None or subprocess.run(
        unshare + mount + ["true"], capture_output=True).returncode:
      pytest.skip("cannot mount a tmpfs here (unshare --mount not permitted)")
    command = unshare + mount + command
  proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "checkpoints/2.orbax-checkpoint-tmp" \
      in err[0], proc.stderr
  assert ("File too large" if how == "file_size_limit" else
          "No space left on device [os_error_code='28'] (free some space") in err[0], err
  assert "step 2/20" in proc.stdout


HEAVY = ("jax", "flax", "orbax", "grain", "tensorflow_datasets", "torch")


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "export", "track", "pack",
                                     "convert"])
def test_help_does_not_import_jax(command):
  code = (f"import sys, runpy; sys.argv = ['{command}', '--help']\n"
          f"try:\n  runpy.run_module('sbpose_jax.{command}', run_name='__main__')\n"
          "except SystemExit as e:\n  print('EXIT', e.code)\n"
          f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
  out = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=REPO, capture_output=True,
                       text=True, timeout=120).stdout
  assert f"usage: python -m sbpose_jax.{command}" in out and "--debug" in out, out
  assert "EXIT 0" in out and "HEAVY []" in out, out


def test_convert_style_choices_are_the_models():
  from sbpose_jax.commands import convert  # why: only this test or script needs it
  from sbpose_jax.models import resnet  # why: only this test or script needs it
  assert convert.STYLES == resnet.STYLES


def test_metrics_truncation_keeps_steps_up_to_the_resumed_one(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": s, "kind": "train"} for s in (2, 4, 6)] + [{"step": 4, "kind": "eval/val"}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "ki')
  assert train_log.truncate_metrics(path, 4) == 2
  kept = [json.loads(l) for l in path.read_text().splitlines()]
  assert kept == [rows[0], rows[1], rows[3]]


# ------------------------------------------------------------ predict and evaluate inputs

@pytest.fixture(scope="module")
def tiny_saved_model(tmp_path_factory):
  from test_evaluate import save_tiny_model  # why: only this test or script needs it
  return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def _predict_args(model_dir, out_dir, *inputs):
  from test_evaluate import BATCH, SMALL  # why: only this test or script needs it
  return ["--config", "coco_res50", "--checkpoint", str(model_dir), *map(str, inputs),
          "--out-dir", str(out_dir), "--batch-size", str(BATCH), *SMALL]


def test_predict_skips_an_unreadable_image_and_degenerate_boxes(
    fixtures_dir, tiny_saved_model, tmp_path, capsys):
  from sbpose_jax.commands import predict  # why: only this test or script needs it
  folder = tmp_path / "in"
  folder.mkdir()
  good = folder / "000000000785.jpg"
  shutil.copy(fixtures_dir / "coco" / good.name, good)
  (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  w = 640   # 000000000785.jpg is 640x425
  boxes = tmp_path / "boxes.json"
  boxes.write_text(json.dumps({good.name: [[10, 20, 200, 300, 0.9], [5, 5, 0, 40, 0.9],
                                           [5, 5, 0.001, 0.001, 0.9],
                                           [w + 10, 0, 50, 50, 0.9], [-80, -80, 50, 50, 0.9]]}))
  pngs = predict.main(_predict_args(tiny_saved_model, tmp_path / "o", folder) +
                      ["--boxes", str(boxes), "--no-nms"])
  err = capsys.readouterr().err
  assert [p.name for p in pngs] == [good.stem + ".png"]
  assert "skipping an unreadable image" in err and "broken.jpg" in err
  assert err.count("skipping box") == 4, err
  assert "[5, 5, 0, 40]" in err and "[5, 5, 0.001, 0.001]" in err and "outside the 640x425" in err
  (entry,) = json.loads((tmp_path / "o" / "predictions.json").read_text())["images"]
  assert [i["bbox"] for i in entry["instances"]] == [[10, 20, 200, 300]]


@pytest.mark.parametrize("case", ["no_score", "string_keypoint"])
def test_bad_results_file_is_one_line(fixtures_dir, tmp_path, capsys, case):
  from sbpose_jax.commands import evaluate  # why: only this test or script needs it
  from test_evaluate import coco_args  # why: only this test or script needs it
  gt = json.loads((fixtures_dir / "coco" / "test_coco.json").read_text())
  res = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
         for a in gt["annotations"] if a["num_keypoints"] > 0]
  if case == "no_score":
    del res[1]["score"]
  else:
    res[1]["keypoints"][3] = "12.5"
  path = tmp_path / "res.json"
  path.write_text(json.dumps(res))
  with pytest.raises(SystemExit) as e:
    evaluate.main(["--results", str(path)] + coco_args(fixtures_dir, tmp_path / "o"))
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and str(path) in err[0] and "entry 1" in err[0], err
  assert ("lacks ['score']" if case == "no_score" else "'12.5'") in err[0]


# ------------------------------------------------------------------------ data workers

def test_stream_resumes_at_a_batch_with_any_worker_count(data_root):
  """What lets data.num_workers change on resume: batch k is the same however it is made."""
  from sbpose_jax.data import pipeline, readers  # why: only this test or script needs it
  cfg = _config(data_root, 4)
  records = readers.read_split(cfg.data, "train")
  full = iter(pipeline.train_dataset(records, cfg, batch_size=4, seed=0, num_workers=0,
                                     host_targets=False))
  expected = [next(full) for _ in range(5)][3:]
  resumed = iter(pipeline.train_dataset(records, cfg, batch_size=4, seed=0, num_workers=1,
                                        host_targets=False, start_batch=3))
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  resumed.close()


def test_worker_batches_leave_no_leaked_shared_memory(data_root):
  code = f"""
from sbpose_jax.commands import config as config_lib
from sbpose_jax.data import pipeline, readers
if __name__ == "__main__":
  cfg = config_lib.load("demo", ["--config.data.root={data_root}", "--config.data.num_workers=1"])
  records = readers.read_split(cfg.data, "train")
  for batch in pipeline.eval_dataset(records, cfg, 4):
    pass
  it = iter(pipeline.train_dataset(records, cfg, batch_size=4, seed=0, host_targets=False))
  [next(it) for _ in range(3)]
  it.close()
  print("done")
"""
  script = pathlib.Path(data_root).parent / "shm_check.py"
  script.write_text(code)
  run = subprocess.run([sys.executable, str(script)], env=_env(), cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0 and "done" in run.stdout, run.stderr[-2000:]
  assert "leaked" not in run.stderr, run.stderr[-2000:]
