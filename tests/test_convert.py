"""Converter parity against the independent PyTorch PoseResNet in tests/torch_reference.py.

Every depth, both styles, every layout and both serialization formats: converted weights must
reproduce torch's eval-mode heatmaps (scaled to max |h| = 1) to < 1e-4 in float32.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(2)

import torch_reference as tr  # noqa: E402  (tests/ is on sys.path under pytest)

from sbpose_jax.commands import config as config_lib  # noqa: E402
from sbpose_jax.weights import conversion  # noqa: E402
from sbpose_jax.commands import convert  # noqa: E402
from sbpose_jax.training import init as init_weights  # noqa: E402
from sbpose_jax import models  # noqa: E402
from sbpose_jax.weights import saved_model  # noqa: E402
from sbpose_jax.training import workdir  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
TOL = 1e-4
# Cheap XLA compiles: ResNet-152 compiles ~3x faster, numerics stay float32.
FAST_COMPILE = {"xla_llvm_disable_expensive_passes": True, "xla_backend_optimization_level": 0}


def jit_apply(model, variables, x):
  with jax.default_matmul_precision("highest"):
    fn = jax.jit(model.apply).lower(variables, x).compile(compiler_options=FAST_COMPILE)
  return lambda v, inp: np.asarray(fn(v, inp))


def reference(depth, hw=(32, 32), style="pytorch", num_joints=17, batch=1, seed=0, **head):
  """(torch model, x NHWC, torch heatmaps NHWC) with realistic random weights."""
  model = tr.PoseResNet(depth, num_joints, style, **head)
  rng = np.random.default_rng(seed + depth)
  # BatchNorm statistics from a small batch; 4 images of 32x32 leave 4 values per C5 channel.
  x_cal = rng.standard_normal((4 if hw[0] < 128 else 2, *hw, 3)).astype(np.float32)
  x = rng.standard_normal((batch, *hw, 3)).astype(np.float32)
  tr.randomize(model, x_cal, x, seed=seed)
  return model, x, tr.forward_nhwc(model, x)


def backbone_of(path):
  """Backbone variables {"params", "batch_stats"} of a .pth of any layout or a saved model."""
  variables, _ = init_weights.load_init(path)
  return {col: {k: v for k, v in tree.items() if not models.is_head_key(k)}
          for col, tree in variables.items()}


def flax_model(meta, dtype="float32"):
  return saved_model.build_model(meta, dtype)


@pytest.fixture(scope="module")
def r18():
  return reference(18, batch=2)


def test_every_layout_and_format_r18(tmp_path, r18):
  model, x, want = r18
  colours = {"mm0": "rgb", "mm1": "rgb", "ms": "bgr", "ms_train": "bgr"}
  layouts = {"mm0": "mmpose0", "mm1": "mmpose1", "ms": "poseresnet", "ms_train": "poseresnet"}
  first, apply = None, None
  for layout in colours:
    for fmt in tr.FORMATS:
      path = tmp_path / f"{layout}_{fmt}.pth"
      tr.save(model, layout, fmt, path)
      variables, meta = conversion.load_pth(path)
      assert (meta.depth, meta.num_joints, meta.colour_order) == (18, 17, colours[layout])
      assert meta.source == f"{path.name} ({layouts[layout]})"
      if first is None:
        first, apply = variables, jit_apply(flax_model(meta), variables, x)
        err = np.abs(apply(variables, x) - want).max()
        print(f"ResNet-18 {layout}/{fmt}: max abs err {err:.2e}")
        assert err < TOL
      else:  # the same tensors whatever the wrapper and format
        jax.tree.map(np.testing.assert_array_equal, variables, first)


# Full width where a published model's shapes matter (34, 50); the deep ones at base width 16:
# the same keys and blocks, a quarter of the channels (ResNet-152 took minutes at width 64).
@pytest.mark.parametrize("depth,layout,fmt,hw,width", [
    (34, "mm1", "zip", (32, 32), 64),
    (50, "mm0", "legacy", (256, 192), 64),
    (101, "mm1", "legacy", (32, 32), 16),
    (152, "ms_train", "zip", (32, 32), 16),
])
def test_parity_every_depth(tmp_path, depth, layout, fmt, hw, width):
  model, x, want = reference(depth, hw, width=width, deconv_filters=(4 * width,) * 3)
  path = tmp_path / "model.pth"
  tr.save(model, layout, fmt, path)
  del model
  variables, meta = conversion.load_pth(path)
  assert meta.depth == depth and meta.width == width
  got = jit_apply(flax_model(meta), variables, x)(variables, x)
  assert got.shape == (1, hw[0] // 4, hw[1] // 4, 17)
  err = np.abs(got - want).max()
  print(f"ResNet-{depth} {hw} {layout}/{fmt}: max |h| {np.abs(want).max():.2f}, "
        f"max abs err {err:.2e}")
  assert err < TOL


def test_caffe_style_parity(tmp_path):
  # Same keys and shapes as pytorch style (the file cannot tell): the style is an argument.
  model, x, want = reference(50, (32, 32), style="caffe", width=16, deconv_filters=(64,) * 3)
  path = tmp_path / "caffe.pth"
  tr.save(model, "ms", "zip", path)
  variables, meta = conversion.load_pth(path, style="caffe")
  assert meta.style == "caffe"
  err = np.abs(jit_apply(flax_model(meta), variables, x)(variables, x) - want).max()
  print(f"ResNet-50 caffe (32, 32): max abs err {err:.2e}")
  assert err < TOL


@pytest.mark.parametrize("filters,kernels,final", [((64, 32), (3, 2), 3),
                                                   ((32, 32, 32), (2, 3, 4), 1)])
def test_head_variants(tmp_path, filters, kernels, final):
  head = dict(deconv_filters=filters, deconv_kernels=kernels, final_conv_kernel=final)
  model, x, want = reference(18, (64, 64), num_joints=5, **head)
  path = tmp_path / "head.pth"
  tr.save(model, "mm0", "legacy", path)
  variables, meta = conversion.load_pth(path)
  assert (meta.deconv_filters, meta.deconv_kernels, meta.final_conv_kernel) == (
      filters, kernels, final)
  assert (meta.num_deconv_layers, meta.num_joints) == (len(filters), 5)
  got = jit_apply(flax_model(meta), variables, x)(variables, x)
  assert got.shape == want.shape
  assert np.abs(got - want).max() < TOL


def test_thin_resnet_parity_and_saved_width(tmp_path):
  # A non-published base width (the CPU demo's): inferred from conv1, kept through save/load,
  # and checked against the config.
  model, x, want = reference(18, (64, 64), num_joints=5, width=16,
                             deconv_filters=(32, 32, 32))
  path = tmp_path / "thin.pth"
  tr.save(model, "mm1", "zip", path)
  variables, meta = conversion.load_pth(path)
  assert meta.width == 16
  assert variables["params"]["layer4_0"]["conv1"]["kernel"].shape == (3, 3, 64, 128)
  assert np.abs(jit_apply(flax_model(meta), variables, x)(variables, x) - want).max() < TOL
  saved_model.save_model(tmp_path / "saved", variables, meta)
  assert saved_model.load_model(tmp_path / "saved")[1].width == 16
  config = config_lib.load("demo")
  config.model.update(depth=18, width=64)  # the file's width is checked first
  with pytest.raises(ValueError, match="width=16 but config"):
    saved_model.check_matches_config(meta, config)


def test_bfloat16_against_float32(tmp_path, r18):
  model, x, want = r18
  path = tmp_path / "m.pth"
  tr.save(model, "mm0", "zip", path)
  variables, meta = conversion.load_pth(path)
  bf16 = flax_model(meta, "bfloat16")
  got = jit_apply(bf16, variables, x)(variables, x)
  err = np.abs(got - want).max()
  print(f"ResNet-18 bfloat16 vs float32 torch: max abs err {err:.2e} (max |h| 1)")
  assert got.dtype == np.float32
  assert 1e-4 < err < 0.25  # bf16 really is used, and still gives heatmaps of the same shape


def test_torchvision_backbone(tmp_path):
  model = tr.PoseResNet(18, num_joints=0, num_classes=10)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1, 64, 64, 3)).astype(np.float32)
  tr.randomize(model, rng.standard_normal((4, 64, 64, 3)).astype(np.float32))
  feats = tr.forward_nhwc(model, x)
  feats /= np.abs(feats).max()
  apply = None
  for fmt in tr.FORMATS:
    path = tmp_path / f"resnet18_{fmt}.pth"
    tr.save(model, "torchvision", fmt, path)
    variables, meta = conversion.load_pth(path)
    assert meta.backbone_only and meta.num_joints == 0 and meta.colour_order == "rgb"
    assert "(torchvision)" in meta.source
    apply = apply or jit_apply(models.ResNet(depth=18), variables, x)
    got = apply(variables, x)
    assert np.abs(got / np.abs(got).max() - feats).max() < TOL

  init = backbone_of(path)
  assert set(init) == {"params", "batch_stats"} and "fc" not in init["params"]
  fresh = conversion.abstract_variables(saved_model.ModelMeta(depth=18, num_joints=17))
  fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), fresh)
  merged = init_weights.merge_backbone(fresh, init)
  np.testing.assert_array_equal(merged["params"]["layer4_1"]["conv2"]["kernel"],
                                init["params"]["layer4_1"]["conv2"]["kernel"])
  np.testing.assert_array_equal(merged["params"]["final_layer"]["kernel"], 0)
  r50 = conversion.abstract_variables(saved_model.ModelMeta(depth=50, num_joints=0,
                                                         backbone_only=True))
  with pytest.raises(ValueError, match="another ResNet depth"):
    init_weights.merge_backbone(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), r50), init)
  # A converted backbone directory is accepted too.
  dst = tmp_path / "backbone"
  assert convert.main([str(path), str(dst)]) == 0
  again = backbone_of(dst)
  jax.tree.map(np.testing.assert_array_equal, again, init)


# --- Saved models -----------------------------------------------------------------------------


def test_save_load_model_and_workdir(tmp_path, r18):
  model, _, _ = r18
  src = tmp_path / "m.pth"
  tr.save(model, "ms", "legacy", src)
  variables, meta = conversion.load_pth(src)
  saved_model.save_model(tmp_path / "work" / "model_last", variables, meta)
  loaded, meta2 = saved_model.load_model(tmp_path / "work" / "model_last")
  assert meta2 == meta and meta2.colour_order == "bgr"
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  # A workdir holding it (model_last) reads as the same model; the rest: tests/test_workdir.py.
  assert workdir.load_model(tmp_path / "work")[1] == meta


# --- Command line -----------------------------------------------------------------------------


def _run_cli_without_torch(*args):
  """`python -m sbpose_jax.convert ARGS` in a process where `import torch` fails."""
  code = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = ['convert'] + sys.argv[1:];"
          "runpy.run_module('sbpose_jax.convert', run_name='__main__')")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                        text=True, env=env, cwd=str(REPO), timeout=300)


def test_cli_converts_without_torch(tmp_path, r18):
  model, _, _ = r18
  src = tmp_path / "res18_coco_256x192.pth"
  tr.save(model, "mm0", "legacy", src)
  cfg = tmp_path / "my_res18.py"
  cfg.write_text("from sbpose_jax.configs import common\n\n"
                 "def get_config():\n  c = common.get_config()\n"
                 "  c.name = 'my_res18'\n  c.model.depth = 18\n  return c\n")
  dst = tmp_path / "out"
  proc = _run_cli_without_torch(src, dst, "--config", cfg)
  assert proc.returncode == 0, proc.stderr
  assert "ResNet-18" in proc.stdout
  variables, meta = saved_model.load_model(dst)
  assert (meta.dataset, meta.colour_order, meta.style) == ("coco", "rgb", "pytorch")
  jax.tree.map(np.testing.assert_array_equal, variables, conversion.load_pth(src)[0])
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_hostile_pickle_runs_nothing(tmp_path):
  marker = tmp_path / "pwned"
  src = tmp_path / "evil.pth"
  tr.save_hostile(src, marker, "legacy")
  proc = _run_cli_without_torch(src, tmp_path / "out")
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "system" in lines[0] and "allow-list" in lines[0], proc.stderr
  assert not marker.exists() and not (tmp_path / "out").exists()


def _fail(capsys, tmp_path, *args):
  dst = tmp_path / "dst"
  rc = convert.main([*map(str, args), str(dst)])
  err = capsys.readouterr().err.strip()
  assert rc != 0
  assert len(err.splitlines()) == 1, err
  assert not dst.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dst")]
  return err


def test_cli_bad_inputs(tmp_path, capsys, r18):
  model, _, _ = r18
  good = tmp_path / "good.pth"
  tr.save(model, "ms", "zip", good)
  assert "no such file" in _fail(capsys, tmp_path, tmp_path / "missing.pth").lower()

  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
  assert "truncated.pth" in _fail(capsys, tmp_path, truncated)
  legacy = tmp_path / "legacy.pth"
  tr.save(model, "ms", "legacy", legacy)
  truncated.write_bytes(legacy.read_bytes()[:-1000])
  assert "truncated" in _fail(capsys, tmp_path, truncated)

  text = tmp_path / "notes.pth"
  text.write_text("hello")
  assert "not a PyTorch checkpoint" in _fail(capsys, tmp_path, text)

  sd = model.state_dict()
  renamed = {("encoder." + k): v for k, v in sd.items()}
  torch.save(renamed, tmp_path / "renamed.pth")
  err = _fail(capsys, tmp_path, tmp_path / "renamed.pth")
  assert "encoder.conv1.weight" in err and "missing: conv1.weight" in err

  extra = dict(sd, **{"layer1.0.extra.weight": torch.zeros(3)})
  del extra["layer2.0.bn2.running_var"]
  torch.save(extra, tmp_path / "extra.pth")
  err = _fail(capsys, tmp_path, tmp_path / "extra.pth")
  assert "layer1.0.extra.weight" in err and "layer2.0.bn2.running_var" in err

  err = _fail(capsys, tmp_path, good, "--config", "coco_res50")
  assert "depth=18" in err and "model.depth" in err

  marker = tmp_path / "pwned"
  tr.save_hostile(tmp_path / "evil.pth", marker, "zip")
  assert "system" in _fail(capsys, tmp_path, tmp_path / "evil.pth")
  assert not marker.exists()

  wrong_hash = tmp_path / "res18_coco_256x192-0badcafe_20200709.pth"
  wrong_hash.write_bytes(good.read_bytes())
  assert "sha256" in _fail(capsys, tmp_path, wrong_hash)


def test_cli_sha_prefix_and_overwrite(tmp_path, capsys, r18):
  import hashlib  # why: used by this function only
  model, _, _ = r18
  src = tmp_path / "tmp.pth"
  tr.save(model, "mm1", "zip", src)
  digest = hashlib.sha256(src.read_bytes()).hexdigest()[:8]
  named = tmp_path / f"td-hm_res18_coco-256x192-{digest}_20220923.pth"
  src.rename(named)
  dst = tmp_path / "out"
  assert convert.main([str(named), str(dst)]) == 0
  meta = json.loads((dst / "meta.json").read_text())
  assert (meta["dataset"], meta["colour_order"]) == ("coco", "rgb")
  # Re-converting replaces a saved model, but never another directory.
  assert convert.main([str(named), str(dst), "--colour-order", "bgr"]) == 0
  assert saved_model.load_model(dst)[1].colour_order == "bgr"
  other = tmp_path / "other"
  other.mkdir()
  (other / "keep.txt").write_text("x")
  assert convert.main([str(named), str(other)]) != 0
  assert "refusing to overwrite" in capsys.readouterr().err
  assert (other / "keep.txt").exists()


def test_layout_detection_edge_cases(r18):
  model, _, _ = r18
  bare = {k: v.numpy() for k, v in model.state_dict().items()}
  backbone = {f"backbone.{k}": v for k, v in bare.items() if not k.startswith(("deconv", "final"))}
  layout, sd = conversion.split_layout(conversion.extract_state_dict({"state_dict": backbone}))
  assert layout == "backbone" and conversion.infer_arch(sd)["backbone_only"]
  both = dict(backbone, **{"head.final_layer.bias": bare["final_layer.bias"],
                           "keypoint_head.final_layer.bias": bare["final_layer.bias"]})
  with pytest.raises(conversion.ConvertError, match="both keypoint_head"):
    conversion.split_layout(both)
  with pytest.raises(conversion.ConvertError, match="neck.x"):
    conversion.split_layout(dict(backbone, **{"neck.x": bare["bn1.bias"]}))
  # ResNetV1d (deep stem) is not a PoseResNet: its stem keys are named.
  v1d = {k: v for k, v in bare.items() if not k.startswith(("conv1.", "bn1."))}
  v1d["stem.0.conv.weight"] = np.zeros((32, 3, 3, 3), np.float32)
  v1d["conv1.weight"] = bare["conv1.weight"]
  layout, sd = conversion.split_layout(v1d)
  with pytest.raises(conversion.ConvertError, match=r"stem.0.conv.weight.*missing: bn1"):
    conversion.to_variables(sd, saved_model.ModelMeta(**conversion.infer_arch(sd)))
  with pytest.raises(conversion.ConvertError, match="match no ResNet depth"):
    conversion.infer_arch({k: v for k, v in bare.items() if not k.startswith("layer4.1.")})
  with pytest.raises(conversion.ConvertError, match="not a tensor"):
    conversion.extract_state_dict({"state_dict": {"conv1.weight": "hello"}})
