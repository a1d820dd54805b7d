"""The training loop behind `python -m sbpose_jax.train` (train.py: the command line).

One jitted `train_step` over a global batch sharded on a ("data",) mesh of every device of every
process (NamedSharding; the model knows nothing of the mesh), parameters replicated, bf16
compute with float32 parameters (config.model.dtype). Each process reads its own shard of the
data and contributes it with `jax.make_array_from_process_local_data`.

Re-running the same command resumes from the newest checkpoint of the workdir that restores
(state, optimizer, step, key; the data stream is rebuilt at that step), so a run killed at any
point ends with the same parameters as an uninterrupted one (on CPU, where XLA is
deterministic). Details on BatchNorm statistics and multi-host runs: docs/training.md.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
import threading
import time
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sbpose_jax import eval_entries
from sbpose_jax import sizes
from sbpose_jax import evaluators
from sbpose_jax import heatmaps as heatmaps_lib
from sbpose_jax.inference import pose as inference
from sbpose_jax.training import det_task
from sbpose_jax.training import init as init_weights
from sbpose_jax import keypoints
from sbpose_jax.training import losses
from sbpose_jax import models
from sbpose_jax.training import optim
from sbpose_jax.training import log as train_log
from sbpose_jax.training import state as ts
from sbpose_jax.training import workdir as workdir_lib
from sbpose_jax.training import checkpoints as checkpoints_lib
from sbpose_jax.training import lock as lock_lib
from sbpose_jax.training import preemption as preemption_lib
from sbpose_jax.data import device_warp
from sbpose_jax.data import packed
from sbpose_jax.data import pipeline
from sbpose_jax.data import readers
from sbpose_jax.data import synthetic
from sbpose_jax.data import synthetic_video
from sbpose_jax.data import ycc420
from sbpose_jax.evaluators import loop
from sbpose_jax.sizes import Sizes

# What training takes from the pipeline: heatmaps are made on the device from `joints`.
TRAIN_KEYS = ("image", "joints")


class TrainingDiverged(FloatingPointError):
  """The loss (or gradient norm) became NaN or infinite."""


class StepSettings(NamedTuple):
  """Static settings of `train_step` (hashable: part of the jit cache key)."""
  bn_group_size: int = 0      # 0: BatchNorm statistics over the global batch
  data_order: str = "rgb"     # channel order of the uint8 batch
  model_order: str = "rgb"    # channel order the network expects
  heatmap_wh: tuple = (48, 64)  # for targets made on the device from `joints`
  sigma: float = 2.0
  input_wh: tuple = (192, 256)  # for crops warped on the device (data.warp_on_device)


# ------------------------------------------------------------------------------- the step

def _forward(model, variables, x, group: int):
  """Training forward pass; BatchNorm statistics over groups of `group` images (0: all).

  Grouping reshapes the batch to (B/group, group, ...) and vmaps the model, so each group
  normalises with its own statistics; the running averages are the mean over groups. The groups
  are a property of the batch, not of the devices: results do not depend on the device count.
  """
  b = x.shape[0]
  if not group or group >= b:
    out, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return out, upd["batch_stats"]
  if b % group:
    raise ValueError(f"bn_group_size {group} does not divide the batch of {b}")
  xg = x.reshape(b // group, group, *x.shape[1:])
  out, upd = jax.vmap(lambda xi: model.apply(variables, xi, train=True,
                                             mutable=["batch_stats"]))(xg)
  stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), upd["batch_stats"])
  return out.reshape(b, *out.shape[2:]), stats


@functools.partial(jax.jit, static_argnames=("model", "settings"), donate_argnums=0)
def train_step(state: ts.TrainState, batch: Mapping[str, jax.Array], *, model,
               settings: StepSettings) -> tuple[ts.TrainState, dict[str, jax.Array]]:
  """One Adam step on a global batch.

  Args:
    state: replicated TrainState (donated).
    batch: `image` (B, H, W, 3) uint8 and `joints` (B, K, 3) heatmap-space x, y, weight (the
      targets are made on the device); sharded over the batch axis.
    model: the flax module (static).
    settings: StepSettings (static).
  Returns:
    (new state, metrics as sums: `loss_sum`, `count`, `visible`, and `grad_norm`).
  """
  image = batch["image"]
  if "warp_matrix" in batch:  # packed crops + output->crop matrices (data/device_warp.py)
    if image.ndim == 3:       # 4:2:0 YCbCr planes (data.pack_chroma="planes", data/ycc420.py)
      image = ycc420.planes_to_colour_jnp(image, settings.data_order)
    image = device_warp.warp_affine(image, batch["warp_matrix"], settings.input_wh)
  x = inference.normalize(image, settings.data_order, settings.model_order)
  target, weight = heatmaps_lib.encode_jnp(batch["joints"], settings.heatmap_wh, settings.sigma)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    heatmaps, new_stats = _forward(model, variables, x, settings.bn_group_size)
    loss_sum, count = losses.heatmap_mse(heatmaps, target, weight)
    return loss_sum / count, (loss_sum, count, new_stats)

  grads, (loss_sum, count, new_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  metrics = dict(loss_sum=loss_sum, count=count, visible=jnp.sum(weight),
                 grad_norm=jnp.sqrt(sum(jnp.sum(jnp.square(g))
                                        for g in jax.tree.leaves(grads))))
  return new_state, metrics


# --------------------------------------------------------------------------- set-up pieces

@functools.lru_cache(maxsize=8)
def _optimizer_cached(optim_items: tuple, epoch_steps: int):
  # One tx object per recipe, so that repeated runs in one process reuse the compiled step.
  return optim.make_optimizer(ml_collections.ConfigDict(dict(optim_items)), epoch_steps)


def make_optimizer(config, epoch_steps: int):
  items = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                       for k, v in config.optim.items()))
  return _optimizer_cached(items, epoch_steps)


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D ("data",) mesh over every device of every process, each process's devices
  contiguous in process order: process p's rows of the global batch are its contiguous part."""
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return jax.sharding.Mesh(np.asarray(devices), ("data",))


