"""Training: optimizer, pure train/eval steps, checkpointing, metrics logging, run records and the loop.

``loop.py`` (train, train_stack) drives ``member.py`` (one run's record, data, checkpoints and metrics) through
``preflight.py`` (refusals, restore or init) and ``evaluate.py``; ``errors.py`` says how a run can end."""

from scaling.train.errors import DivergedError, StopRequested
from scaling.train.loop import load_params, train

__all__ = ["DivergedError", "StopRequested", "load_params", "train"]
