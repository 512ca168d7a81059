"""Run claims: which worker runs which run of a shared sweep directory.

A claim is ``runs/RUN_ID/claim.json``, created with O_CREAT | O_EXCL, so two workers never run the same run; the
owner refreshes its heartbeat every ``HEARTBEAT_S`` seconds, and a claim whose heartbeat is older than
``stale_after`` seconds (or whose process on this host is gone) is taken over by renaming it away first (only one
renamer can win); a taker that finds it moved something other than the claim it judged stale (another taker's
fresh claim) puts it back and leaves the run.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


class Claim:
    def __init__(self, path: Path, owner: str):
        self.path, self.owner = path, owner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> str:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()})

    def try_acquire(self, stale_after: float) -> bool:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._is_stale(stale_after):
                    return False
                judged = _read_text(self.path)
                stale = self.path.with_name(f".claim.stale-{uuid.uuid4().hex[:8]}")
                try:  # take over a dead worker's claim: only one renamer wins, then it removes what it moved
                    os.rename(self.path, stale)
                except FileNotFoundError:
                    continue
                if _read_text(stale) != judged:
                    # another worker took the stale claim over between our look and our rename: what we moved is
                    # its fresh claim. Put it back (link: never over a newer one) and leave the run to it.
                    try:
                        os.link(stale, self.path)
                    except FileExistsError:
                        pass
                    stale.unlink(missing_ok=True)
                    return False
                stale.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self._payload())
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
            return True
        return False

    def _is_stale(self, stale_after: float) -> bool:
        """A claim is stale when its heartbeat is older than ``stale_after`` or, on this host, its process is gone."""
        try:
            info = json.loads(self.path.read_text() or "{}")
            beat = float(info.get("heartbeat", 0))
        except (OSError, ValueError):
            try:
                beat, info = self.path.stat().st_mtime, {}
            except FileNotFoundError:
                return True
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"]):
            return True
        return time.time() - beat > stale_after

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                tmp = self.path.with_name(f".claim.{self.owner}.tmp")
                tmp.write_text(self._payload())
                if json.loads(self.path.read_text()).get("owner") == self.owner:
                    os.replace(tmp, self.path)
                else:
                    tmp.unlink(missing_ok=True)
            except (OSError, ValueError):
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S + 1)
        try:
            if json.loads(self.path.read_text()).get("owner") == self.owner:
                self.path.unlink()
        except (OSError, ValueError):
            pass


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "Claim"]
