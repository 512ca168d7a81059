"""Storage failures (a full disk, a read-only or lost mount, an I/O error): recognised wherever they surface
(``OSError`` from Python, or the same causes wrapped in TensorStore / orbax exceptions), reported in one line that
names the path and the cause, with their own exit code, so a sweep stops instead of failing run after run."""

from __future__ import annotations

import errno
import os
from pathlib import Path


_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
           errno.EIO: "input/output error", errno.ESTALE: "stale file handle (lost mount)", errno.ENOTCONN: "lost mount",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EFBIG: "file too large (a size limit)"}
_TEXTS = {"No space left on device": "disk full", "Disk quota exceeded": "disk quota exceeded",
          "Read-only file system": "read-only file system", "Input/output error": "input/output error",
          "Stale file handle": "stale file handle (lost mount)", "Transport endpoint is not connected": "lost mount",
          "File too large": "file too large (a size limit)"}


def storage_cause(e: BaseException) -> str | None:
    """The storage failure behind ``e`` ('disk full', 'read-only file system', ...) or None when it is not one.
    Follows ``__cause__`` / ``__context__`` (orbax and TensorStore wrap the OS error)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _ERRNOS:
            return _ERRNOS[e.errno]
        text = str(e)
        for needle, cause in _TEXTS.items():
            if needle in text:
                return cause
        e = e.__cause__ or e.__context__
    return None


def storage_message(e: BaseException, where: str | None = None) -> str:
    """``PATH: disk full (No space left on device)``: the path the error names (else ``where``) and the cause."""
    path = None
    seen = set()
    x = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, OSError) and (x.filename or x.filename2):
            path = x.filename or x.filename2
            break
        x = x.__cause__ or x.__context__
    cause = storage_cause(e) or type(e).__name__
    if path is None:  # TensorStore names the file in its message: 'Failed writing: "/path/..."'
        import re

        quoted = re.findall(r'"(/[^"]+)"', str(e))
        path = quoted[-1] if quoted else None
    if isinstance(e, OSError) and e.strerror:
        return f"{path or where or '?'}: {cause} ({e.strerror})" if e.strerror.lower() != cause else f"{path or where or '?'}: {cause}"
    return f"{path or where or '?'}: {cause}"


def quiet_library_noise() -> None:
    """Keep a failure to the one line that says what happened. When a checkpoint read or write fails (a damaged
    file, a full disk), orbax's other reads and writes fail too, in coroutines and threads nobody awaits any more,
    and Python prints each ('Exception ignored in <coroutine _read_array_index...>', 'Event loop is closed', absl's
    copy of the error with its traceback, 'Future exception was never retrieved'), hundreds of lines; JAX warns once
    per compiled program that its cache could not be written. Drop exactly those, for the rest of the process: the
    failure itself is raised, recorded and reported in one line; anything else is printed as before."""
    import logging
    import sys
    import threading
    import warnings

    if getattr(quiet_library_noise, "done", False):
        return
    quiet_library_noise.done = True
    hook, thook = sys.unraisablehook, threading.excepthook

    def unraisable(u):
        if "_read_array_index_and_device_put" in repr(u.object) or "Event loop is closed" in str(u.exc_value):
            return
        hook(u)

    def thread_hook(a):
        if isinstance(a.exc_value, RuntimeError) and "Event loop is closed" in str(a.exc_value):
            return
        thook(a)

    class _Drop(logging.Filter):
        def filter(self, record):
            msg = record.getMessage()
            if "exception was never retrieved" in msg:
                return False
            exc = record.exc_info[1] if record.exc_info else None
            return not ((exc is not None and storage_cause(exc)) or any(t in msg for t in _TEXTS))

    sys.unraisablehook, threading.excepthook = unraisable, thread_hook
    drop = _Drop()
    for name in ("asyncio", "absl", ""):
        logging.getLogger(name).addFilter(drop)
        for h in logging.getLogger(name).handlers:
            h.addFilter(drop)
    warnings.filterwarnings("ignore", message=r"Error writing persistent compilation cache entry.*(Errno (27|28|30|122)|No space left|File too large)")


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file whole or not at all: a temporary name beside it, flushed and synced to disk, then renamed over
    it (readers see the old file or the new one, never a torn one; a crash or a full disk leaves the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["quiet_library_noise", "storage_cause", "storage_message", "write_atomic"]
