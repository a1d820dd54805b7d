"""The named configs, one per published row plus `demo`; `config.load(NAME)` loads NAME.py.

`common.py` is the base config (every key); `_recipes.py` holds shared pieces. A config file
outside the package (a path given to `--config`) extends them the same way:
`from sbpose_jax.configs import common`.
"""
