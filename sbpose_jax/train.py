"""`python -m sbpose_jax.train`: runs the command line of `sbpose_jax.commands.train`."""
import sys

from sbpose_jax.commands.train import main

if __name__ == "__main__":
  sys.exit(main())
