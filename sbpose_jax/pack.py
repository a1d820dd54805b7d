"""`python -m sbpose_jax.pack`: runs the command line of `sbpose_jax.commands.pack`."""
import sys

from sbpose_jax.commands.pack import main

if __name__ == "__main__":
  sys.exit(main())
