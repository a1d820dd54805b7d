"""The config one evaluation entry sees (`config.evals.<name>`), JAX-free plain data."""
from __future__ import annotations

import ml_collections


def eval_config(config: ml_collections.ConfigDict, name: str | None = None
                ) -> tuple[ml_collections.ConfigDict, str]:
  """(config with `evals.<name>.data` applied to `data`, evaluator type). Unlocked copy."""
  names = list(config.evals.keys())
  if not names:
    raise ValueError(f"config {config.name!r} has no evals entry")
  name = name or names[0]
  if name not in config.evals:
    raise ValueError(f"--eval {name!r}: config has evals {names}")
  ecfg = ml_collections.ConfigDict(config.to_dict())
  ecfg.data.update(dict(config.evals[name].data))
  return ecfg, config.evals[name].type
