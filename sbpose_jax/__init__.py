"""sbpose_jax: Simple Baselines human pose estimation in JAX/Flax.

`from sbpose_jax import PoseEstimator` (see `sbpose_jax.api`) imports JAX on first use only,
so that the command lines' `--help` stays fast.
"""

__version__ = "0.1.0"

_LAZY = {"PoseEstimator": "sbpose_jax.api", "PoseResult": "sbpose_jax.api"}


def __getattr__(name):
  if name in _LAZY:
    import importlib  # why: used by this function only
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'sbpose_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
