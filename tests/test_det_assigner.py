"""RTMDet's assigner and losses against the PyTorch transcription of MMDetection
(tests/torch_det_reference.py): random batches and hand-made cases, with padded ground truth."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbpose_jax.training import det_assigner as da
from sbpose_jax.training import det_losses as dl

torch = pytest.importorskip("torch")
ref = pytest.importorskip("torch_det_reference")

IMG = 96
STRIDES = (8, 16, 32)
HW = [(IMG // s, IMG // s) for s in STRIDES]
PRIORS = da.grid_priors(HW, STRIDES)
LEVELS = [h * w for h, w in HW]
G_MAX = 6


def _pred_boxes(rng, b):
  """Boxes around each prior: distances of 0.3-6 strides."""
  d = rng.uniform(0.3, 6.0, (b, len(PRIORS), 4)) * PRIORS[:, 2:3]
  return np.array(da.distance2bbox(PRIORS[:, :2], d), np.float32)


def _t(a):
  return torch.tensor(np.array(a))


@jax.jit
def _assign_and_loss(logits, boxes, gb, gl, gv):
  asg = da.assign_batch(jnp.asarray(PRIORS), boxes, logits, gb, gl, gv)
  return asg, dl.rtmdet_loss(logits, boxes, asg, gb)


def _gt(rng, n, num_classes):
  xy = rng.uniform(0, IMG - 10, (n, 2))
  wh = rng.uniform(6, IMG / 2, (n, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, IMG)], 1).astype(np.float32)
  return boxes, rng.integers(0, num_classes, n)


def _pad(gts, junk=0.0):
  b = len(gts)
  boxes = np.full((b, G_MAX, 4), junk, np.float32)
  labels = np.zeros((b, G_MAX), np.int32)
  valid = np.zeros((b, G_MAX), bool)
  for i, (bx, lb) in enumerate(gts):
    boxes[i, :len(bx)], labels[i, :len(bx)], valid[i, :len(bx)] = bx, lb, True
  return boxes, labels, valid


def _ours(logits, boxes, gts, junk=0.0):
  asg, loss = _assign_and_loss(logits, boxes, *_pad(gts, junk))
  return jax.tree.map(np.asarray, asg), {k: float(v) for k, v in loss.items()}


def _reference(logits, boxes, gts, num_classes):
  t = _t
  gts_t = [(t(b), t(lb).long()) for b, lb in gts]
  loss_cls, loss_bbox, inds, metrics = ref.loss_by_feat(
      t(logits), t(boxes), t(PRIORS), LEVELS, gts_t, num_classes)
  return float(loss_cls), float(loss_bbox), inds.numpy(), metrics.numpy()


def _fill(logits, boxes, gts, rng):
  """Pads a case to B = 4 images with images without people (one compile for every case)."""
  extra = 4 - len(gts)
  c = logits.shape[-1]
  gts = list(gts) + [(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))] * extra
  logits = np.concatenate([logits, rng.normal(-2, 1, (extra, len(PRIORS), c))]).astype(
      np.float32)
  return logits, np.concatenate([boxes, _pred_boxes(rng, extra)]), gts


def _check(logits, boxes, gts, num_classes, junk=0.0):
  logits, boxes, gts = _fill(logits, boxes, gts, np.random.default_rng(99))
  asg, loss = _ours(logits, boxes, gts, junk)
  want_cls, want_bbox, inds, metrics = _reference(logits, boxes, gts, num_classes)
  np.testing.assert_array_equal(asg.fg, inds > 0)
  np.testing.assert_array_equal(asg.gt_index, inds - 1)
  for i, (_, lb) in enumerate(gts):
    want_labels = np.where(inds[i] > 0, lb[np.maximum(inds[i] - 1, 0)] if len(lb) else 0,
                           num_classes)
    np.testing.assert_array_equal(asg.labels[i], want_labels)
  np.testing.assert_allclose(asg.metric, metrics, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss["loss_cls"], want_cls, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(loss["loss_bbox"], want_bbox, rtol=2e-5, atol=1e-6)
  return asg, loss


@pytest.mark.parametrize("seed,num_classes", [(0, 1), (1, 1), (2, 3), (3, 1)])
def test_random_batches_match_mmdetection(seed, num_classes):
  rng = np.random.default_rng(seed)
  counts = [0, 1, 3, G_MAX]
  gts = [_gt(rng, n, num_classes) for n in counts]
  logits = rng.normal(-2, 2, (len(gts), len(PRIORS), num_classes)).astype(np.float32)
  asg, _ = _check(logits, _pred_boxes(rng, len(gts)), gts, num_classes)
  assert not asg.fg[0].any() and asg.fg[1:].any(1).all()


def test_padding_junk_changes_nothing():
  rng = np.random.default_rng(5)
  gts = [_gt(rng, 2, 1), _gt(rng, 4, 1)]
  logits, boxes, gts = _fill(rng.normal(-1, 1, (2, len(PRIORS), 1)).astype(np.float32),
                             _pred_boxes(rng, 2), gts, rng)
  clean, loss = _ours(logits, boxes, gts)
  for junk in (1e4, -50.0, np.nan):
    got, got_loss = _ours(logits, boxes, gts, junk)
    for a, b in zip(clean, got):
      np.testing.assert_array_equal(a, b)
    assert got_loss == loss


def test_empty_ground_truth_is_all_background():
  rng = np.random.default_rng(6)
  gts = [(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))] * 2
  logits = rng.normal(-1, 1, (2, len(PRIORS), 1)).astype(np.float32)
  asg, loss = _check(logits, _pred_boxes(rng, 2), gts, 1)
  assert not asg.fg.any() and (asg.labels == 1).all() and (asg.gt_index == -1).all()
  assert loss["loss_bbox"] == 0 and loss["avg_factor"] == 1 and loss["loss_cls"] > 0


def test_box_between_prior_centres():
  """A GT box containing no prior centre: alone it gets nothing (no valid prior); beside a big
  box it takes positives from the priors inside the big one, as in MMDetection."""
  rng = np.random.default_rng(7)
  tiny = np.array([[1.0, 1.0, 7.0, 7.0]], np.float32)               # between centres 0 and 8
  big = np.array([[0.0, 0.0, 60.0, 60.0]], np.float32)
  logits = rng.normal(-1, 1, (2, len(PRIORS), 1)).astype(np.float32)
  boxes = _pred_boxes(rng, 2)
  boxes[:, :20] = [0.5, 0.5, 8.0, 8.0]                             # near the tiny box
  gts = [(tiny, np.zeros(1, np.int64)), (np.concatenate([tiny, big]), np.zeros(2, np.int64))]
  asg, _ = _check(logits, boxes, gts, 1)
  assert not asg.fg[0].any()
  assert (asg.gt_index[1] == 0).any() and (asg.gt_index[1] == 1).any()


def test_ties_duplicate_boxes_go_to_the_first():
  """Two identical GT boxes: equal costs everywhere; every prior both choose goes to the first
  (torch.min and jnp.argmin return the first minimum)."""
  rng = np.random.default_rng(8)
  box = np.array([[20.0, 16.0, 70.0, 90.0]], np.float32)
  logits = rng.normal(-1, 1, (1, len(PRIORS), 1)).astype(np.float32)
  gts = [(np.concatenate([box, box]), np.zeros(2, np.int64))]
  asg, _ = _check(logits, _pred_boxes(rng, 1), gts, 1)
  assert asg.fg.any() and (asg.gt_index[asg.fg] == 0).all()


def test_prior_valid_excludes_priors():
  rng = np.random.default_rng(9)
  gts = [(np.array([[10, 10, 60, 60], [50, 20, 90, 90], [5, 50, 40, 95]], np.float32),
          np.zeros(3, np.int64))]
  gb, gl, gv = _pad(gts)
  boxes, logits = _pred_boxes(rng, 1)[0], rng.normal(0, 1, (len(PRIORS), 1)).astype(np.float32)
  inside = PRIORS[:, 0] < 48
  part = jax.jit(da.assign)(PRIORS, boxes, logits, gb[0], gl[0], gv[0], jnp.asarray(inside))
  assert not np.asarray(part.fg)[~inside].any()
  # the same as MMDetection run on the inside priors only
  t = _t
  inds, _, _ = ref.DynamicSoftLabelAssigner().assign(
      t(PRIORS[inside]), t(boxes[inside]), t(logits[inside]), t(gts[0][0]), t(gts[0][1]))
  np.testing.assert_array_equal(np.asarray(part.gt_index)[inside], inds.numpy() - 1)
  assert np.asarray(part.fg).sum() > 0


def test_quality_focal_and_giou_losses_elementwise():
  rng = np.random.default_rng(10)
  logits = rng.normal(0, 3, (50, 4)).astype(np.float32)
  labels = rng.integers(0, 5, 50)                                    # 4 = background
  score = rng.uniform(0, 1, 50).astype(np.float32)
  t = _t
  want = ref.quality_focal_loss(t(logits), (t(labels), t(score))).numpy()
  got = np.asarray(jax.jit(dl.quality_focal_loss)(logits, labels, score))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  a, b = (np.concatenate([xy, xy + rng.uniform(1, 30, (50, 2))], 1).astype(np.float32)
          for xy in rng.uniform(0, 50, (2, 50, 2)))
  a[0] = b[0]                                                        # identical: loss 0
  a[1] = [10, 10, 10, 10]                                            # degenerate: eps clamps
  want = 1 - ref.bbox_overlaps(t(a), t(b), mode="giou", is_aligned=True).numpy()
  got = np.asarray(jax.jit(dl.giou_loss)(a, b))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert abs(got[0]) < 1e-6
  iou = np.asarray(jax.jit(da.box_iou)(a, b))
  np.testing.assert_allclose(iou, ref.bbox_overlaps(t(a), t(b)).numpy(), rtol=1e-5, atol=1e-6)


def test_num_replicas_is_the_mean_over_replicas():
  """2 replicas of 2 images each: MMDetection divides each replica's sum by the mean over
  replicas of the metric sums (clamped at 1) and DDP averages: one global batch, num_replicas=2,
  gives that mean."""
  rng = np.random.default_rng(11)
  gts = [_gt(rng, 2, 1), _gt(rng, 3, 1), _gt(rng, 1, 1), _gt(rng, 4, 1)]
  logits = rng.normal(-1, 1, (4, len(PRIORS), 1)).astype(np.float32)
  boxes = _pred_boxes(rng, 4)
  gb = _pad(gts)[0]
  asg, _ = _ours(logits, boxes, gts)
  loss = jax.jit(dl.rtmdet_loss, static_argnames="num_replicas")
  whole = loss(logits, boxes, asg, gb, num_replicas=2)
  sums, metrics = [], []
  for sl in (slice(0, 2), slice(2, 4)):
    part = loss(logits[sl], boxes[sl], jax.tree.map(lambda x, s=sl: x[s], asg), gb[sl])
    sums.append(float(part["loss"]) * float(part["avg_factor"]))
    metrics.append(float(asg.metric[sl].sum()))
  want = sum(sums) / max(sum(metrics) / 2, 1) / 2
  np.testing.assert_allclose(float(whole["loss"]), want, rtol=1e-5)


def test_one_compile_for_every_number_of_boxes_and_finite_gradients():
  traces = []

  def loss_fn(logits, boxes, gb, gl, gv):
    traces.append(1)
    asg = da.assign_batch(PRIORS, boxes, logits, gb, gl, gv)
    return dl.rtmdet_loss(logits, boxes, asg, gb)["loss"]

  step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
  rng = np.random.default_rng(12)
  for counts in ([0, 0], [1, 5], [G_MAX, 2]):
    gb, gl, gv = _pad([_gt(rng, n, 1) for n in counts])
    logits = rng.normal(-1, 1, (2, len(PRIORS), 1)).astype(np.float32)
    value, (g_logits, g_boxes) = step(logits, _pred_boxes(rng, 2), gb, gl, gv)
    assert np.isfinite(value) and np.isfinite(g_logits).all() and np.isfinite(g_boxes).all()
    if sum(counts):
      assert np.abs(g_boxes).sum() > 0
  # the loss trains: gradient steps on the predictions themselves lower it (same compiled step)
  boxes, first = _pred_boxes(rng, 2), None
  for _ in range(20):
    value, (g_logits, g_boxes) = step(logits, boxes, gb, gl, gv)
    first = value if first is None else first
    logits, boxes = logits - 0.5 * g_logits, boxes - 20.0 * g_boxes
  assert value < 0.7 * first
  assert len(traces) == 1


def test_grid_priors_order():
  p = da.grid_priors([(2, 3), (1, 2)], [8, 16])
  np.testing.assert_array_equal(p[:4], [[0, 0, 8, 8], [8, 0, 8, 8], [16, 0, 8, 8], [0, 8, 8, 8]])
  np.testing.assert_array_equal(p[6:], [[0, 0, 16, 16], [16, 0, 16, 16]])
