"""Exit statuses of every ``scaling`` command, named once, and the one way a command reports a failure: one line on
stderr ("PREFIX: what, where, what is allowed") and its status. Scripts and schedulers branch on these numbers
(the slurm worker requeues on PREEMPTED; ``sweep run`` sums its runs' statuses); the README lists them."""

from __future__ import annotations

import sys

OK = 0
FAILED = 1  # it ran and something failed: a run of the sweep failed or diverged, a quickstart stage failed
BAD_INPUT = 2  # a bad config, file, table or argument (named in the line); nothing was trained or written
DIVERGED = 3  # `train`: the loss went non-finite; the record says diverged
IOERR = 74  # sysexits' EX_IOERR: a storage failure (full disk, read-only or lost mount, a failed push); rerun to resume
PREEMPTED = 75  # sysexits' EX_TEMPFAIL: preempted or at its time limit, checkpointed; requeue or rerun
STOPPED = 130  # Ctrl-C (128 + SIGINT): checkpointed; rerun to resume


def fail(message: str, status: int = BAD_INPUT, prefix: str = "error") -> int:
    """Print ``PREFIX: MESSAGE`` as one line on stderr and return ``status`` (for ``return fail(...)``)."""
    print(f"{prefix}: {message}" if prefix else message, file=sys.stderr, flush=True)
    return status


__all__ = ["BAD_INPUT", "DIVERGED", "FAILED", "IOERR", "OK", "PREEMPTED", "STOPPED", "fail"]
