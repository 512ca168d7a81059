"""A rich progress bar for long fits, driven by the batched optimiser's ``on_iter(done, total)`` callback."""

from __future__ import annotations

from typing import Callable


class progress_bar:
    """Context manager yielding an ``on_iter(done, total)`` callback that drives a transient rich progress bar on
    stderr, or None when ``enabled`` is false (then nothing is imported or drawn)."""

    def __init__(self, enabled: bool, description: str):
        self.enabled, self.description = enabled, description

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} done"), TimeElapsedColumn(),
            transient=True, console=Console(stderr=True),
        )
        self.bar.start()
        self.task = None

        def cb(done: int, total: int) -> None:
            if self.task is None:
                self.task = self.bar.add_task(self.description, total=total)
            self.bar.update(self.task, completed=done)

        return cb

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()
