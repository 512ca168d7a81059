"""How a run can end other than completed: the exceptions and the warning category of the train loop."""

from __future__ import annotations


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite (``step``: the first optimizer step whose metrics were not finite)."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class CheckpointError(ValueError):
    """The run has checkpoints but none is intact (each was set aside, named in the message): nothing to resume."""


class MeasurementWarning(UserWarning):
    """Something that can make a run's numbers misleading (repeated data, a small eval split, a resume under
    another config); it is also written to the record's ``warnings``."""


class StopRequested(Exception):
    """A stop was requested (a preemption signal or Ctrl-C, ``scaling.signals``); the run committed a checkpoint
    at ``step`` and can be resumed. ``status`` is what its record says: ``preempted`` or ``stopped``."""

    def __init__(self, message: str, step: int, status: str = "stopped", signal: str | None = None):
        super().__init__(message)
        self.step, self.status, self.signal = step, status, signal


__all__ = ["CheckpointError", "DivergedError", "MeasurementWarning", "StopRequested"]
