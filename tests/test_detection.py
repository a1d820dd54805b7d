"""The detector's test time (inference/detection.py, inference/nms.py) against the independent
PyTorch implementation of MMDetection's (tests/torch_rtmdet_reference.py), on the fixture
images, with weights whose scores pass the threshold so that NMS has overlapping boxes to
resolve."""
import dataclasses
import functools
import math
import pathlib

import cv2
import jax
import numpy as np
import pytest

from sbpose_jax.inference import detection
from sbpose_jax.inference import nms
from sbpose_jax.models import rtmdet
from sbpose_jax.weights import rtmdet_conversion

torch = pytest.importorskip("torch")
ref = pytest.importorskip("torch_rtmdet_reference")

TINY_WIDEN = 0.125
SIZE = {"nano": 320, "m": 640}  # the published input sizes


def _images(fixtures_dir: pathlib.Path) -> list[np.ndarray]:
  """Fixture photos (BGR as cv2 reads them, the way MMDetection loads them), plus a small and
  a tall thin image."""
  paths = sorted((fixtures_dir / "coco").glob("*.jpg"))[:3] + sorted(
      (fixtures_dir / "crowdpose").glob("*.jpg"))[:1]
  images = [cv2.imread(str(p)) for p in paths]
  return images + [images[0][:23, :17].copy(), cv2.resize(images[1], (40, 300))]


def _calibrate(torch_model, images, size: int, passing: float = 0.08):
  """Rescales each level's predictions on `images` to a trained detector's ranges: scores from
  0.05 (the top `passing` fraction of the priors pass) to 0.95, box
  sides of about 4-12 strides. Random weights otherwise give near-flat or saturated scores
  (whose order is float noise) and boxes thousands of pixels wide (where float32 itself, in
  torch as here, is off by more than 1e-3 px)."""
  x, _ = ref.preprocess(images, size)
  ref.fit_batchnorm(torch_model, x)
  head = torch_model.bbox_head
  raw = {}
  hooks = [conv.register_forward_hook(lambda mod, inp, out, key=key: raw.__setitem__(key, out))
           for key, conv in [(("cls", n), c) for n, c in enumerate(head.rtm_cls)]
           + [(("reg", n), c) for n, c in enumerate(head.rtm_reg)]]
  with torch.no_grad():
    torch_model(x)
    for hook in hooks:
      hook.remove()
    for (branch, n), out in raw.items():
      conv = (head.rtm_cls if branch == "cls" else head.rtm_reg)[n]
      v = out - conv.bias.view(1, -1, 1, 1)
      if branch == "cls":  # the passing logits span [logit(0.05), logit(0.05) + 6]
        cut = float(torch.quantile(v.flatten(), 1 - passing))
        scale = 6.0 / (float(v.max()) - cut)
        conv.bias.fill_(-math.log(1 / 0.05 - 1) - cut * scale)
      else:  # logits of std 0.4 around log(4) (exp_on_reg) or 4, times the stride
        scale = 0.4 / float(v.std())
        conv.bias.copy_(-v.mean((0, 2, 3)) * scale + (math.log(4.0) if head.exp_on_reg else 4.0))
      conv.weight.mul_(scale)
  return torch_model


@functools.lru_cache(maxsize=2)
def _models(size: str, fixtures: str):
  settings = dataclasses.replace(rtmdet.PERSON_SETTINGS, input_size=SIZE[size], nms_pre=30)
  images = _images(pathlib.Path(fixtures))
  torch_model = _calibrate(ref.randomize(ref.build(size, widen=TINY_WIDEN), seed=3), images,
                           settings.input_size)
  sd = {k: v.numpy() for k, v in torch_model.state_dict().items()
        if not k.endswith("num_batches_tracked")}
  arch = rtmdet_conversion.infer_arch(sd)
  want = ref.detect(torch_model, images, settings.input_size,
                    dict(ref.PERSON_CFG, nms_pre=settings.nms_pre))
  return want, rtmdet_conversion.to_variables(sd, arch), arch, settings


@pytest.fixture(params=["nano", "m"])
def models(request, fixtures_dir):
  """(the reference's detections on `_images`, variables, arch, settings) of a tiny nano- or
  m-shaped RTMDet whose scores pass the threshold on the fixture images (nms_pre 30: the
  per-level top k binds). Built once per size."""
  return _models(request.param, str(fixtures_dir))


def test_prepare_is_mmcv_imrescale_and_impad_bit_for_bit(fixtures_dir):
  settings = rtmdet.PERSON_SETTINGS
  for img in _images(fixtures_dir):
    want, scale = ref.imrescale(img, 640)
    got = detection.prepare(img, settings)
    np.testing.assert_array_equal(got.padded, ref.impad(want, 640))
    assert tuple(got.valid_hw) == want.shape[:2] and tuple(got.scale_factor) == scale


def test_prepare_refuses_in_one_line():
  with pytest.raises(ValueError, match=r"a 1x2000 image is 0x640 pixels .* too thin"):
    detection.prepare(np.zeros((1, 2000, 3), np.uint8), rtmdet.PERSON_SETTINGS)
  with pytest.raises(ValueError, match="HxWx3 uint8"):
    detection.prepare(np.zeros((5, 5), np.uint8), rtmdet.PERSON_SETTINGS)
  # Smaller than a stride: scaled up to the input size, as MMDetection does.
  small = detection.prepare(np.full((3, 2, 3), 7, np.uint8), rtmdet.PERSON_SETTINGS)
  assert tuple(small.valid_hw) == (640, 427)


def test_priors_are_mlvl_point_generator():
  want = ref.grid_priors([(40, 40), (20, 20), (10, 10)])
  for w, g in zip(want, detection.grid_priors(320)):
    np.testing.assert_array_equal(g, w.numpy())


