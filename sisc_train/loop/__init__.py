"""The one training loop (`trainer.train`) shared by every task, its arguments, checkpoints and launch checks."""
