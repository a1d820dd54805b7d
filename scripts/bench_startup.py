"""Time to the first training step of a config, split into its parts.

  python scripts/bench_startup.py [--config demo] [--workers 1] [--config.KEY=VALUE ...]

Prints, in wall and CPU seconds: imports (sbpose_jax.train and what it pulls in), data (the
synthetic set if needed, reading the records), model (optimizer, initial variables), workers
(the data iterator's first batch: process start-up and the first batch), compile (the first
train_step, compile included), and the total. Run it twice to see a warm persistent compilation
cache (JAX_COMPILATION_CACHE_DIR). Numbers go to docs/benchmarks.md.
"""
from __future__ import annotations

import os
import sys
import time

_T0 = (time.perf_counter(), time.process_time())


def main(argv=None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  config_name = "demo"
  workers = 1
  rest = []
  it = iter(argv)
  for a in it:
    if a == "--config":
      config_name = next(it)
    elif a == "--workers":
      workers = int(next(it))
    else:
      rest.append(a)
  marks = []

  def mark(name):
    marks.append((name, time.perf_counter(), time.process_time(), 0.0))

  mark("start")
  # Imported here: their cost is the first thing measured.
  import jax
  from sbpose_jax.commands import config as config_lib
  from sbpose_jax import keypoints, models
  from sbpose_jax.training import init as init_weights
  from sbpose_jax.training import optim
  from sbpose_jax.training import loop as train
  from sbpose_jax.training import state as ts
  from sbpose_jax.data import pipeline
  mark("imports")
  pipeline.prepare_multiprocessing()
  config = config_lib.load(config_name, rest + [f"--config.data.num_workers={workers}"])
  records = train._prepare_data(config)
  mark("data")
  global_batch, group = train._check_batch(config, jax.device_count())
  epoch_steps = optim.steps_per_epoch(len(records), global_batch)
  tx, _ = train.make_optimizer(config, epoch_steps)
  model = models.build(config.model, keypoints.get(config.data.dataset).num_joints)
  variables = init_weights.initial_variables(config, model, 0)
  state = ts.create_train_state(model, tx, jax.random.PRNGKey(0),
                                tuple(config.data.input_size)[::-1], variables)
  jax.block_until_ready(state)
  mark("model")
  batches = train._train_iterator(records, config)
  local = next(batches)
  mark("workers")
  mesh = train.make_mesh()
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  settings = train.StepSettings(group, config.data.colour_order, config.data.colour_order,
                                tuple(int(v) for v in config.data.heatmap_size),
                                float(config.data.sigma))
  _, metrics = train.train_step(state, train.to_global_batch(local, sharding, global_batch,
                                                             ("image", "joints")),
                                model=model, settings=settings)
  jax.block_until_ready(metrics)
  mark("compile")
  if hasattr(batches, "close"):
    batches.close()
  print(f"{config_name}, {workers} worker(s), load average {os.getloadavg()[0]:.1f}, "
        f"JAX_COMPILATION_CACHE_DIR={os.environ.get('JAX_COMPILATION_CACHE_DIR', '')!r}")
  print(f"{'part':<10} {'wall s':>7} {'CPU s':>7}   (CPU: this process only)")
  for (_, w0, c0, _), (name, w1, c1, _) in zip(marks, marks[1:]):
    print(f"{name:<10} {w1 - w0:7.2f} {c1 - c0:7.2f}")
  print(f"{'total':<10} {marks[-1][1] - _T0[0]:7.2f} {marks[-1][2]:7.2f}")


if __name__ == "__main__":
  main()
