"""Progress display that reads well in a terminal and in a log file (SLURM, nohup, CI).

On a terminal: rich bars (one per run, with loss, tokens/s and ETA). When stderr is not a terminal a bar would
print nothing for minutes and then everything at once, so the same calls print plain lines instead, at most one per
task every ``LINE_EVERY_S`` seconds (``SCALING_PROGRESS_EVERY`` overrides it) plus one when a task finishes.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LINE_EVERY_S = 30.0


def line_every() -> float:
    try:
        return float(os.environ.get("SCALING_PROGRESS_EVERY", LINE_EVERY_S))
    except ValueError:
        return LINE_EVERY_S


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def human(x: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def make_progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console or Console(file=sys.stderr),
        transient=False,
    )


class LineProgress:
    """The part of ``rich.progress.Progress`` the training loop and the sweep use (add_task, update, advance,
    remove_task), printed as rate-limited plain lines: ``run abc123: step 400/1000 (40%) loss 2.1034 51,200 tok/s
    elapsed 1m20s ETA 2m00s``."""

    def __init__(self, stream=None, every: float | None = None):
        self.stream = stream or sys.stderr
        self.every = line_every() if every is None else every
        self.tasks: dict[int, dict] = {}
        self._next = 0

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        tid = self._next
        self._next += 1
        now = time.monotonic()
        self.tasks[tid] = {"description": description, "total": total, "completed": completed, "fields": fields,
                           "start": now, "start_completed": completed, "printed": now, "done": False}
        return tid

    def update(self, task_id: int, completed: float | None = None, total: float | None = None, advance: float | None = None, **fields) -> None:
        t = self.tasks.get(task_id)
        if t is None:
            return
        if total is not None:
            t["total"] = total
        if completed is not None:
            t["completed"] = completed
        if advance:
            t["completed"] += advance
        t["fields"].update(fields)
        now = time.monotonic()
        finished = t["total"] is not None and t["completed"] >= t["total"]
        if (finished and not t["done"]) or now - t["printed"] >= self.every:
            t["printed"], t["done"] = now, finished
            self._print(t, now)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def remove_task(self, task_id: int) -> None:
        self.tasks.pop(task_id, None)

    def _print(self, t: dict, now: float) -> None:
        done, total = t["completed"], t["total"]
        elapsed = now - t["start"]
        parts = [f"{t['description']}: {done:,.0f}/{total:,.0f}" if total else f"{t['description']}: {done:,.0f}"]
        if total:
            parts.append(f"({100 * done / total:.0f}%)")
        loss = t["fields"].get("loss")
        if loss is not None and loss == loss:
            parts.append(f"loss {loss:.4f}")
        tps = t["fields"].get("tps")
        if tps:
            parts.append(f"{tps:,.0f} tok/s")
        parts.append(f"elapsed {duration(elapsed)}")
        rate = (done - t["start_completed"]) / elapsed if elapsed > 0 else 0
        if total and rate > 0 and done < total:
            parts.append(f"ETA {duration((total - done) / rate)}")
        print(" ".join(parts), file=self.stream, flush=True)


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress | LineProgress | None]:
    """Bars on a terminal, plain rate-limited lines otherwise, nothing when disabled."""
    if not enabled:
        yield None
        return
    if not is_terminal():
        yield LineProgress()
        return
    with make_progress() as p:
        yield p


class RateMeter:
    """Progress through a stream of bytes with an estimated total (``scaling data prepare``): bytes read, tokens
    written, MB/s, tokens/s and ETA, as a bar on a terminal or a plain line every ``line_every()`` seconds."""

    def __init__(self, description: str, total_bytes: float, enabled: bool = True, stream=None):
        self.description, self.total = description, max(1.0, float(total_bytes))
        self.enabled, self.stream = enabled, stream or sys.stderr
        self.tty = is_terminal(self.stream)
        self.start = time.monotonic()
        self.start_bytes: float | None = None
        self.printed = self.start
        self.done_bytes, self.tokens, self.tokens_now, self._start_tokens = 0.0, 0, 0, 0
        self._bar: Progress | None = None
        self._task = None

    def __enter__(self) -> "RateMeter":
        if self.enabled and self.tty:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[text]}"), TextColumn("ETA"),
                TimeRemainingColumn(), console=Console(file=self.stream), transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, text="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif self.enabled and exc[0] is None and self.done_bytes:
            self._line(final=True)

    def note(self, msg: str) -> None:
        if self.enabled:
            (self._bar.console.print if self._bar is not None else lambda m: print(m, file=self.stream, flush=True))(f"{self.description}: {msg}")

    def _rates(self) -> tuple[float, float, float]:
        elapsed = max(1e-9, time.monotonic() - self.start)
        done_now = self.done_bytes - (self.start_bytes or 0.0)
        return elapsed, done_now / elapsed, self.tokens_now / elapsed

    def update(self, done_bytes: float, tokens: int) -> None:
        if self.start_bytes is None:  # a resumed preparation starts its rates from what was already done
            self.start_bytes, self._start_tokens = float(done_bytes), tokens
        self.done_bytes, self.tokens = float(done_bytes), tokens
        self.tokens_now = tokens - self._start_tokens
        if not self.enabled:
            return
        elapsed, bps, tps = self._rates()
        if self._bar is not None:
            self._bar.update(self._task, completed=min(self.done_bytes, self.total),
                             text=f"{human(self.done_bytes)}B/{human(self.total)}B {bps / 1e6:.1f} MB/s {human(tps)} tok/s, {human(tokens)} tokens")
        elif time.monotonic() - self.printed >= line_every():
            self._line()

    def _line(self, final: bool = False) -> None:
        self.printed = time.monotonic()
        elapsed, bps, tps = self._rates()
        pct = min(100.0, 100 * self.done_bytes / self.total)
        eta = "" if final or bps <= 0 else f" ETA {duration(max(0.0, self.total - self.done_bytes) / bps)}"
        print(
            f"{self.description}: {human(self.done_bytes)}B of ~{human(self.total)}B ({pct:.0f}%), {human(self.tokens)} tokens, "
            f"{bps / 1e6:.1f} MB/s, {human(tps)} tok/s, elapsed {duration(elapsed)}{eta}",
            file=self.stream, flush=True,
        )
