"""Stop requests from signals: the train loop polls a flag, finishes its step, commits a checkpoint and exits.

Two kinds of stop, told apart by the signal:

* **preemption** (``SIGUSR2``, ``SIGTERM``): what a cluster sends before it takes the machine away. slurm sends
  ``SIGUSR2`` ahead of the time limit when asked (``scaling sweep submit`` asks for ``--signal=USR2@90``) and
  ``SIGTERM`` at preemption, ``scancel`` or the limit itself. The run's record says ``preempted`` and the process
  exits with ``exits.PREEMPTED`` (75, ``EX_TEMPFAIL``: "try again"), which the slurm worker turns into a requeue.
  Repeated preemption signals change nothing (slurm may signal every process of a step, and the worker forwards
  the signal too); ``SIGKILL`` after the grace time loses only the steps since the last checkpoint.
* **interrupt** (``SIGINT``, Ctrl-C): the record says ``stopped``, exit code 130; a second Ctrl-C aborts at once.

Both are resumable: rerunning the same command continues from the committed checkpoint.
"""

from __future__ import annotations

import signal
import sys

from scaling import exits

PREEMPT_SIGNALS = ("SIGUSR2", "SIGTERM")


class StopFlag:
    """Set by SIGUSR2 / SIGTERM (preemption) or SIGINT (interrupt); the train loop and the sweep runner poll it.

    ``signal`` is the name of the first signal received; ``preempted`` tells which kind of stop it was."""

    def __init__(self) -> None:
        self.stop = False
        self.signal: str | None = None

    def install(self) -> "StopFlag":
        def handler(signum, frame):
            name = signal.Signals(signum).name
            if self.stop:
                if name == "SIGINT":
                    raise KeyboardInterrupt
                return  # a repeated preemption signal: the stop is already under way
            self.stop, self.signal = True, name
            what = "preempted" if name in PREEMPT_SIGNALS else "interrupted"
            again = " (Ctrl-C again to abort)" if name == "SIGINT" else ""
            print(f"\n{name}: {what}; stopping after the current step and a checkpoint{again}", file=sys.stderr)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
            signal.signal(sig, handler)
        return self

    @property
    def preempted(self) -> bool:
        return self.signal in PREEMPT_SIGNALS

    @property
    def status(self) -> str:
        """The record status of a run this flag stopped."""
        return "preempted" if self.preempted else "stopped"

    @property
    def exit_code(self) -> int:
        return exits.PREEMPTED if self.preempted else exits.STOPPED

    def __call__(self) -> bool:
        return self.stop


__all__ = ["PREEMPT_SIGNALS", "StopFlag"]
