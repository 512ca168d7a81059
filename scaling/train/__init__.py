"""Training: optimizer, pure train/eval steps, checkpointing, metrics logging, run records and the loop."""

from scaling.train.loop import DivergedError, StopRequested, load_params, train

__all__ = ["DivergedError", "StopRequested", "load_params", "train"]
