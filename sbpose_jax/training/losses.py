"""Target-weighted heatmap MSE, as MMPose 2020's JointsMSELoss (docs/reference.md §4.2).

MMPose 2020: `L = (1/K) sum_k mean_{n,y,x} (w_nk * P - w_nk * T)^2`
= `sum w^2 (P - T)^2 / (N K H W)`.
No 0.5 factor (the MS original has one), the weight enters squared (MMPose >= 0.29 uses it
linearly; identical for the 0/1 weights every seed config uses), and invisible joints still count
in the denominator.

The loss is returned as a sum and a count so that it can be accumulated over steps and devices
before dividing (the mean of per-step means would weight steps, not elements).
"""
from __future__ import annotations

import jax.numpy as jnp


def heatmap_mse(pred: jnp.ndarray, target: jnp.ndarray,
                target_weight: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Summed squared error of weighted heatmaps, and the element count it averages over.

  Args:
    pred: (B, H, W, K) predicted heatmaps (any float dtype; the sum is taken in float32).
    target: (B, H, W, K) Gaussian targets.
    target_weight: (B, K) per-joint weights (0/1 in every seed config).

  Returns:
    (loss_sum, count): float32 scalars; `loss_sum / count` is the MMPose 2020 loss value.
  """
  if pred.shape != target.shape:
    raise ValueError(f"heatmap shapes differ: pred {pred.shape} vs target {target.shape}")
  if target_weight.shape != (pred.shape[0], pred.shape[-1]):
    raise ValueError(f"target_weight shape {target_weight.shape} does not match heatmaps "
                     f"{pred.shape}: expected (B, K)")
  w = target_weight.astype(jnp.float32)[:, None, None, :]
  diff = w * pred.astype(jnp.float32) - w * target.astype(jnp.float32)
  loss_sum = jnp.sum(jnp.square(diff))
  count = jnp.asarray(pred.size, jnp.float32)
  return loss_sum, count
