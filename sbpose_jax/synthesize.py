"""`python -m sbpose_jax.synthesize`: runs the command line of `sbpose_jax.commands.synthesize`."""
import sys

from sbpose_jax.commands.synthesize import main

if __name__ == "__main__":
  sys.exit(main())