def to_global_batch(local: Mapping[str, np.ndarray], sharding, global_batch: int,
                    keys=TRAIN_KEYS) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded on the batch axis."""
  return {k: jax.make_array_from_process_local_data(
      sharding, np.asarray(local[k]), (global_batch, *np.shape(local[k])[1:])) for k in keys}


def _eval_due(ev, step: int, epoch_steps: int) -> bool:
  if ev.every_steps:
    return step % int(ev.every_steps) == 0
  if ev.every_epochs:
    return step % (int(ev.every_epochs) * epoch_steps) == 0
  return False


# ------------------------------------------------------------------------------- the tasks

class PoseTask:
  """Top-down pose estimation (`config.task="pose"`, the default): the task-specific parts of
  the loop. `det_task.DetectionTask` is the other task; everything else is shared."""
  name = "pose"
  train_keys = TRAIN_KEYS
  step = staticmethod(train_step)

  def check(self, config) -> None:
    sizes.check_sizes(config)

  def prepare_data(self, config):
    return _prepare_data(config)

  def build_model(self, config):
    return models.build(config.model, keypoints.get(config.data.dataset).num_joints)

  def input_hw(self, config) -> tuple[int, int]:
    return Sizes.of(config.data).input_hw

  def make_optimizer(self, config, epoch_steps: int):
    return make_optimizer(config, epoch_steps)

  def step_settings(self, config, bn_group: int) -> StepSettings:
    s = Sizes.of(config.data)
    return StepSettings(bn_group, config.data.colour_order, config.data.colour_order,
                        s.heatmap_wh, float(config.data.sigma), s.input_wh)

  def train_iterator(self, records, config, start_step: int = 0):
    return _train_iterator(records, config, start_step)

  def initial_variables(self, config, model, seed: int):
    return init_weights.initial_variables(config, model, seed)

  def evaluate(self, run, state, step: int, names):
    return _evaluate(run, state, step, names)

  def saved_model(self, config, state, step: int):
    return ts.state_variables(state), workdir_lib.model_meta(config, step)


TASKS = {"pose": PoseTask, "detection": det_task.DetectionTask}


def task_of(config):
  """The task object of `config.task` ("pose" when the config has no such field)."""
  name = config.get("task", "pose")
  if name not in TASKS:
    raise ValueError(f"task={name!r} is unknown; known: {sorted(TASKS)}")
  return TASKS[name]()


# ------------------------------------------------------------------------------- the run

@dataclasses.dataclass
class _Run:
  """Everything one run of `train_and_evaluate` carries between its sections."""
  config: Any
  workdir: pathlib.Path
  model: Any
  settings: StepSettings
  epoch_steps: int
  total_steps: int
  stop_step: int
  global_batch: int
  lr_fn: Any
  data_sharding: Any
  ckpts: checkpoints_lib.TrainCheckpoints
  logger: train_log.RunLogger
  task: Any = None
  eval_sets: dict = dataclasses.field(default_factory=dict)
  pending: list = dataclasses.field(default_factory=list)
  last_log: tuple = (0, 0.0)


def _prepare_data(config):
  """Generates the synthetic dataset if the config asks for it; reads the training records,
  or opens the packed crops (`data.source="packed"`, checked against the config)."""
  source = config.data.source
  if source not in ("full", "packed"):
    raise ValueError(f"data.source must be 'full' or 'packed', got {source!r}")
  if source == "full" and config.data.warp_on_device:
    raise ValueError("data.warp_on_device needs data.source='packed' (python -m sbpose_jax.pack)")
  s = config.synthetic
  if s.enabled and s.get("kind", "people") == "video_stills":
    # the stills of the synthetic videos, with the clips' joint names (configs/demo_posetrack.py)
    synthetic_video.ensure(config.data.root, "stills",
                           num_images={"train": int(s.num_train), "val": int(s.num_val)},
                           seed=int(s.seed), frame_size=tuple(s.frame_size),
                           max_people=int(s.max_people), keypoint_format=s.keypoint_format)
  else:
    synthetic.ensure_from_config(config)
  if source == "packed":
    return packed.open_pack(packed.default_dir(config), config, "train")
  return readers.read_split(config.data, "train")


def _check_batch(config) -> tuple[int, int]:
  """(global batch, BatchNorm group) of a config whose batch sizes are resolved
  (workdir.resolve_batch); the groups are a property of the global batch, not of the devices."""
  global_batch = int(config.global_batch_size)
  group = int(config.bn_group_size)
  if group < 0 or (group and global_batch % group and group < global_batch):
    raise ValueError(f"bn_group_size={group} must divide the global batch {global_batch}, or "
                     "be 0")
  return global_batch, (0 if group >= global_batch else group)


def _train_iterator(records, config, start_step: int = 0):
  """This process's batches from the one of `start_step` on: its contiguous part (global batch /
  processes rows) of each global batch, targets made on the device from `joints` (less host
  work and IPC; docs/ecosystem.md §1c). Global batch k is a function of k alone, so a resumed
  run needs no saved iterator state and may use another data.num_workers, or other processes
  and devices."""
  make = (functools.partial(packed.train_dataset, records) if isinstance(records, packed.Pack)
          else functools.partial(pipeline.train_dataset, records))
  ds = make(
      config, batch_size=int(config.global_batch_size) // jax.process_count(),
      seed=int(config.seed), process_index=jax.process_index(),
      process_count=jax.process_count(), host_targets=False, start_batch=start_step)
  return iter(ds)


def _initial_state(run: _Run, tx, replicated) -> tuple[ts.TrainState, int]:
  """Fresh state (with init checkpoint), or the latest checkpoint's; and the start step."""
  config, model = run.config, run.model
  rng = jax.random.PRNGKey(int(config.seed))
  hw = run.task.input_hw(config)
  latest = run.ckpts.latest_step()
  if latest is None:
    variables = run.task.initial_variables(config, model, int(config.seed))
    state = ts.create_train_state(model, tx, rng, hw, variables)
    return jax.device_put(state, replicated), 0
  abstract = jax.eval_shape(lambda: ts.create_train_state(model, tx, rng, hw))
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                          abstract)
  return abstract, latest


