"""PoseResNet in Flax: parameter trees (via eval_shape), output sizes, init, BatchNorm, dtypes."""
import importlib.util
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbpose_jax.commands import config as config_lib
from sbpose_jax import models
from sbpose_jax.models import pose_resnet

# torchvision parameter counts without the 1000-way fc (e.g. resnet50: 25,557,032 - 2,049,000).
BACKBONE_PARAMS = {18: 11_176_512, 34: 21_284_672, 50: 23_508_032, 101: 42_500_160,
                   152: 58_143_808}
FAST_COMPILE = {"xla_llvm_disable_expensive_passes": True, "xla_backend_optimization_level": 0}
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
          152: (3, 8, 36, 3)}


def shapes(model, hw=(256, 192), batch=2):
  x = jnp.zeros((batch, *hw, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  out = jax.eval_shape(lambda v: model.apply(v, x), variables)
  return variables, out


def count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("depth", sorted(BACKBONE_PARAMS))
def test_full_size_trees(depth):
  model = models.PoseResNet(depth=depth, num_joints=17)
  variables, out = shapes(model)
  assert out.shape == (2, 64, 48, 17) and out.dtype == jnp.float32
  params = variables["params"]
  backbone = {k: v for k, v in params.items() if not models.is_head_key(k)}
  assert count(backbone) == BACKBONE_PARAMS[depth]
  names = {f"layer{s + 1}_{b}" for s, n in enumerate(BLOCKS[depth]) for b in range(n)}
  assert set(backbone) == names | {"conv1", "bn1"}
  c5 = 512 if depth < 50 else 2048
  assert params["deconv_layers_0"]["kernel"].shape == (4, 4, 256, c5)
  assert set(params) - set(backbone) == {"deconv_layers_0", "deconv_layers_1", "deconv_layers_3",
                                         "deconv_layers_4", "deconv_layers_6", "deconv_layers_7",
                                         "final_layer"}
  assert params["final_layer"]["kernel"].shape == (1, 1, 256, 17)
  assert params["final_layer"]["bias"].shape == (17,)
  # Downsample shortcut exactly where torchvision has one.
  assert ("downsample_0" in params["layer1_0"]) == (depth >= 50)
  assert "downsample_0" in params["layer2_0"] and "downsample_0" not in params["layer2_1"]
  assert set(variables["batch_stats"]["layer1_0"]["bn1"]) == {"mean", "var"}


def test_resnet50_block_shapes():
  variables, _ = shapes(models.PoseResNet(depth=50, style="caffe"))
  block = variables["params"]["layer2_0"]
  assert block["conv1"]["kernel"].shape == (1, 1, 256, 128)
  assert block["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert block["conv3"]["kernel"].shape == (1, 1, 128, 512)
  assert block["downsample_0"]["kernel"].shape == (1, 1, 256, 512)
  assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 3, 64)


@pytest.mark.parametrize("hw,heatmap_hw", [((256, 192), (64, 48)), ((384, 288), (96, 72)),
                                           ((256, 256), (64, 64))])
def test_output_is_quarter_size(hw, heatmap_hw):
  _, out = shapes(models.PoseResNet(depth=18, num_joints=16), hw, batch=1)
  assert out.shape == (1, *heatmap_hw, 16)


@pytest.mark.parametrize("kernels,final", [((2, 3), 3), ((3, 3, 3), 1), ((4,), 3)])
def test_head_shapes(kernels, final):
  n = len(kernels)
  model = models.PoseResNet(depth=18, num_joints=5, num_deconv_layers=n,
                            deconv_filters=(32,) * n, deconv_kernels=kernels,
                            final_conv_kernel=final)
  variables, out = shapes(model, (256, 192), batch=1)
  # Each stride-2 deconv doubles C5 (8x6), whatever its kernel.
  assert out.shape == (1, 8 * 2 ** n, 6 * 2 ** n, 5)
  assert variables["params"]["final_layer"]["kernel"].shape == (final, final, 32, 5)
  for i, k in enumerate(kernels):
    assert variables["params"][f"deconv_layers_{3 * i}"]["kernel"].shape[:2] == (k, k)


@pytest.mark.parametrize("k", [4, 3, 2])
def test_deconv_forms_equal_conv_transpose(k):
  # The head's sub-pixel and dilated forms against Flax's own transposed conv with torch's
  # padding rule: torch (p, op) -> flax (k - 1 - p, k - 1 - p + op) on the dilated input.
  p, op = pose_resnet.DECONV_PADDING[k]
  pad = (k - 1 - p, k - 1 - p + op)
  rng = np.random.default_rng(k)
  x = jnp.asarray(rng.standard_normal((2, 5, 4, 6)), jnp.float32)
  variables = {"params": {"kernel": jnp.asarray(rng.standard_normal((k, k, 3, 6)), jnp.float32)}}
  want = nn.ConvTranspose(3, (k, k), (2, 2), padding=(pad, pad), transpose_kernel=True,
                          use_bias=False).apply(variables, x)
  for form in (pose_resnet.Deconv(3, k), pose_resnet.DilatedDeconv(3, k)):
    got = jax.jit(form.apply)(variables, x)   # jitted: op by op, Deconv's stack costs seconds
    assert got.shape == want.shape == (2, 10, 8, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
  with pytest.raises(ValueError, match="deconv kernel 5"):
    jax.eval_shape(pose_resnet.Deconv(3, 5).init, jax.random.key(0), x)


def test_build_from_config_bf16_compute_f32_params():
  cfg = config_lib.load("coco_res50")
  model = models.build(cfg.model, 17)
  assert model.dtype == jnp.bfloat16 and model.depth == 50 and model.style == "pytorch"
  variables, out = shapes(model)
  assert {jnp.dtype(leaf.dtype) for leaf in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
  assert out.dtype == jnp.float32 and out.shape == (2, 64, 48, 17)
  assert models.build(cfg.model, 17, dtype="float32").dtype == jnp.float32
  with pytest.raises(ValueError, match="model.dtype"):
    models.build(dict(cfg.model, dtype="float33"), 17)


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=42), "depth 42"), (dict(style="tf"), "style"),
    (dict(deconv_kernels=(4, 4)), "lengths"), (dict(final_conv_kernel=2), "final_conv_kernel"),
])
def test_bad_architecture_is_a_clear_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    shapes(models.PoseResNet(**kwargs), (64, 64), 1)


