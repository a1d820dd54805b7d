"""The heatmap loss equals MMPose 2020's JointsMSELoss(use_target_weight=True)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import heatmap_mse_mean
from sbpose_jax.training import losses


def _mmpose_2020_loss(output, target, weight):
  """Direct transcription of mmpose/models/losses/mse_loss.py (2020), NCHW -> per joint loop."""
  b, k = weight.shape
  pred = output.transpose(0, 3, 1, 2).reshape(b, k, -1)
  gt = target.transpose(0, 3, 1, 2).reshape(b, k, -1)
  loss = 0.0
  for j in range(k):
    w = weight[:, j:j + 1]
    loss += np.mean((pred[:, j] * w - gt[:, j] * w) ** 2)  # nn.MSELoss(reduction='mean')
  return loss / k


def _example(seed=0, b=3, h=8, w=6, k=5):
  rng = np.random.default_rng(seed)
  pred = rng.normal(size=(b, h, w, k)).astype(np.float32)
  target = rng.uniform(size=(b, h, w, k)).astype(np.float32)
  weight = (rng.uniform(size=(b, k)) > 0.3).astype(np.float32)
  return pred, target, weight


def test_matches_mmpose_2020_reference():
  pred, target, weight = _example()
  loss_sum, count = losses.heatmap_mse(pred, target, weight)
  assert float(count) == pred.size
  np.testing.assert_allclose(float(loss_sum / count), _mmpose_2020_loss(pred, target, weight),
                             rtol=1e-5)


def test_weight_enters_squared_and_zero_weight_ignores_joint():
  pred, target, _ = _example(b=1, k=2)
  half = np.array([[0.5, 0.0]], np.float32)
  full = np.array([[1.0, 0.0]], np.float32)
  s_half, _ = losses.heatmap_mse(pred, target, half)
  s_full, _ = losses.heatmap_mse(pred, target, full)
  np.testing.assert_allclose(float(s_half), 0.25 * float(s_full), rtol=1e-5)
  # The zero-weight joint contributes nothing however wrong its prediction is.
  pred2 = pred.copy()
  pred2[..., 1] += 100.0
  s_full2, _ = losses.heatmap_mse(pred2, target, full)
  np.testing.assert_allclose(float(s_full2), float(s_full), rtol=1e-6)


def test_sums_and_counts_accumulate_over_batch_splits():
  pred, target, weight = _example(b=4)
  s, c = losses.heatmap_mse(pred, target, weight)
  s1, c1 = losses.heatmap_mse(pred[:1], target[:1], weight[:1])
  s2, c2 = losses.heatmap_mse(pred[1:], target[1:], weight[1:])
  np.testing.assert_allclose(float(s1 + s2), float(s), rtol=1e-5)
  assert float(c1 + c2) == float(c)


def test_bfloat16_predictions_are_summed_in_float32():
  pred, target, weight = _example()
  s32, _ = losses.heatmap_mse(pred, target, weight)
  s16, _ = jax.jit(losses.heatmap_mse)(jnp.asarray(pred, jnp.bfloat16), target, weight)
  assert s16.dtype == jnp.float32
  np.testing.assert_allclose(float(s16), float(s32), rtol=2e-2)


def test_gradient_is_weighted_difference():
  pred, target, weight = _example(b=2, k=3)
  grad = jax.grad(lambda p: heatmap_mse_mean(p, target, weight))(pred)
  expected = 2 * (weight[:, None, None, :] ** 2) * (pred - target) / pred.size
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-9)


def test_shape_mismatch_is_a_clear_error():
  pred, target, weight = _example()
  with pytest.raises(ValueError, match="target_weight shape"):
    losses.heatmap_mse(pred, target, weight[:, :2])
  with pytest.raises(ValueError, match="heatmap shapes differ"):
    losses.heatmap_mse(pred, target[:, :4], weight)
