"""Adam + mmcv warmup/step schedule against direct transcriptions of mmcv and torch."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sbpose_jax.training import optim


def _cfg(**kw):
  c = dict(lr=5e-4, warmup_steps=500, warmup_ratio=1e-3, decay_epochs=(170, 200), decay_factor=0.1)
  c.update(kw)
  return ml_collections.ConfigDict(c)


def _mmcv_lr(i, epoch_steps, base=5e-4, warmup=500, ratio=1e-3, steps=(170, 200), gamma=0.1):
  """mmcv StepLrUpdaterHook(by_epoch=True) + linear warmup by iteration, transcribed."""
  epoch = i // epoch_steps
  exp = sum(1 for s in steps if epoch >= s)
  regular = base * gamma ** exp
  if warmup and i < warmup:
    k = (1 - i / warmup) * (1 - ratio)
    return regular * (1 - k)
  return regular


def test_steps_per_epoch_rounds_up():
  assert optim.steps_per_epoch(149813, 512) == 293
  assert optim.steps_per_epoch(10, 512) == 1
  with pytest.raises(ValueError, match="empty"):
    optim.steps_per_epoch(0, 4)


@pytest.mark.parametrize("epoch_steps", [293, 3])
def test_schedule_matches_mmcv(epoch_steps):
  sched = optim.lr_schedule(_cfg(), epoch_steps)
  steps = [0, 1, 250, 499, 500, 501, 170 * epoch_steps - 1, 170 * epoch_steps,
           200 * epoch_steps - 1, 200 * epoch_steps, 210 * epoch_steps - 1]
  got = np.array([float(sched(s)) for s in steps])
  want = np.array([_mmcv_lr(s, epoch_steps) for s in steps])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_key_values():
  sched = optim.lr_schedule(_cfg(), 293)
  np.testing.assert_allclose(float(sched(0)), 5e-7, rtol=1e-5)
  np.testing.assert_allclose(float(sched(500)), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(sched(170 * 293)), 5e-5, rtol=1e-5)
  np.testing.assert_allclose(float(sched(200 * 293)), 5e-6, rtol=1e-5)


def test_no_warmup_and_no_decay():
  sched = optim.lr_schedule(_cfg(warmup_steps=0, decay_epochs=()), 10)
  assert float(sched(0)) == pytest.approx(5e-4)
  assert float(sched(10_000)) == pytest.approx(5e-4)


def test_adam_matches_torch_adam():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5,)).astype(np.float32)
  grads = rng.normal(size=(6, 5)).astype(np.float32)
  cfg = _cfg(lr=1e-2, warmup_steps=3, decay_epochs=(1,))
  tx, sched = optim.make_optimizer(cfg, epoch_steps=4)
  params = jnp.asarray(w0)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)

  p = torch.nn.Parameter(torch.tensor(w0))
  opt = torch.optim.Adam([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
  for i, g in enumerate(grads):
    for group in opt.param_groups:
      group["lr"] = _mmcv_lr(i, 4, base=1e-2, warmup=3, steps=(1,))
    p.grad = torch.tensor(g)
    opt.step()
  np.testing.assert_allclose(np.asarray(params), p.detach().numpy(), rtol=1e-5, atol=1e-7)
