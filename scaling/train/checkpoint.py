"""orbax-checkpoint ``CheckpointManager``: periodic, keep-last-k plus pinned steps, atomic (written to a temporary
directory and renamed on commit, so a kill mid-save leaves the previous checkpoint intact), sharded arrays saved
and restored in place (a restore may target another mesh: the shardings of ``like`` decide).

Every checkpoint is verified on restore. Its metadata carries two checksums per array, computed on the devices
before the save: the sum of the array's 32-bit words and the sum of each word times its position, both modulo
2^32 (integer addition wraps exactly, so the result does not depend on the mesh, the reduction order or the number
of processes; any single changed word changes the first, a reordering the second). The restored arrays are
checked against them, so a checkpoint whose files were truncated, overwritten or mixed up is detected whatever
TensorStore makes of it, and never trained on (``CheckpointDamaged``); the training loop then sets it aside
(``set_aside``, renamed, not deleted) and falls back to the newest intact one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from scaling.storage import quiet_library_noise

cm = ocp.checkpoint_managers
CHECKSUMS = "checksums"


class CheckpointDamaged(Exception):
    """A checkpoint that cannot be used: unreadable, or its arrays do not match the checksums saved with them."""


def _words(x: jax.Array) -> jax.Array:
    """The array's bytes as uint32 words (narrower types widened word by word; 64-bit types split in two)."""
    size = jnp.dtype(x.dtype).itemsize
    if size == 4:
        w = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif size == 8:
        w = jax.lax.bitcast_convert_type(x, jnp.uint32)  # (..., 2)
    else:
        w = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)
    return w.reshape(-1)


def _checksum(x: jax.Array) -> jax.Array:
    w = _words(x)
    pos = jnp.arange(1, w.shape[0] + 1, dtype=jnp.uint32)
    return jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * pos, dtype=jnp.uint32)])


@jax.jit
def _all_checksums(leaves: list) -> jax.Array:
    """One program for the whole state (one set of collectives when arrays span processes): (n_leaves, 2)."""
    return jnp.stack([_checksum(x) for x in leaves])


BLOCK = 4096  # words per row of the host computation: sum_i (i+1) w_i = K sum_b b S_b + sum_j (j+1) T_j
CHUNK_ROWS = 64  # rows summed both ways while they are in cache (64 x 16 KB): one pass over memory, not two


def _host_checksum(x: np.ndarray) -> tuple[int, int]:
    """The same two sums on the host, in numpy: row sums S_b and column sums T_j of a (n / K, K) view, in uint32
    (wrapping addition is exact mod 2^32), taken chunk by chunk so each chunk is read from memory once for both
    (one pass at memory speed; the tail's partial row is padded alone instead of copying the array; 1- and 2-byte
    types are widened to uint32 first, a copy, as are non-contiguous inputs)."""
    a = np.ascontiguousarray(x)
    size = a.dtype.itemsize
    w = a.view(np.uint32) if size in (4, 8) else a.view({1: np.uint8, 2: np.uint16}[size]).astype(np.uint32)
    w = w.reshape(-1)
    full = len(w) // BLOCK
    rows = np.zeros(full + 1, np.uint32)
    cols = np.zeros(BLOCK, np.uint32)
    part = np.empty(BLOCK, np.uint32)
    m, row_sums = w[: full * BLOCK].reshape(full, BLOCK), rows[:full]
    for i in range(0, full, CHUNK_ROWS):
        c = m[i : i + CHUNK_ROWS]
        np.add.reduce(c, axis=1, dtype=np.uint32, out=row_sums[i : i + CHUNK_ROWS])
        np.add.reduce(c, axis=0, dtype=np.uint32, out=part)
        cols += part
    tail = w[full * BLOCK :]
    if len(tail):
        rows[full] = np.add.reduce(tail, dtype=np.uint32)
        cols[: len(tail)] += tail
    rows, cols = rows.astype(np.uint64), cols.astype(np.uint64)
    s1 = int(rows.sum(dtype=np.uint64)) & 0xFFFFFFFF
    b = np.arange(len(rows), dtype=np.uint64)
    j = np.arange(1, BLOCK + 1, dtype=np.uint64)
    s2 = (BLOCK * (int(((b * rows) & 0xFFFFFFFF).sum(dtype=np.uint64)) & 0xFFFFFFFF) + int(((j * cols) & 0xFFFFFFFF).sum(dtype=np.uint64))) & 0xFFFFFFFF
    return s1, s2


