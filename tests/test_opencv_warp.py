"""The crops are OpenCV 4.x's fixed-point warpAffine, the arithmetic of the reference crops.

`tests/opencv4_warp.py` models OpenCV 4's bilinear warp in numpy; the crops the pipeline makes
(`TopDownAffine`, through `cv2.warpAffine`) must equal it bit for bit. Under OpenCV 5, which
interpolates in floating point, a few percent of the values differ and these tests fail.
"""
import json

import cv2
import numpy as np
import pytest

import opencv4_warp  # noqa: E402  (tests/ is on sys.path under pytest)
from sbpose_jax import geometry
from sbpose_jax.data import transforms

INPUT_WH = (192, 256)


def test_bilinear_table_is_opencv4s():
  """Products of (1 − t, t) in units of 2^-15; the (0, 0) entry saturates and is fixed up."""
  t = opencv4_warp.TABLE.reshape(32, 32, 4)
  i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  want = np.stack([(32 - i) * (32 - j), (32 - i) * j, i * (32 - j), i * j], -1) * 32
  want[0, 0] = (32767, 0, 0, 1)
  np.testing.assert_array_equal(t, want)


def _coco_style_boxes(fixtures_dir):
  for folder, name in (("coco", "test_coco.json"), ("crowdpose", "test_crowdpose.json"),
                       ("aic", "test_aic.json"), ("ochuman", "test_ochuman.json")):
    data = json.loads((fixtures_dir / folder / name).read_text())
    files = {im["id"]: im["file_name"] for im in data["images"]}
    for ann in data["annotations"]:
      yield fixtures_dir / folder / files[ann["image_id"]], np.asarray(ann["bbox"], np.float64)


def _crops(fixtures_dir):
  """(image, centre, scale, rotation, flip) of real boxes: COCO-style datasets and MPII."""
  rng = np.random.default_rng(0)
  images = {}

  def load(path):
    if path not in images:
      images[path] = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return images[path]
  for path, box in _coco_style_boxes(fixtures_dir):
    c, s = geometry.box_to_center_scale(box, INPUT_WH[0] / INPUT_WH[1])
    yield load(path), c, s, 0.0, False
    yield load(path), c, s * np.float32(rng.uniform(0.5, 1.5)), rng.uniform(-80, 80), True
  for a in json.loads((fixtures_dir / "mpii" / "test_mpii.json").read_text()):
    c = np.asarray(a["center"], np.float64) + [0.0, 15 * a["scale"]] - 1
    s = np.full(2, a["scale"] * 1.25)
    yield load(fixtures_dir / "mpii" / a["image"]), c, s, rng.uniform(-40, 40), False


def test_crops_are_opencv4_fixed_point(fixtures_dir):
  """TopDownAffine's crops (plain, scaled, rotated, flip folded) equal the OpenCV 4 model."""
  if int(cv2.__version__.split(".")[0]) != 4:
    pytest.fail(f"OpenCV {cv2.__version__} is installed; the reference crops need OpenCV 4.x "
                "(pyproject.toml pins opencv-python-headless<5)")
  affine = transforms.TopDownAffine(INPUT_WH)
  n = 0
  for image, center, scale, rot, flip in _crops(fixtures_dir):
    el = {"image": image, "center": center, "scale": scale, "rotation": rot,
          "flip_pending": flip}
    crop = affine.map(el)["image"]
    matrix = geometry.get_affine_transform(center, scale, rot, INPUT_WH)
    if flip:
      matrix = geometry.fold_flip(matrix, image.shape[1])
    np.testing.assert_array_equal(crop, opencv4_warp.warp_affine(image, matrix, INPUT_WH))
    n += 1
  assert n >= 40
