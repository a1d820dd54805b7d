"""`python -m sbpose_jax.track`: runs the command line of `sbpose_jax.commands.track`."""
from sbpose_jax.commands.track import main

if __name__ == "__main__":
  main()
