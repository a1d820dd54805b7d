"""Export: the export-friendly network form, StableHLO and ONNX files equal to JAX, refusals."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbpose_jax import PoseEstimator, exporting, models

from sbpose_jax.commands import export
from test_api import save_tiny
from test_evaluate import ref_boxes

try:
  import flatbuffers  # noqa: F401  (jax.export serialization)
  HAS_FLATBUFFERS = True
except ImportError:
  HAS_FLATBUFFERS = False
needs_flatbuffers = pytest.mark.skipif(not HAS_FLATBUFFERS, reason="flatbuffers not installed")
FAST_COMPILE = {"xla_llvm_disable_expensive_passes": True, "xla_backend_optimization_level": 0}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _perturbed(variables):
  return jax.tree.map(lambda v: v + 0.05 * jnp.cos(jnp.arange(v.size).reshape(v.shape)),
                      variables)


@pytest.mark.parametrize("impl", ["transpose", "subpixel"])
def test_export_form_is_the_training_form(impl):
  # Same variables, same function: pad + VALID pool and the lax dilated deconvolution (the
  # ONNX tests below prove it again end to end, ResNet-50 topology included).
  model = models.PoseResNet(depth=18, num_joints=5, width=4, deconv_filters=(8, 8, 8),
                            deconv_kernels=(4, 3, 2), deconv_impl=impl)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 32, 3)), jnp.float32)

  def run(model, x):
    return jax.jit(model.apply).lower(variables, x).compile(FAST_COMPILE)(variables, x)
  variables = jax.jit(lambda x: _perturbed(model.init(jax.random.key(1), x))).lower(x).compile(
      FAST_COMPILE)(x)
  want = run(model, x)
  got = run(models.export_form(model), x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_padded_max_pool_is_the_windowed_one():
  from sbpose_jax.models import resnet
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 7, 3)) - 3.0, jnp.float32)
  want = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
  np.testing.assert_array_equal(resnet.max_pool_3x3_s2(x, "pad"), want)
  with pytest.raises(ValueError, match="max-pool impl"):
    resnet.max_pool_3x3_s2(x, "avg")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return save_tiny(tmp_path_factory.mktemp("models") / "tiny_64x48")


@pytest.fixture(scope="module")
def fixture_crops(tiny):
  """Crops of the COCO fixture's GT boxes (uint8 RGB), as the API makes them."""
  from conftest import FIXTURES
  if not FIXTURES.is_dir():
    pytest.skip("../shared/fixtures is absent")
  fixtures_dir = FIXTURES
  est = PoseEstimator.load(tiny)
  crops = []
  for _, name, box, _ in ref_boxes(fixtures_dir, None):
    crops.append(est.crops(est_read(fixtures_dir / "coco" / name), [box])[0])
  return np.concatenate(crops)


def est_read(path):
  from sbpose_jax import api
  return api.read_image(path)


def _reference(model_dir, coords):
  est = PoseEstimator.load(model_dir)
  return jax.jit(exporting.keypoints_function(est.model, est.variables, est.settings, est.input_wh,
                                           coords))


@pytest.fixture(scope="module")
def stablehlo_file(tiny, tmp_path_factory):
  pytest.importorskip("flatbuffers")   # jax.export serialization needs it
  out = tmp_path_factory.mktemp("exports") / "tiny.stablehlo"
  export.main(["--checkpoint", str(tiny), "--format", "stablehlo", "--out", str(out)])
  return out


def test_stablehlo_equals_jax_on_fixture_crops(tiny, stablehlo_file, fixture_crops):
  run, desc = exporting.load_exported(stablehlo_file)
  assert desc["coords"] == "image" and desc["input_size"] == [48, 64]
  assert desc["model_colour_order"] == "bgr" and desc["input_colour_order"] == "rgb"
  assert len(desc["joint_names"]) == 17 and [1, 2] in desc["flip_pairs"] and desc["skeleton"]
  check = exporting.compare(run, _reference(tiny, "image"), fixture_crops, "image", (1, 3, 17))
  assert check["max_dx_px"] <= 1e-3 and check["max_dscore"] <= 1e-4