def test_init_and_batchnorm_train_update():
  model = models.PoseResNet(depth=18, num_joints=3, width=8, deconv_filters=(16, 16, 16))
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))

  def run(x):
    v = model.init(jax.random.key(0), x)
    _, updates = model.apply(v, x, train=True, mutable=["batch_stats"])
    return v, updates

  # Cheap XLA compile (no expensive LLVM passes): numerics stay float32.
  v, updates = jax.jit(run).lower(x).compile(compiler_options=FAST_COMPILE)(x)
  p = v["params"]
  assert float(jnp.std(p["deconv_layers_0"]["kernel"])) == pytest.approx(0.001, rel=0.05)
  assert float(jnp.std(p["final_layer"]["kernel"])) == pytest.approx(0.001, rel=0.3)
  np.testing.assert_array_equal(p["final_layer"]["bias"], 0)
  np.testing.assert_array_equal(p["bn1"]["scale"], 1)
  np.testing.assert_array_equal(p["deconv_layers_1"]["bias"], 0)
  # torchvision init: kaiming normal, fan_out = width * 7 * 7.
  assert float(jnp.std(p["conv1"]["kernel"])) == pytest.approx((2 / (8 * 49)) ** 0.5, rel=0.05)
  # BatchNorm momentum 0.9 (= torch 0.1): new mean = 0.9 * 0 + 0.1 * batch mean of conv1.
  y = jax.lax.conv_general_dilated(x, p["conv1"]["kernel"], (2, 2), ((3, 3), (3, 3)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(updates["batch_stats"]["bn1"]["mean"], 0.1 * y.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["bn1"]["var"], 0.9 + 0.1 * y.var((0, 1, 2)),
                             rtol=1e-4)


def test_deconv_impls_share_one_variable_tree():
  # Every form of the head reads the same variables (checkpoints are interchangeable); each
  # layer is the same function (test above), and test_export runs whole networks in each form.
  kw = dict(depth=18, num_joints=3, width=8, deconv_filters=(8, 8), num_deconv_layers=2,
            deconv_kernels=(4, 3))
  trees = [shapes(models.PoseResNet(deconv_impl=impl, **kw), hw=(64, 64))
           for impl in pose_resnet.DECONV_IMPLS]
  for variables, out in trees[1:]:
    assert variables == trees[0][0] and out == trees[0][1]
  with pytest.raises(ValueError, match="deconv_impl"):
    shapes(models.PoseResNet(deconv_impl="fft", **kw), hw=(64, 64))


def test_bench_deconv_script_runs(capsys):
  path = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "bench_deconv.py"
  spec = importlib.util.spec_from_file_location("bench_deconv", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  bench.main(["--channels", "4", "--hw", "3", "2", "--batch", "1", "--repeats", "1"])
  rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert [r["impl"] for r in rows] == ["conv_transpose", "subpixel"]
  assert all(r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 for r in rows)
