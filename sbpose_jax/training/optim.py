"""Adam with mmcv's linear warmup and epoch-step decay (docs/reference.md §7.1).

mmcv semantics, with `i` the 0-based iteration (optax's update count) and
`e = i // steps_per_epoch`:
  regular(e) = lr * decay_factor ** #{d in decay_epochs : d <= e}
  lr(i)      = regular(e) * (1 - (1 - i / warmup_steps) * (1 - warmup_ratio))   if i < warmup_steps
             = regular(e)                                                       otherwise
So the first step runs at lr * warmup_ratio, and COCO's decays land at the starts of epochs
170 and 200 (0-based). Adam uses PyTorch's defaults (beta 0.9/0.999, eps 1e-8), no weight decay.
"""
from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp
import ml_collections
import optax


def steps_per_epoch(num_instances: int, global_batch: int) -> int:
  """Iterations per epoch: ceil(N / global batch), as a PyTorch loader with drop_last=False."""
  if num_instances <= 0:
    raise ValueError(f"the training set is empty ({num_instances} instances)")
  if global_batch <= 0:
    raise ValueError(f"global batch must be positive, got {global_batch}")
  return max(1, math.ceil(num_instances / global_batch))


def lr_schedule(optim_cfg: ml_collections.ConfigDict,
                epoch_steps: int) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """Returns `lr(step)`, jittable, for the `optim.*` fields of a config.

  Args:
    optim_cfg: `lr`, `warmup_steps`, `warmup_ratio`, `decay_epochs`, `decay_factor`.
    epoch_steps: iterations per epoch (`steps_per_epoch`).
  """
  if epoch_steps <= 0:
    raise ValueError(f"steps per epoch must be positive, got {epoch_steps}")
  base = float(optim_cfg.lr)
  warmup = int(optim_cfg.warmup_steps)
  ratio = float(optim_cfg.warmup_ratio)
  decay_epochs = tuple(int(e) for e in optim_cfg.decay_epochs)
  factor = float(optim_cfg.decay_factor)

  def schedule(count):
    count = jnp.asarray(count, jnp.int32)
    epoch = count // epoch_steps
    num_decays = sum((epoch >= e).astype(jnp.int32) for e in decay_epochs) if decay_epochs else 0
    regular = base * jnp.power(factor, num_decays).astype(jnp.float32)
    if warmup <= 0:
      return regular
    # 1 - (1 - i/W)(1 - r) rewritten as r + (1 - r) i/W: no float32 cancellation near i = 0.
    factor_i = ratio + (1.0 - ratio) * (count.astype(jnp.float32) / warmup)
    return jnp.where(count < warmup, regular * factor_i, regular)

  return schedule


def make_optimizer(optim_cfg: ml_collections.ConfigDict, epoch_steps: int
                   ) -> tuple[optax.GradientTransformation, Callable[[jnp.ndarray], jnp.ndarray]]:
  """Adam (PyTorch defaults, no weight decay) on `lr_schedule`; returns (tx, schedule)."""
  schedule = lr_schedule(optim_cfg, epoch_steps)
  tx = optax.adam(learning_rate=schedule, b1=0.9, b2=0.999, eps=1e-8)
  return tx, schedule
