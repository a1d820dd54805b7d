"""The evaluation loop: predictions of padded batches -> an evaluator, once per box."""
import numpy as np

from sbpose_jax.evaluators import loop


def _batch(rng, b=5, pad=2):
  center = rng.uniform(100, 300, (b, 2)).astype(np.float32)
  scale = np.stack([np.full(b, 1.2), np.full(b, 1.6)], 1).astype(np.float32)
  mask = np.arange(b) < b - pad
  return dict(image=np.zeros((b, 4, 3, 3), np.uint8), center=center, scale=scale,
              bbox_score=np.ones(b, np.float32), index=np.arange(b, dtype=np.int32), mask=mask)


class _Collect:
  def __init__(self):
    self.parts = []

  def process(self, preds):
    self.parts.append(preds)

  def compute(self, out_dir=None):
    return {"n": float(sum(len(p["index"]) for p in self.parts))}


def test_run_batches_drops_padding_and_keeps_order():
  rng = np.random.default_rng(3)
  batches = [_batch(rng, 4, 0), _batch(rng, 4, 0), _batch(rng, 4, 3)]
  for i, b in enumerate(batches):
    b["index"] = b["index"] + 4 * i

  def predict(batch):
    return np.repeat(batch["index"][:, None, None].astype(np.float32), 17, 1).repeat(3, 2)
  ev = _Collect()
  n = loop.run_batches(predict, batches, ev, progress=False)
  assert n == 9
  idx = np.concatenate([p["index"] for p in ev.parts])
  np.testing.assert_array_equal(idx, np.arange(9))
  for p in ev.parts:
    np.testing.assert_array_equal(p["keypoints"][:, 0, 0], p["index"])
    assert set(p) == {"index", "keypoints", "center", "scale", "bbox_score"}