def _flush_metrics(run: _Run, step: int, log: bool) -> None:
  """Fetches the step metrics since the last call; raises TrainingDiverged on NaN/inf."""
  if not run.pending:
    return
  fetched = jax.device_get(run.pending)
  loss_sum = sum(float(m["loss_sum"]) for m in fetched)
  count = sum(float(m["count"]) for m in fetched)
  grad_norm = max(float(m["grad_norm"]) for m in fetched)
  if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
    run.ckpts.wait()
    last = run.ckpts.latest_step()
    kept = (f"The last good checkpoint is step {last} in {run.ckpts.directory} and is kept"
            if last is not None else "No checkpoint was written yet, so a re-run starts over")
    lower = float(run.config.optim.lr) / 10 if run.config is not None else 1e-4
    raise TrainingDiverged(
        f"the loss became {'nan/inf' if not math.isfinite(loss_sum) else 'finite'} (gradient "
        f"norm {grad_norm}) at or before step {step}; training stopped. {kept}. Lower the "
        f"learning rate (e.g. --config.optim.lr={lower:g}) or check the data, then re-run "
        "the command" + (" to resume from it." if last is not None else "."))
  if not log:
    return
  now = time.perf_counter()
  steps = len(fetched)
  last_step, last_time = run.last_log
  values = dict(loss=loss_sum / count, lr=float(run.lr_fn(step - 1)), grad_norm=grad_norm,
                visible=sum(float(m["visible"]) for m in fetched) / steps / run.global_batch,
                epoch=step / run.epoch_steps)
  if step > last_step:  # not on the first step, whose time is mostly compilation
    values["img_per_s"] = (step - last_step) * run.global_batch / max(now - last_time, 1e-9)
  run.logger.train_line(step, values)
  run.pending.clear()
  run.last_log = (step, time.perf_counter())


