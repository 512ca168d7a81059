"""Run and sweep directories on object storage (``gs://``, ``s3://``, any URL ``etils.epath`` opens).

A URL given as ``--out`` is worked in a local copy (the staging directory, node-local disk) and mirrored to the
URL: pulled once at start, pushed every ``SCALING_SYNC_EVERY`` seconds (default 60) from a background thread and
once more when the command ends, however it ends (completed, preempted, failed, a storage error). Training,
checkpointing (orbax, TensorStore), the claims of sweep workers and every reader see a local file system, with its
atomic renames; the object store sees only whole objects:

- a file is uploaded whole when its size or mtime changed since its last upload (an object put is atomic, so a
  reader of the bucket sees the old object or the new one); append-only logs (``*.jsonl``) up to their last
  complete line;
- a checkpoint is uploaded only once orbax has committed it, its files first and its ``commit_success.txt`` last,
  so a bucket holds complete checkpoints or ones without that marker, which a pull leaves out (and the run resumes
  from the newest complete one, bit-identically, as after any preemption); checkpoints orbax pruned or the loop set
  aside are deleted from (or renamed in) the bucket after the new ones are up;
- temporary files, orbax's uncommitted directories and sweep claims (``claim.json``: they coordinate the workers
  that share this staging directory) stay local.

The bucket is the truth: a pull brings the staging directory up to it (a staging directory left by an earlier
command on this machine is reused for the files that did not change, and what it holds that was never pushed is
pushed next). A sweep directory on object storage is
therefore worked by the workers of one host (``sweep run --devices-per-worker K`` shares one staging directory);
workers on several hosts coordinate through a shared file system, and a multi-process training job (every process
writes its shards of a checkpoint) writes to a shared file system path too: both are refused with one line.

Reaching the store needs its fsspec package (``gcsfs`` for gs://, ``s3fs`` for s3://); a missing package, a bucket
that does not exist or cannot be reached is one line (``RemoteError``, exit 2) before anything is trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

from scaling.storage import write_atomic

STATE = ".mirror-state.json"  # {relative path: [size, mtime_ns]} of what the bucket holds from this copy
COMMIT = "commit_success.txt"  # orbax's marker of a complete checkpoint step (written last here too)
_PACKAGES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


class RemoteError(ValueError):
    """Object storage that cannot be used: a missing fsspec package, an unreachable or missing bucket (one line)."""


class PushFailed(RemoteError):
    """The final push did not reach the bucket: a storage failure (exit 74); the staging directory keeps everything."""


def is_url(path: str | os.PathLike | None) -> bool:
    """True for an object-storage URL (``gs://bucket/dir``); local paths and ``file://`` are not."""
    return path is not None and "://" in str(path) and not str(path).startswith("file://")


def staging_dir(url: str) -> Path:
    """Where ``url`` is worked locally: ``$SCALING_STAGING`` or ``$SCALING_CACHE/staging`` (default
    ``~/.cache/scaling/staging``), one directory per URL (its last component and a hash of the whole)."""
    root = os.environ.get("SCALING_STAGING") or Path(os.environ.get("SCALING_CACHE") or Path.home() / ".cache" / "scaling") / "staging"
    name = url.rstrip("/").rsplit("/", 1)[-1] or "root"
    return Path(root).expanduser() / f"{name}-{hashlib.sha256(url.rstrip('/').encode()).hexdigest()[:12]}"


def _remote(url: str):
    from etils import epath

    try:
        return epath.Path(url)
    except KeyError:
        raise RemoteError(f"{url}: unknown storage scheme {url.split('://')[0]!r} (use gs://, s3://, az:// or a local path)") from None


def _skipped(rel: str) -> bool:
    """Files that stay local: temporaries, this module's state, uncommitted checkpoints, sweep claims."""
    parts = rel.split("/")
    return (
        any(p.startswith(".") for p in parts)
        or any("orbax-checkpoint-tmp" in p for p in parts)
        or parts[-1] == "claim.json"
    )


def _checkpoint_step(rel: str) -> str | None:
    """``runs/x/checkpoints/120`` for a file inside a checkpoint step directory (committed or set aside), else None."""
    parts = rel.split("/")
    for i, p in enumerate(parts[:-1]):
        if p == "checkpoints" and i + 1 < len(parts) - 1:
            return "/".join(parts[: i + 2])
    return None


class Mirror:
    """A local staging directory mirrored to ``url``. ``check()`` then ``pull()`` before the work, ``start()`` the
    periodic push, ``close()`` (the final push) after it; or ``with Mirror(url) as m: ... m.local ...``."""

    def __init__(self, url: str, local: str | Path | None = None, every: float | None = None, log: Callable[[str], None] | None = None):
        self.url = url.rstrip("/")
        self.local = Path(local) if local is not None else staging_dir(self.url)
        self.every = float(os.environ.get("SCALING_SYNC_EVERY", 60)) if every is None else every
        self.log = log or (lambda msg: None)
        self.root = _remote(self.url)
        self._state: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None  # the last push failure (the final push raises instead)

    # -- reachability -------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Reach the store once: a missing package or bucket, bad credentials or no network is one line."""
        scheme = self.url.split("://", 1)[0]
        try:
            self.root.exists()
            from etils import epath

            bucket = epath.Path(f"{scheme}://{self.url.split('://', 1)[1].split('/', 1)[0]}")
            if not bucket.exists():
                raise RemoteError(f"{self.url}: the bucket {scheme}://{bucket.name} does not exist or cannot be read")
        except RemoteError:
            raise
        except ImportError as e:
            pkg = _PACKAGES.get(scheme, "its fsspec package")
            raise RemoteError(f"{self.url}: {scheme}:// needs the {pkg} package (pip install {pkg}): {e}") from None
        except Exception as e:
            raise RemoteError(f"{self.url}: cannot reach the object store ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None

    def _remote_path(self, rel: str):
        return self.root / rel if rel else self.root

    # -- pull ---------------------------------------------------------------------------------------------------
    def _list_remote(self) -> dict[str, int]:
        """``{relative path: size}`` of every object under the URL (directories walked with listdir / is_dir)."""
        out: dict[str, int] = {}
        if not self.root.exists():
            return out
        todo = [""]
        while todo:
            rel = todo.pop()
            for child in self._remote_path(rel).iterdir():
                crel = f"{rel}/{child.name}" if rel else child.name
                if child.is_dir():
                    todo.append(crel)
                else:
                    out[crel] = child.stat().length or 0
        return out

    def pull(self, skip: Callable[[str], bool] | None = None) -> dict:
        """Bring the staging directory up to the bucket: download what differs from it, delete local files this copy
        pushed once and the bucket no longer holds; files never pushed (the last command stopped before its final
        push) are kept and pushed next. Checkpoint steps without their commit marker are left out. ``skip(rel)`` leaves
        other files out (a sweep's status needs no checkpoints). Returns counts for the log."""
        self.local.mkdir(parents=True, exist_ok=True)
        state = self._read_state()
        remote = self._list_remote()
        complete = {s for rel in remote if (s := _checkpoint_step(rel)) and rel == f"{s}/{COMMIT}"}
        wanted = {rel: size for rel, size in remote.items()
                  if not _skipped(rel) and ((s := _checkpoint_step(rel)) is None or s in complete) and not (skip and skip(rel))}
        incomplete = {s for rel in remote if (s := _checkpoint_step(rel)) and s not in complete}
        got = kept = 0
        for rel, size in sorted(wanted.items()):
            dst = self.local / rel
            st = dst.stat() if dst.exists() else None
            if st is not None and st.st_size == size and state.get(rel) == [st.st_size, st.st_mtime_ns]:
                kept += 1
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.pull{os.getpid()}")
            with self._remote_path(rel).open("rb") as src, open(tmp, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 22)
            os.replace(tmp, dst)
            st = dst.stat()
            state[rel] = [st.st_size, st.st_mtime_ns]
            got += 1
        removed = 0
        for rel in self._list_local():
            # gone from the bucket after this copy put it there (pruned, set aside elsewhere): gone here too; a
            # file never pushed (the last command stopped before its final push) is kept and pushed next
            if rel not in wanted and rel in state and not (skip and skip(rel)):
                (self.local / rel).unlink()
                removed += 1
        _prune_empty_dirs(self.local)
        self._state = {k: v for k, v in state.items() if k in wanted or (skip and skip(k))}
        self._write_state()
        return {"downloaded": got, "unchanged": kept, "removed": removed, "incomplete_checkpoints": sorted(incomplete)}

    # -- push ---------------------------------------------------------------------------------------------------
    def _list_local(self) -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.local):
            rel_dir = os.path.relpath(dirpath, self.local)
            dirnames[:] = [d for d in dirnames if not _skipped(d)]
            for name in filenames:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                if not _skipped(rel):
                    out.append(rel)
        return out

    def push(self) -> dict:
        """Upload what changed since the last push; checkpoint steps complete (marker last); delete from the bucket
        what this copy uploaded and no longer holds. Returns counts."""
        with self._lock:
            files = self._list_local()
            steps: dict[str, list[str]] = {}
            plain = []
            for rel in files:
                s = _checkpoint_step(rel)
                (steps.setdefault(s, []) if s else plain).append(rel)
            sent = 0
            for rel in plain:
                sent += self._upload_if_changed(rel)
            for s, rels in sorted(steps.items()):
                if f"{s}/{COMMIT}" not in rels:  # orbax has not committed it yet
                    continue
                for rel in sorted(rels, key=lambda r: r == f"{s}/{COMMIT}"):  # the marker last
                    sent += self._upload_if_changed(rel)
            present = set(files)
            gone = [rel for rel in self._state if rel not in present]
            # a checkpoint step leaves the bucket marker first, so it is never seen complete but partial
            for rel in sorted(gone, key=lambda r: not r.endswith(COMMIT)):
                self._remote_path(rel).unlink(missing_ok=True)
                del self._state[rel]
            if sent or gone:
                self._write_state()
            return {"uploaded": sent, "deleted": len(gone)}

    def _upload_if_changed(self, rel: str) -> int:
        src = self.local / rel
        try:
            st = src.stat()
        except FileNotFoundError:  # removed while we listed (a pruned checkpoint)
            return 0
        if self._state.get(rel) == [st.st_size, st.st_mtime_ns]:
            return 0
        dst = self._remote_path(rel)
        try:
            f = open(src, "rb")  # once open, the file reads whole even if orbax prunes it meanwhile
        except FileNotFoundError:
            return 0
        with f:
            if rel.endswith(".jsonl"):  # appended to while we read: up to the last complete line
                data = f.read()
                with dst.open("wb") as g:
                    g.write(data[: data.rfind(b"\n") + 1])
            else:
                with dst.open("wb") as g:
                    shutil.copyfileobj(f, g, 1 << 22)
        self._state[rel] = [st.st_size, st.st_mtime_ns]
        return 1

    # -- state --------------------------------------------------------------------------------------------------
    def _read_state(self) -> dict[str, list[int]]:
        try:
            state = json.loads((self.local / STATE).read_text())
            return state if isinstance(state, dict) and state.get("url") == self.url else {}
        except (OSError, ValueError):
            return {}

    def _write_state(self) -> None:
        write_atomic(self.local / STATE, json.dumps({**self._state, "url": self.url}))

    # -- periodic push ------------------------------------------------------------------------------------------
    def start(self) -> "Mirror":
        def loop():
            while not self._stop.wait(self.every):
                try:
                    self.push()
                    self.error = None
                except Exception as e:  # keep training; the final push reports it
                    self.error = f"{type(e).__name__}: {e}"
                    self.log(f"warning: could not push to {self.url} ({self.error}); retrying in {self.every:.0f} s")

        self._thread = threading.Thread(target=loop, name="mirror", daemon=True)
        self._thread.start()
        return self

    def close(self) -> dict:
        """Stop the periodic push and push once more (raises ``RemoteError`` if that fails: the staging directory
        keeps everything, and the next command on this machine pushes it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            return self.push()
        except Exception as e:
            raise PushFailed(f"{self.url}: the final push failed ({type(e).__name__}: {e}); {self.local} keeps every file, "
                              "rerun the command on this machine to push them") from None

    def __enter__(self) -> "Mirror":
        self.check()
        self.pull()
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def local_workdir(out: str, what: str = "run", skip: Callable[[str], bool] | None = None, push: bool = True) -> Iterator[str]:
    """The directory a command works in: ``out`` itself when it is a local path; for a URL its staging directory,
    pulled first, pushed periodically and at the end (however the command ends), with a line on stderr for each.
    A multi-process job is refused (its processes write their shards of each checkpoint; give it a shared file
    system path). ``push=False`` only reads (``sweep status``)."""
    if not is_url(out):
        yield out
        return
    from scaling.parallel import distributed_args, on_cloud_tpu_vm

    env = dict(os.environ)
    if push and distributed_args(env, tpu_vm=not env.get("SCALING_NO_DISTRIBUTED") and on_cloud_tpu_vm()) is not None:
        raise RemoteError(f"{out}: a {what} of several processes writes its checkpoints from every process; give --out a path on a "
                          "file system they share (orbax writes gs:// itself there: train.checkpoint_dir is not separate yet)")
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    m = Mirror(out, log=say)
    m.check()
    try:
        got = m.pull(skip=skip)
    except Exception as e:  # the store answered the check, then failed mid-pull (network, permissions)
        raise RemoteError(f"{out}: the pull into {m.local} failed ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                          "rerun when the store is reachable (what was pulled is kept)") from None
    gap = f", {len(got['incomplete_checkpoints'])} incomplete checkpoint(s) left out" if got["incomplete_checkpoints"] else ""
    say(f"{out}: working in {m.local} (pulled {got['downloaded']} file(s), {got['unchanged']} unchanged{gap})"
        + (f"; pushed every {m.every:.0f} s and at the end" if push else ""))
    if not push:
        yield str(m.local)
        return
    m.start()
    failed = True
    try:
        yield str(m.local)
        failed = False
    finally:
        try:
            sent = m.close()
            say(f"{out}: pushed ({sent['uploaded']} file(s) uploaded, {sent['deleted']} deleted)")
        except RemoteError as e:
            if not failed:
                raise
            say(f"error: {e}")


def _prune_empty_dirs(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        if dirpath != str(root) and not dirnames and not filenames:
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


__all__ = ["Mirror", "PushFailed", "RemoteError", "is_url", "local_workdir", "staging_dir"]
