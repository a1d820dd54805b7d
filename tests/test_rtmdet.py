"""RTMDet in Flax against the independent PyTorch reference (tests/torch_rtmdet_reference.py),
and the MMDetection state dict -> Flax converter."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbpose_jax.commands import convert as convert_command
from sbpose_jax.models import rtmdet
from sbpose_jax.weights import conversion
from sbpose_jax.weights import rtmdet_conversion
from sbpose_jax.weights import saved_model

torch = pytest.importorskip("torch")
ref = pytest.importorskip("torch_rtmdet_reference")
pose_ref = pytest.importorskip("torch_reference")

TINY_WIDEN = 0.125  # stem 8 channels: the published options and depths at a compile-cheap width


def _numpy_state_dict(model) -> dict:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()
          if not k.endswith("num_batches_tracked")}


def _params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("size,published", [("nano", 0.99e6), ("m", 24.66e6)])
def test_published_parameter_counts(size, published):
  """MMPose's person table: RTMDet-nano 0.99 M, RTMDet-m 24.66 M parameters (1 class)."""
  shapes = rtmdet_conversion.abstract_variables(rtmdet.SIZES[size])
  assert abs(_params(shapes["params"]) - published) < 0.005e6


@pytest.mark.parametrize("size", ["nano", "m"])
def test_full_size_name_table_matches_the_reference_state_dict(size):
  """Every key of a full-size MMDetection-layout state dict has one Flax leaf of its shape."""
  torch_model = ref.build(size)
  sd = _numpy_state_dict(torch_model)
  arch = rtmdet_conversion.infer_arch(sd)
  assert arch == rtmdet.SIZES[size]
  variables = rtmdet_conversion.to_variables(sd, arch)
  assert _params(variables["params"]) == sum(
      p.numel() for p in torch_model.parameters())  # shared convs once, as torch counts


def _tiny(size: str, seed: int = 0, num_classes: int = 1):
  torch_model = ref.randomize(ref.build(size, num_classes, widen=TINY_WIDEN), seed)
  sd = _numpy_state_dict(torch_model)
  arch = rtmdet_conversion.infer_arch(sd)
  return torch_model, sd, arch


@pytest.mark.parametrize("size", ["nano", "m"])
def test_network_matches_torch(size):
  """Head outputs (logits, distances x stride, exp for m) equal the reference's in float32."""
  torch_model, sd, arch = _tiny(size)
  assert arch.depthwise == (size == "nano") and arch.share_conv == (size == "m")
  assert arch.exp_on_reg == (size == "m") and arch.widen_factor == TINY_WIDEN
  variables = rtmdet_conversion.to_variables(sd, arch)
  x = np.random.default_rng(0).normal(size=(2, 3, 64, 96)).astype(np.float32)
  with torch.no_grad():
    want_cls, want_reg = torch_model(torch.from_numpy(x))
  model = rtmdet.build(arch, "float32")
  got_cls, got_reg = jax.jit(model.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  for w, g in zip(want_cls + want_reg, got_cls + got_reg):
    w = w.numpy().transpose(0, 2, 3, 1)
    assert g.shape == w.shape
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-4 * np.abs(w).max())


def test_bfloat16_is_close_to_float32():
  torch_model, sd, arch = _tiny("nano")
  del torch_model
  variables = rtmdet_conversion.to_variables(sd, arch)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype(np.float32))
  f32 = jax.jit(rtmdet.build(arch, "float32").apply)(variables, x)
  bf16 = jax.jit(rtmdet.build(arch, "bfloat16").apply)(variables, x)
  for a, b in zip(jax.tree.leaves(f32), jax.tree.leaves(bf16)):
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=0.1 * float(jnp.abs(a).max()))