def _eval_sets(run: _Run) -> dict:
  if not run.eval_sets:
    for name, ev in run.config.evals.items():
      if ev.type not in evaluators.EVALUATORS:
        raise ValueError(f"evals.{name}.type={ev.type!r} is unknown; known: "
                         f"{sorted(evaluators.EVALUATORS)}")
      ecfg, _ = eval_entries.eval_config(run.config, name)
      run.eval_sets[name] = (ecfg, readers.read_split(ecfg.data, "val"))
  return run.eval_sets


def _evaluate(run: _Run, state, step: int, names) -> dict[str, dict[str, float]]:
  """Runs the due evaluations; writes logs, results files and a sample picture for each."""
  variables = ts.state_variables(state)
  out = {}
  for name in names:
    ecfg, records = _eval_sets(run)[name]
    ev_type = run.config.evals[name].type
    evaluator = evaluators.EVALUATORS[ev_type](records, ecfg)
    predict = inference.make_predict_fn(run.model, variables, ecfg)
    out_dir = run.workdir / "eval" / f"{name}_{step:07d}" if jax.process_index() == 0 else None
    seen = []

    def recording_predict(batch, predict=predict, seen=seen):
      # Keeps the first batch and its output for the picture: no extra pass, no new shape.
      out = predict(batch)
      if not seen:
        seen.append((batch, out))
      return out

    metrics = loop.run_evaluation(recording_predict, records, ecfg, evaluator, progress=False,
                                  out_dir=str(out_dir) if out_dir else None)
    out[name] = {k: float(v) for k, v in metrics.items()}
    run.logger.eval_line(step, name, out[name])
    if run.logger.enabled and seen:
      batch, kpts = seen[0]
      picture = train_log.sample_picture(batch, np.asarray(kpts), ecfg.data.dataset,
                                         ecfg.data.colour_order, Sizes.of(ecfg.data).input_wh)
      run.logger.image(step, name, picture)
  return out


