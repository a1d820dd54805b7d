"""`python -m sbpose_jax.evaluate`: runs the command line of `sbpose_jax.commands.evaluate`."""
from sbpose_jax.commands.evaluate import main

if __name__ == "__main__":
  main()