def checksums(tree: Any) -> dict[str, list[int]]:
    """``{leaf path: [sum of words, position-weighted sum]}`` (mod 2^32) of every array of ``tree``; a collective
    when arrays span processes (every process calls it). On a CPU the arrays are summed in numpy on two threads
    (numpy releases the GIL); elsewhere in one XLA program on the devices. Both give the same numbers."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    leaves = [x for _, x in flat]
    if jax.default_backend() == "cpu" and all(getattr(x, "is_fully_addressable", True) for x in leaves):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as ex:
            host = list(ex.map(lambda x: _host_checksum(np.asarray(x)), leaves))
        return {jax.tree_util.keystr(p): [int(a), int(b)] for (p, _), (a, b) in zip(flat, host)}
    sums = _all_checksums(leaves)
    if not sums.is_fully_addressable:  # replicated over every process's devices: read this process's copy
        sums = sums.addressable_data(0)
    sums = np.asarray(jax.device_get(sums))
    return {jax.tree_util.keystr(p): [int(v) for v in row] for (p, _), row in zip(flat, sums)}


class Checkpointer:
    def __init__(self, directory: Path, keep: int, keep_steps: Sequence[int] = (), read_only: bool = False):
        # keep the newest `keep`, and every step in keep_steps (branch points other runs start from) forever
        policies = [cm.LatestN(keep)] + ([cm.CustomSteps(list(keep_steps))] if keep_steps else [])
        self.mgr = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                preservation_policy=cm.AnyPreservationPolicy(policies), create=not read_only, read_only=read_only
            ),
        )
        self._pending: int | None = None
        self.committed_step: int | None = self.mgr.latest_step()

    def latest_step(self) -> int | None:
        """The newest checkpoint on disk (at start-up: only committed ones are found)."""
        return self.mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.mgr.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start an asynchronous save (with the state's checksums in its metadata); the previous one is waited for
        first, so it is then known committed."""
        self.mgr.wait_until_finished()
        if self._pending is not None:
            self.committed_step = self._pending
        meta = {**meta, CHECKSUMS: checksums(state)}
        self.mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self._pending = step

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """Restore ``step`` into the structure, dtypes and *shardings* of ``like`` (arrays or ShapeDtypeStructs),
        verified against its checksums; ``CheckpointDamaged`` (one line) when it cannot be read or does not match."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            out = self.mgr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            )
        except (KeyError, TypeError):  # a structure that does not fit the model: not damage
            raise
        except Exception as e:  # TensorStore / JSON / OS errors of a truncated or overwritten file
            quiet_library_noise()
            raise CheckpointDamaged(f"checkpoint {step} cannot be read: {_first_line(e)}") from None
        saved = (out["meta"] or {}).get(CHECKSUMS)
        if saved is not None:
            got = checksums(out["state"])
            bad = [k for k in saved if got.get(k) != saved[k]]
            if bad or set(got) != set(saved):
                raise CheckpointDamaged(f"checkpoint {step}: {len(bad)} array(s) do not match their saved checksums ({', '.join(bad[:3])})")
        return out["state"], out["meta"]

    def read_meta(self, step: int) -> dict:
        """The JSON metadata saved with checkpoint ``step`` (without reading the arrays); ``CheckpointDamaged``
        when it cannot be read."""
        try:
            return self.mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            quiet_library_noise()
            raise CheckpointDamaged(f"checkpoint {step}: its metadata cannot be read: {_first_line(e)}") from None

    def set_aside(self, step: int) -> Path:
        """Rename a damaged checkpoint out of the manager's sight (kept for inspection, never loaded); its new path.
        Process 0 renames, every process then sees the rest."""
        src = Path(self.mgr.directory) / str(step)
        dst = src.with_name(f"damaged-{step}-{time.strftime('%Y%m%dT%H%M%S')}")
        if jax.process_index() == 0 and src.exists():
            src.rename(dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"set_aside_{step}")
        self.mgr.reload()
        if self.committed_step == step:
            self.committed_step = self.mgr.latest_step()
        return dst

    def wait(self) -> None:
        self.mgr.wait_until_finished()

    def close(self) -> None:
        self.mgr.wait_until_finished()
        if self._pending is not None:
            self.committed_step = self._pending
        self.mgr.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0].split(" See full TensorStore details")[0][:200] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