def _save_models(run: _Run, state, step: int, results: Mapping, last: bool) -> float | None:
  """model_best when the first evaluation's main metric improved; model_last when `last`."""
  score = None
  variables, meta = run.task.saved_model(run.config, state, step)
  if results:
    name = next(iter(run.config.evals))
    if name in results:
      metric = evaluators.main_metric(run.config.evals[name].type, results[name])
      score = results[name][metric]
      workdir_lib.save_if_best(run.workdir, f"{name}/{metric}", score, variables, meta)
  if last:
    workdir_lib.save_last(run.workdir, variables, meta)
  return score


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       progress: bool = True, return_state: bool = False):
  """Trains `config` in `workdir`, resuming from its latest checkpoint; evaluates as configured.

  Returns:
    The last evaluation's metrics, {eval name: {metric: value}} ({} if it had nothing to do);
    with `return_state`, (metrics, final TrainState).
  Raises:
    TrainingDiverged: NaN/inf loss (the last good checkpoint is kept).
    ValueError / FileNotFoundError: bad config, data or init checkpoint, or a workdir of
      another config.
  """
  workdir = pathlib.Path(workdir)
  task_of(config).check(config)   # before anything is compiled
  # flush: these lines say what the run does before its first step, also through a pipe.
  say = functools.partial(print, flush=True) if jax.process_index() == 0 else (lambda *_: None)
  try:
    with lock_lib.WorkdirLock(workdir, log=say), preemption_lib.Preemption(
        workdir, float(config.get("preemption_grace_s", 25.0))) as preemption:
      return _train_locked(config, workdir, progress, return_state, say, preemption)
  except Interrupted:
    raise
  except KeyboardInterrupt:
    # Ctrl-C while reading the data, restoring or compiling: this run wrote no checkpoint.
    raise Interrupted(f"interrupted before the first step of this run; "
                      f"{_resume_phrase(workdir)}") from None


def _train_locked(config, workdir: pathlib.Path, progress: bool, return_state: bool, say,
                  preemption: preemption_lib.Preemption):
  """train_and_evaluate, holding the workdir's lock."""
  # --- Data, sizes, schedule, model. The global batch is the run's (kept across topologies).
  config, notes = workdir_lib.resolve_batch(config, workdir, jax.device_count())
  for change in workdir_lib.check_config(workdir, config):
    say(f"config change on resume: {change}")
  for note in notes:
    say(note)
  task = task_of(config)
  train_records = task.prepare_data(config)
  global_batch, group = _check_batch(config)
  epoch_steps = optim.steps_per_epoch(len(train_records), global_batch)
  total = int(config.epochs) * epoch_steps
  stop = min(total, int(config.max_steps)) if int(config.max_steps) > 0 else total
  tx, lr_fn = task.make_optimizer(config, epoch_steps)
  model = task.build_model(config)
  mesh = make_mesh()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  settings = task.step_settings(config, group)
  ckpts = checkpoints_lib.TrainCheckpoints(workdir, int(config.keep_checkpoints),
                                           metric="score" if config.evals else None)
  is_main = jax.process_index() == 0
  run = _Run(config, workdir, model, settings, epoch_steps, total, stop, global_batch, lr_fn,
             jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")), ckpts,
             train_log.RunLogger(workdir, stop, 0, enabled=False), task)
  # --- State and data position: fresh, or from the newest checkpoint that restores. The data
  # workers start (process start-up, first batch) while the state is made or restored.
  expected = ckpts.latest_step() or 0
  preemption.starting_at(expected)
  train_iter = task.train_iterator(train_records, config, expected)
  first = _FirstBatch(train_iter)
  try:
    state, start = _initial_state(run, tx, replicated)
    if start:
      state, start = ckpts.restore_newest(state, log=say)
      if state is None:  # every checkpoint was moved aside
        state, start = _initial_state(run, tx, replicated)
  except BaseException:
    first.wait()
    train_iter.close()
    raise
  if start != expected:  # fell back to an older checkpoint: the stream starts elsewhere
    first.wait()
    train_iter.close()
    train_iter = task.train_iterator(train_records, config, start)
    first = _FirstBatch(train_iter)
  run.logger = train_log.RunLogger(workdir, stop, start, enabled=is_main, progress=progress)
  run.logger.message(
      f"{config.name}: {len(train_records)} training instances, global batch {global_batch} "
      f"({global_batch // jax.device_count()}/device x {jax.device_count()} devices, "
      f"{jax.process_count()} process(es)), {epoch_steps} steps/epoch, steps {start}->{stop} "
      f"of {total}" + (f"; resumed from step {start}" if start else ""))
  results = {}
  step = done = start  # done: the last step whose update was dispatched
  try:
    if start == 0 and config.eval_at_start and config.evals:
      results = task.evaluate(run, state, 0, list(config.evals))
    run.last_log = (start, time.perf_counter())
    # --- The loop. `step` counts completed updates.
    for step in range(start + 1, stop + 1):
      local = first.take() if step == start + 1 else next(train_iter)
      keys = task.train_keys + (("warp_matrix",) if "warp_matrix" in local else ())
      state, metrics = task.step(state, to_global_batch(local, run.data_sharding, global_batch,
                                                        keys), model=model, settings=settings)
      done = step
      run.pending.append(metrics)
      run.logger.advance()
      if step == start + 1:  # img/s without the compile
        jax.block_until_ready(metrics)
        run.last_log = (step, time.perf_counter())
      due = [n for n, ev in config.evals.items() if step == stop or _eval_due(ev, step,
                                                                              epoch_steps)]
      save = bool(due) or step == stop or step % int(config.checkpoint_every_steps) == 0
      log = step == stop or step % int(config.log_every_steps) == 0
      if log or save:
        _flush_metrics(run, step, log)   # never checkpoint a diverged state
      score = None
      if due:
        results = task.evaluate(run, state, step, due)
        score = _save_models(run, state, step, results, last=step == stop)
      elif step == stop:
        _save_models(run, state, step, {}, last=True)
      if save:
        ckpts.save(step, state, None, None if score is None else {"score": score})
      if step < stop and preemption.stop_requested(step, save):
        # Every process stops after this step: its checkpoint, then one line (train.py).
        if not save:
          _flush_metrics(run, step, log=False)   # never checkpoint a diverged state
          ckpts.save(step, state, None, None)
        ckpts.wait()
        preemption.checkpoint_written()
        raise preemption_lib.Preempted(step, preemption.how)
    if start == stop and workdir_lib.last_step(workdir) != stop:
      # Killed between the last checkpoint and model_last: finish the job.
      results = task.evaluate(run, state, stop, list(config.evals)) if config.evals else {}
      _save_models(run, state, stop, results, last=True)
    elif start == stop:
      run.logger.message(f"{workdir} already holds the finished run (step {stop}).")
  except KeyboardInterrupt:
    _close(run, train_iter, step if done > start else None, interrupted=True)
    raise
  except BaseException:
    _close(run, train_iter, step if done > start else None)
    raise
  _close(run, train_iter, step)
  return (results, state) if return_state else results


