"""`python -m sbpose_jax.predict`: runs the command line of `sbpose_jax.commands.predict`."""
from sbpose_jax.commands.predict import main

if __name__ == "__main__":
  main()