@pytest.mark.parametrize("size,fmt", [("nano", "zip"), ("m", "legacy")])
def test_convert_round_trip(tmp_path, size, fmt):
  """torch.save (zip and legacy) -> saved detector -> the same variables; meta records the
  architecture and the person test settings."""
  torch_model, sd, arch = _tiny(size)
  src = tmp_path / f"rtmdet_{size}_person.pth"
  ref.save(torch_model, src, fmt, extra={"ema_state_dict": {"steps": torch.tensor(1)}})
  meta = rtmdet_conversion.convert(src, tmp_path / "det")
  variables, loaded = rtmdet_conversion.load_detector(tmp_path / "det")
  assert loaded == meta and meta.arch == arch and meta.classes_kept == (0,)
  assert meta.settings == rtmdet.default_settings(arch, 1)
  assert meta.settings.input_size == (320 if size == "nano" else 640)
  want = rtmdet_conversion.to_variables(sd, arch)
  jax.tree.map(np.testing.assert_array_equal, variables, want)
  data = json.loads((tmp_path / "det" / "meta.json").read_text())
  assert data["kind"] == "detector" and data["settings"]["colour_order"] == "bgr"
  assert data["settings"]["pad_value"] == 114.0


def test_coco_file_keeps_the_person_class(tmp_path):
  torch_model, sd, _ = _tiny("m", num_classes=80)
  src = tmp_path / "rtmdet_m_coco.pth"
  ref.save(torch_model, src)
  variables, meta = rtmdet_conversion.load_pth(src)
  assert meta.num_file_classes == 80 and meta.classes_kept == (0,)
  assert meta.arch.num_classes == 1 and meta.settings == dataclasses.replace(
      rtmdet.COCO_SETTINGS, input_size=640)
  for n in range(3):
    np.testing.assert_array_equal(
        variables["params"]["bbox_head"][f"rtm_cls_{n}"]["kernel"][0, 0, :, 0],
        sd[f"bbox_head.rtm_cls.{n}.weight"][0, :, 0, 0])


def test_pose_and_detector_files_are_told_apart(tmp_path):
  """A pose checkpoint where a detector is expected (and the reverse): one line naming it."""
  pose_src = tmp_path / "pose.pth"
  pose_ref.save(pose_ref.PoseResNet(18, 17), "mm0", "zip", pose_src)
  expected = r"pose checkpoint \(mmpose0: ResNet-18, 17 joints\), not an RTMDet"
  with pytest.raises(conversion.ConvertError, match=expected) as e:
    rtmdet_conversion.load_pth(pose_src)
  assert "\n" not in str(e.value)
  torch_model, _, _ = _tiny("nano")
  det_src = tmp_path / "det.pth"
  ref.save(torch_model, det_src)
  with pytest.raises(conversion.ConvertError, match="RTMDet detector checkpoint"):
    conversion.load_pth(det_src)
  rtmdet_conversion.convert(det_src, tmp_path / "det")
  with pytest.raises(ValueError, match="RTMDet person detector.*not a pose model"):
    saved_model.read_meta(tmp_path / "det")


def test_sha256_prefix_of_detector_file_names(tmp_path):
  torch_model, _, _ = _tiny("nano")
  src = tmp_path / "rtmdet_nano_8xb32-100e_coco-obj365-person-00000000.pth"
  ref.save(torch_model, src)
  with pytest.raises(conversion.ConvertError, match="sha256 starts with"):
    rtmdet_conversion.load_pth(src)
  rtmdet_conversion.load_pth(src, verify_hash=False)


def test_unknown_keys_are_named(tmp_path):
  torch_model, sd, arch = _tiny("nano")
  sd = dict(sd, **{"bbox_head.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(conversion.ConvertError, match="bbox_head.extra.weight"):
    rtmdet_conversion.to_variables(sd, arch)


def test_convert_command_detects_a_detector(tmp_path, capsys):
  torch_model, _, _ = _tiny("nano")
  src = tmp_path / "rtmdet_nano.pth"
  ref.save(torch_model, src, "legacy")
  assert convert_command.main([str(src), str(tmp_path / "det")]) == 0
  out = capsys.readouterr().out
  assert "RTMDet-nano (separable), person, 320x320 BGR input" in out
  assert rtmdet_conversion.read_meta(tmp_path / "det").arch.size == "nano"
  assert convert_command.main([str(src), str(tmp_path / "x"), "--style", "caffe"]) == 1
  assert "takes no --config" in capsys.readouterr().err
