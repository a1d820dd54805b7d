"""Weights on disk: torch files read with numpy (`pth`), the PyTorch → Flax name tables
(`conversion`), and saved models (`saved_model`). Import the modules; this package imports
nothing, so that a JAX-free module (`meta`) can be read without JAX."""
