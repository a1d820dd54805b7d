"""`python -m sbpose_jax.export`: runs the command line of `sbpose_jax.commands.export`."""
from sbpose_jax.commands.export import main

if __name__ == "__main__":
  main()