@needs_flatbuffers
def test_stablehlo_crop_coords(tiny, tmp_path, fixture_crops):
  out = tmp_path / "crop.stablehlo"
  desc = export.export_model(tiny, "stablehlo", out, coords="crop", flip=False)
  assert desc["coords"] == "crop" and not desc["flip_test"]
  run, _ = exporting.load_exported(out)
  est = PoseEstimator.load(tiny, flip=False)
  ref = jax.jit(exporting.keypoints_function(est.model, est.variables, est.settings, est.input_wh,
                                          "crop"))
  check = exporting.compare(run, ref, fixture_crops, "crop", (1, 3, 17))
  assert check["max_dx_px"] <= 1e-3 and check["max_dscore"] <= 1e-4
  # The API converts crop pixels to image pixels itself.
  image = est_read(_fixture_image())
  boxes = [[10, 20, 200, 300], [50, 60, 80, 200]]
  np.testing.assert_allclose(PoseEstimator.load(out)(image, boxes).keypoints,
                             est(image, boxes).keypoints, atol=2e-3)


def _fixture_image():
  from conftest import FIXTURES
  return FIXTURES / "coco" / "000000196141.jpg"


def test_stablehlo_in_a_fresh_process(tiny, stablehlo_file, fixtures_dir):
  boxes = [[100, 50, 120, 300], [300, 40, 100, 250], [5, 5, 50, 50]]
  code = (f"import json, sys; sys.path.insert(0, {REPO!r}); from sbpose_jax import PoseEstimator;"
          f"r = PoseEstimator.load({str(stablehlo_file)!r})({str(_fixture_image())!r}, {boxes});"
          "print(json.dumps([r.keypoints.tolist(), r.scores.tolist()]))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  kp, scores = json.loads(out.stdout.strip().splitlines()[-1])
  want = PoseEstimator.load(tiny)(_fixture_image(), boxes)
  px = np.asarray(boxes)[:, 2:].max(1) * 1.25 / 48      # image px per crop px (upper bound)
  assert np.max(np.abs(np.asarray(kp) - want.keypoints) / px[:, None, None]) <= 1e-3
  np.testing.assert_allclose(scores, want.scores, atol=1e-4)


def test_refusals(tiny, stablehlo_file, tmp_path):
  data = stablehlo_file.read_bytes()
  desc = json.loads(exporting.sidecar_path(stablehlo_file).read_text())

  def place(name, payload, fix_sha=False):
    path = tmp_path / name
    path.write_bytes(payload)
    d = dict(desc, sha256=exporting.sha256(payload)) if fix_sha else desc
    exporting.sidecar_path(path).write_text(json.dumps(d))
    return path

  with pytest.raises(ValueError, match="sha256 differs"):
    PoseEstimator.load(place("damaged.stablehlo", data[:len(data) // 2]))
  with pytest.raises(ValueError, match="not a serialized jax.export module"):
    PoseEstimator.load(place("garbage.stablehlo", b"\x00garbage" * 100, fix_sha=True))
  # Another architecture (14 joints, ResNet-34 topology) behind this model's description.
  other = save_tiny(tmp_path / "aic", depth=34, num_joints=14, dataset="aic")
  other_file = tmp_path / "aic.stablehlo"
  export.export_model(other, "stablehlo", other_file, flip=False)
  with pytest.raises(ValueError, match="replaced by another export"):
    PoseEstimator.load(place("swapped.stablehlo", other_file.read_bytes()))
  with pytest.raises(ValueError, match="describes 48x64 crops and 17 joints"):
    PoseEstimator.load(place("relabelled.stablehlo", other_file.read_bytes(), fix_sha=True))
  (tmp_path / "lonely.stablehlo").write_bytes(data)
  with pytest.raises(FileNotFoundError, match="lonely.stablehlo.json"):
    PoseEstimator.load(tmp_path / "lonely.stablehlo")


@needs_flatbuffers
def test_a_mismatching_export_is_not_written(tiny, tmp_path, monkeypatch):
  real = exporting.keypoints_function

  def off_by_a_pixel(model, *args):
    fn = real(model, *args)
    if model.pool_impl == "pad":      # only the exported form, not the reference
      return lambda *a: (fn(*a)[0] + 1.0, fn(*a)[1])
    return fn
  monkeypatch.setattr(exporting, "keypoints_function", off_by_a_pixel)
  out = tmp_path / "bad.stablehlo"
  with pytest.raises(SystemExit):
    export.main(["--checkpoint", str(tiny), "--format", "stablehlo", "--out", str(out),
                 "--no-flip"])
  assert not out.exists() and not exporting.sidecar_path(out).exists()


def test_onnx_dark_is_refused(tiny, tmp_path):
  with pytest.raises(ValueError, match="DARK"):
    export.export_model(tiny, "onnx", tmp_path / "x.onnx", decode="unbiased")


# ------------------------------------------------------------------------------------- ONNX

ONNX_RUN = """
import json, sys
sys.modules["jax"] = None              # prove that the ONNX file needs no JAX
import numpy as np, onnxruntime as ort
path = sys.argv[1]
desc = json.load(open(path + ".json"))
args = [np.load(sys.argv[2])[k] for k in ("crops", "center", "scale")[:len(desc["inputs"])]]
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
kp, sc = sess.run(["keypoints", "scores"], dict(zip([i["name"] for i in desc["inputs"]], args)))
np.savez(sys.argv[3], keypoints=kp, scores=sc)
"""


@pytest.mark.parametrize("depth", [18, 50])
def test_onnx_equals_jax_without_jax(depth, tiny, tmp_path, fixture_crops):
  pytest.importorskip("jax2onnx")
  pytest.importorskip("onnxruntime")
  model_dir = tiny if depth == 18 else save_tiny(tmp_path / "res50_64x48", depth=50)
  out = tmp_path / f"res{depth}.onnx"
  desc = export.export_model(model_dir, "onnx", out)
  assert desc["check"]["max_dx_px"] <= 1e-3 and desc["onnx_opset"] == 17
  ref = _reference(model_dir, "image")
  for b in (1, 3, 17):
    args = exporting.check_args(np.resize(fixture_crops, (b,) + fixture_crops.shape[1:]), "image",
                             seed=b)
    np.savez(tmp_path / "in.npz", crops=args[0], center=args[1], scale=args[2])
    subprocess.run([sys.executable, "-c", ONNX_RUN, str(out), str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npz")], check=True, cwd=tmp_path)
    got = np.load(tmp_path / "out.npz")
    want = [np.asarray(a) for a in ref(*args)]
    px = args[2].astype(np.float64) * 200 / 48
    assert np.max(np.abs(got["keypoints"] - want[0]) / px[:, None, :]) <= 1e-3
    assert np.max(np.abs(got["scores"] - want[1])) <= 1e-4
  if depth == 18:   # PoseEstimator runs ONNX files too (through onnxruntime)
    boxes = [[100, 50, 120, 300], [300, 40, 100, 250]]
    got = PoseEstimator.load(out)(_fixture_image(), boxes)
    want = PoseEstimator.load(model_dir)(_fixture_image(), boxes)
    np.testing.assert_allclose(got.keypoints, want.keypoints, atol=1e-2)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)


@needs_flatbuffers
def test_stablehlo_exports_dark_decoding(tiny, tmp_path):
  # export_model raises unless the file matches JAX's on-device DARK (decode_unbiased_jnp).
  desc = export.export_model(tiny, "stablehlo", tmp_path / "dark.stablehlo", decode="unbiased",
                             coords="crop", flip=False)
  assert desc["decode"] == "unbiased" and desc["check"]["max_dx_px"] <= 1e-3
