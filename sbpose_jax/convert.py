"""`python -m sbpose_jax.convert`: runs the command line of `sbpose_jax.commands.convert`."""
import sys

from sbpose_jax.commands.convert import main

if __name__ == "__main__":
  sys.exit(main())
