"""Training throughput: the jitted train step on device-resident batches, and end to end.

  python scripts/bench_train.py --config coco_res50 --batch 64 256 --devices 1 8
  python scripts/bench_train.py --config demo --end-to-end          # with the real pipeline

`step` mode feeds one random batch that already lives on the devices (uint8 images + joints;
targets are made on the device as in training), so it measures the step alone. `--end-to-end`
runs the grain pipeline of the config (data.num_workers processes) and the host-to-device copy
too: the number a training run sees. Devices are the first n of this process; on a CPU, fake
several with XLA_FLAGS=--xla_force_host_platform_device_count=N. Config overrides
(`--config.a.b=v`) apply as in training. Prints one JSON line per measurement.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from sbpose_jax.commands import config as config_lib
from sbpose_jax import keypoints
from sbpose_jax import models
from sbpose_jax.commands import train
from sbpose_jax.training import loop as training
from sbpose_jax.training import state as ts


def _setup(config, n_devices: int, per_device: int):
  info = keypoints.get(config.data.dataset)
  model = models.build(config.model, info.num_joints)
  tx, _ = training.make_optimizer(config, epoch_steps=1000)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:n_devices]), ("data",))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  hw = tuple(int(v) for v in config.data.input_size)[::-1]
  state = ts.create_train_state(model, tx, jax.random.PRNGKey(0), hw)
  group = int(config.bn_group_size)
  global_batch = per_device * n_devices
  settings = training.StepSettings(0 if group >= global_batch else group, config.data.colour_order,
                                config.data.colour_order,
                                tuple(int(v) for v in config.data.heatmap_size),
                                float(config.data.sigma))
  return model, jax.device_put(state, rep), data, settings, info


def bench_step(config, n_devices: int, per_device: int, steps: int, warmup: int) -> dict:
  """img/s of the train step alone, on a device-resident batch."""
  model, state, data, settings, info = _setup(config, n_devices, per_device)
  b = per_device * n_devices
  w_hm, h_hm = settings.heatmap_wh
  rng = np.random.default_rng(0)
  hw = tuple(int(v) for v in config.data.input_size)[::-1]
  joints = np.concatenate([rng.uniform(0, [w_hm, h_hm], (b, info.num_joints, 2)),
                           np.ones((b, info.num_joints, 1))], -1).astype(np.float32)
  batch = jax.device_put(dict(image=rng.integers(0, 256, (b, *hw, 3), dtype=np.uint8),
                              joints=joints), data)
  t = time.perf_counter()
  state, m = training.train_step(state, batch, model=model, settings=settings)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  for _ in range(warmup):
    state, m = training.train_step(state, batch, model=model, settings=settings)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = training.train_step(state, batch, model=model, settings=settings)
  jax.block_until_ready(m)
  dt = time.perf_counter() - t
  return dict(mode="step", devices=n_devices, batch_per_device=per_device, global_batch=b,
              img_per_s=round(b * steps / dt, 1), ms_per_step=round(1e3 * dt / steps, 1),
              compile_s=round(compile_s, 1))


def bench_end_to_end(config, n_devices: int, per_device: int, steps: int, warmup: int) -> dict:
  """img/s with the config's grain pipeline feeding the step (decode, augment, copy)."""
  from sbpose_jax.data import pipeline  # why: only this test or script needs it
  model, state, data, settings, _ = _setup(config, n_devices, per_device)
  records = training._prepare_data(config)
  b = per_device * n_devices
  it = iter(pipeline.train_dataset(records, config, batch_size=b, seed=0, host_targets=False))
  def step(state):
    local = next(it)
    batch = jax.device_put({k: local[k] for k in ("image", "joints")}, data)
    return training.train_step(state, batch, model=model, settings=settings)
  for _ in range(1 + warmup):
    state, m = step(state)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = step(state)
  jax.block_until_ready(m)
  dt = time.perf_counter() - t
  return dict(mode="end_to_end", devices=n_devices, batch_per_device=per_device, global_batch=b,
              img_per_s=round(b * steps / dt, 1), ms_per_step=round(1e3 * dt / steps, 1),
              num_workers=int(config.data.num_workers), records=len(records))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="coco_res50")
  p.add_argument("--batch", type=int, nargs="+", default=[64], help="images per device")
  p.add_argument("--devices", type=int, nargs="+", default=None,
                 help="device counts (default: 1 and all)")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--end-to-end", action="store_true", help="also run the real input pipeline")
  args, rest = p.parse_known_args(argv)
  train.init_distributed(mode="off")
  from sbpose_jax.data import pipeline  # why: only this test or script needs it
  pipeline.prepare_multiprocessing()
  config = config_lib.load(args.config, rest)
  counts = args.devices or sorted({1, jax.device_count()})
  header = dict(config=config.name, platform=jax.devices()[0].platform,
                device=jax.devices()[0].device_kind, dtype=config.model.dtype,
                input_wh=list(config.data.input_size), jax=jax.__version__)
  print(json.dumps(header), flush=True)
  for n in counts:
    for per_device in args.batch:
      print(json.dumps(bench_step(config, n, per_device, args.steps, args.warmup)), flush=True)
      if args.end_to_end:
        print(json.dumps(bench_end_to_end(config, n, per_device, args.steps, args.warmup)),
              flush=True)


if __name__ == "__main__":
  main()
