"""Training: the loop (`loop.train_and_evaluate`), its state, losses, optimiser, workdir,
checkpoints, logs and initial weights. Import the modules; this package imports nothing."""