class _FirstBatch:
  """The first batch of an iterator, fetched by a thread from now on: the workers' start-up
  (spawn, imports, first decode) overlaps with making or restoring the state."""

  def __init__(self, iterator):
    self._result = None
    self._thread = threading.Thread(target=self._fetch, args=(iterator,), daemon=True)
    self._thread.start()

  def _fetch(self, iterator) -> None:
    try:
      self._result = (next(iterator), None)
    except BaseException as e:
      self._result = (None, e)   # re-raised in the loop by take()

  def wait(self) -> None:
    self._thread.join()

  def take(self):
    self.wait()
    batch, error = self._result
    if error is not None:
      raise error
    return batch


class Interrupted(KeyboardInterrupt):
  """Ctrl-C; the message says which step a re-run resumes from."""


def _resume_phrase(workdir: pathlib.Path) -> str:
  resume = checkpoints_lib.latest_step(workdir)
  if resume is None:
    return "no checkpoint was written yet, so re-running the same command starts from step 0"
  return f"re-running the same command resumes from step {resume}"


def _close(run: _Run, train_iter, step: int | None, interrupted: bool = False) -> None:
  """Finishes the pending checkpoint (a second Ctrl-C abandons it), stops the data workers.

  After an interruption (Ctrl-C before or during this) raises Interrupted naming the step a
  re-run resumes from; `step` is the step in progress, None before the first one.
  """
  abandoned = False
  try:
    run.ckpts.close()
  except KeyboardInterrupt:
    interrupted = abandoned = True  # the partial step stays a tmp directory, deleted on re-run
  try:
    run.logger.close()
    if hasattr(train_iter, "close"):  # grain workers and their shared memory
      train_iter.close()
  except KeyboardInterrupt:
    interrupted = True
  if not interrupted:
    return
  where = f"at step {step}" if step is not None else "before the first step of this run"
  raise Interrupted(f"interrupted {where}" + ("; the checkpoint being written was abandoned"
                                              if abandoned else "") +
                    f"; {_resume_phrase(run.workdir)}") from None
