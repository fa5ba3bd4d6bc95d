"""Above the engine: the gradient check, the trainer, checkpoints, run folders and plots."""
