"""Stop requests from signals: the train loop polls a flag and checkpoints before it exits (resumable)."""

from __future__ import annotations

import signal
import sys


class StopFlag:
    """SIGTERM / SIGINT set a flag the train loop polls; it checkpoints and exits (a second Ctrl-C kills)."""

    def __init__(self) -> None:
        self.stop = False

    def install(self) -> "StopFlag":
        def handler(signum, frame):
            if self.stop:
                raise KeyboardInterrupt
            self.stop = True
            print(f"\nsignal {signum}: stopping after the next checkpoint (send again to abort)", file=sys.stderr)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        return self

    def __call__(self) -> bool:
        return self.stop