def test_nms_equals_mmcv_kernel():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 100, (300, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (300, 2))], 1).astype(np.float32)
  scores = rng.uniform(size=300).astype(np.float32)
  for thr in (0.3, 0.6, 0.9):
    want = ref.nms_cpu(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
    np.testing.assert_array_equal(nms.nms(boxes, scores, thr), want)
    valid = np.ones(300, bool)
    valid[::7] = False
    keep, count = jax.jit(nms.nms_fixed, static_argnums=(3, 4))(boxes, scores, valid, thr, 50)
    host = np.flatnonzero(valid)[nms.nms(boxes[valid], scores[valid], thr)][:50]
    assert int(count) == len(host)
    np.testing.assert_array_equal(np.asarray(keep)[:int(count)], host)
    assert (np.asarray(keep)[int(count):] == -1).all()


def test_batched_nms_keeps_classes_apart():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10.5]], np.float32)
  scores = np.array([0.9, 0.8], np.float32)
  assert list(nms.batched_nms(boxes, scores, np.array([0, 0]), 0.5)) == [0]
  assert list(nms.batched_nms(boxes, scores, np.array([0, 1]), 0.5)) == [0, 1]


def _same_boxes(a: np.ndarray, b: np.ndarray, tol: float = 1e-3) -> bool:
  """The same boxes within tol, in any order (a one-to-one match)."""
  if len(a) != len(b):
    return False
  free = np.ones(len(b), bool)
  for box in a:
    hit = np.flatnonzero(free & (np.abs(b - box).max(1) <= tol))
    if not len(hit):
      return False
    free[hit[0]] = False
  return True


def _near_threshold_pairs(boxes: np.ndarray, thr: float, tol: float = 1e-4) -> bool:
  for i in range(len(boxes)):
    if (np.abs(nms.iou_one_to_many(boxes[i], boxes) - thr) < tol).any():
      return True
  return False


def test_detections_equal_mmdetection(models, fixtures_dir):
  """Before NMS: the same candidates, boxes within 1e-3 px, scores within 1e-5; after NMS the
  same boxes in the same order (unless an IoU lies within 1e-4 of the threshold)."""
  want, variables, arch, settings = models
  images = _images(fixtures_dir)
  prepared = [detection.prepare(img, settings) for img in images]
  spec = detection.DetectSpec(arch, settings, "float32")
  args = (variables, np.stack([p.padded for p in prepared]),
          np.stack([p.valid_hw for p in prepared]), np.stack([p.scale_factor for p in prepared]))
  cand = detection.candidates(*args, spec)
  cand, (boxes, scores, count) = jax.device_get((cand, detection.select(cand, spec)))
  total_kept = 0
  for i, w in enumerate(want):
    valid = cand["valid"][i]
    got_index = cand["index"][i][valid]
    order = np.argsort(got_index)
    want_order = np.argsort(w["pre_index"].numpy())
    # The reference's candidates are before min_bbox_size: drop its empty boxes the same way.
    wb = w["pre_bboxes"].numpy()[want_order]
    keep_w = ((wb[:, 2:] - wb[:, :2]) > 0).all(1)
    np.testing.assert_array_equal(got_index[order], w["pre_index"].numpy()[want_order][keep_w])
    np.testing.assert_allclose(cand["boxes"][i][valid][order], wb[keep_w], atol=1e-3, rtol=0)
    np.testing.assert_allclose(cand["scores"][i][valid][order],
                               w["pre_scores"].numpy()[want_order][keep_w], atol=1e-5, rtol=0)
    n = int(count[i])
    if not _same_boxes(boxes[i, :n], w["bboxes"].numpy()):
      assert _near_threshold_pairs(wb[keep_w], settings.iou_thr), f"image {i}: NMS differs"
      continue
    # Descending scores; boxes whose scores agree to 1e-5 may come in either order.
    np.testing.assert_allclose(scores[i, :n], w["scores"].numpy(), atol=1e-5, rtol=0)
    total_kept += n
  # Real work for NMS: boxes kept in every image, and a third of the candidates suppressed.
  assert total_kept >= len(images) and cand["valid"].sum() > 1.5 * total_kept


def test_detector_object_and_empty_images(models, fixtures_dir):
  """Detector(images) gives the reference's boxes for RGB input (and the BGR flag), in one
  compiled batch; weights that find nobody give empty results, not errors."""
  want, variables, arch, settings = models
  images = _images(fixtures_dir)
  meta = rtmdet_conversion.DetectorMeta(arch=arch, settings=settings)
  det = detection.Detector(variables, meta, batch_sizes=(len(images),))
  got = det([img[..., ::-1] for img in images])
  assert len(got) == len(images)
  for g, w in zip(got, want):
    assert _same_boxes(g.boxes, w["bboxes"].numpy())
  again = det(images[:2], colour="bgr")
  np.testing.assert_array_equal(again[1].boxes, got[1].boxes)
  # The same program with every classifier bias at -30: no score passes anywhere.
  quiet = jax.tree_util.tree_map_with_path(
      lambda path, v: v - 30.0 if "rtm_cls" in jax.tree_util.keystr(path) and v.ndim == 1 else v,
      variables)
  nobody = detection.Detector(quiet, meta, batch_sizes=(len(images),))(images)
  assert all(n.boxes.shape == (0, 4) and n.scores.shape == (0,) for n in nobody)


def test_load_refuses_a_pose_model(tmp_path):
  (tmp_path / "pose").mkdir()
  (tmp_path / "pose" / "meta.json").write_text('{"depth": 50, "num_joints": 17}')
  with pytest.raises(ValueError, match=r"a pose model \(ResNet-50, 17 joints\), not a person "
                                       r"detector"):
    detection.Detector.load(tmp_path / "pose")
