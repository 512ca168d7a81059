"""A fake object store for tests: ``gs://BUCKET/...`` served from a local directory (``$FAKE_BUCKET_ROOT/BUCKET``)
through fsspec, with an object store's limits: no append, no rename (a write replaces the whole object). Registered
in a process by ``register()``; subprocesses get it through ``tests/support/fake_bucket_site/sitecustomize.py``
(on their PYTHONPATH)."""

from __future__ import annotations

import os

from fsspec.implementations.local import LocalFileSystem


class FakeBucketFileSystem(LocalFileSystem):
    protocol = ("gs", "gcs")
    root_marker = ""

    def __init__(self, *args, finalize_on_close=None, **kwargs):
        kwargs.setdefault("auto_mkdir", True)  # an object store has no directories to create
        super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for p in ("gs://", "gcs://"):
            if path.startswith(p):
                path = path[len(p):]
        root = os.environ["FAKE_BUCKET_ROOT"]
        return path if path.startswith(root) else os.path.join(root, path.lstrip("/")).rstrip("/")

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode:
            raise NotImplementedError("object storage cannot append")
        return super()._open(path, mode=mode, **kwargs)

    def mv(self, *args, **kwargs):
        raise NotImplementedError("object storage has no rename")


def register() -> None:
    import fsspec

    fsspec.register_implementation("gs", FakeBucketFileSystem, clobber=True)
    fsspec.register_implementation("gcs", FakeBucketFileSystem, clobber=True)
