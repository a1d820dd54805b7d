"""The head's stride-2 deconvolution: Flax nn.ConvTranspose against the sub-pixel `Deconv`.

  python scripts/bench_deconv.py                       # the demo head: 32 -> 32 ch, 16x12 in
  python scripts/bench_deconv.py --channels 256 --hw 8 6 --batch 64   # ResNet-50, first deconv

Both compute the same function from the same kernel (tests/test_models.py). This times a jitted
forward and a forward+backward (gradients for kernel and input) of one layer on the default
device and prints one JSON line per implementation.
"""
from __future__ import annotations

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sbpose_jax.models import pose_resnet


def _time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  t = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / repeats * 1e3


def _row(impl: str, fwd, loss, args, repeats: int, **info) -> dict:
  grad = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))
  return dict(impl=impl, device=jax.devices()[0].device_kind, **info,
              forward_ms=round(_time(jax.jit(fwd), *args, repeats=repeats), 3),
              forward_backward_ms=round(_time(grad, *args, repeats=repeats), 3))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--channels", type=int, default=32, help="deconv in/out channels")
  parser.add_argument("--hw", type=int, nargs=2, default=(16, 12), help="deconv input H W")
  parser.add_argument("--kernel", type=int, default=4)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args(argv)
  k, c, dtype = args.kernel, args.channels, jnp.dtype(args.dtype)
  rng = np.random.default_rng(0)

  pad = pose_resnet.deconv_padding(k)
  deconvs = {
      "conv_transpose": nn.ConvTranspose(c, (k, k), (2, 2), padding=(pad, pad),
                                         transpose_kernel=True, use_bias=False, dtype=dtype),
      "subpixel": pose_resnet.Deconv(c, k, dtype=dtype),
  }
  x = jnp.asarray(rng.standard_normal((args.batch, *args.hw, c)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, c, c)) * 0.05, jnp.float32)
  for impl, layer in deconvs.items():
    def fwd(kern, inp, layer=layer):
      return layer.apply({"params": {"kernel": kern}}, inp)
    def loss(kern, inp, fwd=fwd):
      return jnp.sum(jnp.square(fwd(kern, inp).astype(jnp.float32)))
    print(json.dumps(_row(impl, fwd, loss, (kernel, x), args.repeats,
                          channels=c, input_hw=list(args.hw), batch=args.batch, kernel=k,
                          dtype=args.dtype)))


if __name__ == "__main__":
  main()
