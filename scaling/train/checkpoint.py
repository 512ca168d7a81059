"""orbax-checkpoint ``CheckpointManager``: periodic, keep-last-k plus pinned steps, atomic (written to a temporary
directory and renamed on commit, so a kill mid-save leaves the previous checkpoint intact), sharded arrays saved
and restored in place (a restore may target another mesh: the shardings of ``like`` decide)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import orbax.checkpoint as ocp

cm = ocp.checkpoint_managers


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
        """Start an asynchronous save; the previous one is waited for first, so it is then known committed."""
        self.mgr.wait_until_finished()
        if self._pending is not None:
            self.committed_step = self._pending
        self.mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self._pending = step

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """Restore ``step`` into the structure, dtypes and *shardings* of ``like`` (arrays or ShapeDtypeStructs)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        out = self.mgr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        return out["state"], out["meta"]

    def read_meta(self, step: int) -> dict:
        """The JSON metadata saved with checkpoint ``step`` (without reading the arrays)."""
        return self.mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        self.mgr.wait_until_finished()

    def close(self) -> None:
        self.mgr.wait_until_finished()
        if self._pending is not None:
            self.committed_step = self._pending
        self.mgr.close()
