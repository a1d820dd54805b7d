"""Where the detector's training step spends its time on this CPU (`--config demo_det`).

  python scripts/bench_det_step.py                          # the demo_det defaults
  python scripts/bench_det_step.py --batch 4 8 16 --widen 0.125 0.25

Times, on one fixed random batch (people-sized boxes, 3 per image) and the config's model,
crop and optimizer: the forward pass in training mode, forward + backward of the network alone
(a squared-output loss, no assignment), forward + the dynamic soft-label assignment, and the
whole jitted `det_task.train_step` (network, assigner, QFL + GIoU, AdamW, EMA). The step also
reports process CPU seconds per wall second: how many of the cores XLA keeps busy. No data
pipeline: the loop's images/s is this minus what the grain worker takes from the cores.
Prints one JSON line per (batch, widen).
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from sbpose_jax.configs import demo_det
from sbpose_jax.data import det_pipeline
from sbpose_jax.training import det_assigner
from sbpose_jax.training import det_task
from sbpose_jax.training import state as ts


def _batch(batch: int, w: int, h: int, max_boxes: int, rng: np.random.Generator) -> dict:
  boxes = np.zeros((batch, max_boxes, 4), np.float32)
  valid = np.zeros((batch, max_boxes), bool)
  for b in range(batch):
    for g in range(3):
      x, y = rng.uniform(0, w - 46), rng.uniform(0, h - 114)
      boxes[b, g] = [x, y, x + 46, y + 114]   # the median still person at 0.8 scale
      valid[b, g] = True
  return dict(image=rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8), boxes=boxes,
              box_valid=valid)


def _ms(fn, *args, reps: int) -> tuple[float, float]:
  """(wall ms per call, CPU seconds per wall second) after one compiling call."""
  jax.block_until_ready(fn(*args))
  t, c = time.perf_counter(), time.process_time()
  for _ in range(reps):
    out = fn(*args)
  jax.block_until_ready(out)
  wall = time.perf_counter() - t
  return 1000 * wall / reps, (time.process_time() - c) / wall


def bench(batch: int, widen: float, reps: int) -> dict:
  config = demo_det.get_config()
  config.model.widen_factor = widen
  task = det_task.DetectionTask()
  model = task.build_model(config)
  w, h = det_pipeline.crop_wh(config.data)
  data = _batch(batch, w, h, int(config.data.max_boxes), np.random.default_rng(0))
  variables = ts.init_variables(model, 0, (h, w))
  settings = det_task.DetStepSettings(int(config.data.input_size))
  x = det_task.normalise(data["image"], settings.mean, settings.std)
  priors = jnp.asarray(det_task.priors_of(h, w))

  def outputs(params):
    return model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                       train=True, mutable=["batch_stats"])[0]

  def network_loss(params):
    cls, reg = outputs(params)
    return sum(jnp.sum(jnp.square(o)) for o in cls + reg)

  def assign(params):
    cls, reg = outputs(params)
    logits, dist = det_task._flatten(cls), det_task._flatten(reg)
    boxes = det_assigner.distance2bbox(priors[:, :2], dist)
    return det_assigner.assign_batch(priors, boxes, logits, jnp.asarray(data["boxes"]),
                                     jnp.zeros(data["box_valid"].shape, jnp.int32),
                                     jnp.asarray(data["box_valid"]))

  params = variables["params"]
  fwd, _ = _ms(jax.jit(outputs), params, reps=reps)
  fwd_bwd, _ = _ms(jax.jit(jax.grad(network_loss)), params, reps=reps)
  fwd_assign, _ = _ms(jax.jit(assign), params, reps=reps)

  tx, _ = det_task.make_optimizer(config, 125)
  state = ts.create_train_state(model, tx, jax.random.PRNGKey(0), (h, w), variables)
  step = functools.partial(det_task.train_step, model=model, settings=settings)
  state, _ = step(state, data)   # compiles; the state is donated from here on
  holder = [state]

  def one_step():
    holder[0], metrics = step(holder[0], data)
    return metrics

  step_ms, cores = _ms(one_step, reps=reps)
  n_params = sum(int(p.size) for p in jax.tree.leaves(params))
  return dict(batch=batch, widen=widen, crop_wh=[w, h], params=n_params,
              forward_ms=round(fwd, 1), forward_backward_ms=round(fwd_bwd, 1),
              forward_assign_ms=round(fwd_assign, 1), train_step_ms=round(step_ms, 1),
              train_step_img_s=round(1000 * batch / step_ms, 1),
              step_cpu_per_wall=round(cores, 2), machine=platform.processor() or platform.machine(),
              jax=jax.__version__, backend=jax.default_backend())


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, nargs="+", default=[8])
  p.add_argument("--widen", type=float, nargs="+", default=[0.125])
  p.add_argument("--reps", type=int, default=10)
  args = p.parse_args(argv)
  for widen in args.widen:
    for batch in args.batch:
      print(json.dumps(bench(batch, widen, args.reps)), flush=True)


if __name__ == "__main__":
  main()
