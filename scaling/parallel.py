"""Data parallelism over every device: one ``jax.make_mesh`` mesh with a ``data`` axis, declared shardings.

Parameters and optimizer state are replicated; the batch is sharded on its leading axis. ``jax.jit`` inserts the
gradient all-reduce. Multi-host: ``maybe_initialize_distributed`` calls ``jax.distributed.initialize()`` when the
usual environment (JAX_COORDINATOR_ADDRESS, or SLURM / Open MPI variables) is present; each process then builds
only its rows of the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from scaling.config import ConfigError

_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")


def enable_compilation_cache(cache_dir: str | None = None) -> None:
    """Persist compiled XLA programs (sweeps and resumes recompile the same shapes); the user's
    JAX_COMPILATION_CACHE_DIR wins. Cached programs are the same programs: numbers do not change."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return
    from pathlib import Path

    root = Path(cache_dir or os.environ.get("SCALING_CACHE") or Path.home() / ".cache" / "scaling").expanduser()
    jax.config.update("jax_compilation_cache_dir", str(root / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def maybe_initialize_distributed() -> bool:
    """Join a multi-process JAX job when the environment describes one; a no-op otherwise. It makes no other JAX
    call first (``jax.distributed.initialize`` must precede every backend call, ``jax.process_count()`` included).

    ``JAX_COORDINATOR_ADDRESS`` (+ ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) are passed explicitly; under slurm
    with several tasks, or Open MPI, JAX detects the cluster itself."""
    if jax.distributed.is_initialized():
        return True
    if os.environ.get("SCALING_NO_DISTRIBUTED") or not any(k in os.environ for k in _DISTRIBUTED_ENV):
        return False
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        kw = {"coordinator_address": os.environ["JAX_COORDINATOR_ADDRESS"]}
        if "JAX_NUM_PROCESSES" in os.environ:
            kw["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
        if "JAX_PROCESS_ID" in os.environ:
            kw["process_id"] = int(os.environ["JAX_PROCESS_ID"])
        jax.distributed.initialize(**kw)
        return True
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return False
    jax.distributed.initialize()
    return True


@dataclass(frozen=True)
class DataParallel:
    mesh: jax.sharding.Mesh

    @classmethod
    def create(cls) -> "DataParallel":
        # Auto axis types: an embedding gather on a sharded batch fails under the default Explicit types.
        mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
        return cls(mesh)

    @property
    def n_devices(self) -> int:
        return self.mesh.size

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def local_rows(self, global_batch: int) -> slice:
        n, i = jax.process_count(), jax.process_index()
        per = global_batch // n
        return slice(i * per, (i + 1) * per)

    def check_batch(self, global_batch: int, field: str = "train.batch_size") -> None:
        if global_batch % self.n_devices:
            raise ConfigError(f"{field}={global_batch} must be divisible by the number of devices ({self.n_devices})")

    def put_batch(self, local_rows: np.ndarray, global_shape: tuple[int, ...]) -> jax.Array:
        """This process's rows -> one global array sharded over ``data``."""
        return jax.make_array_from_process_local_data(self.batch, local_rows, global_shape)

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)

    @property
    def max_in_flight(self) -> int | None:
        """How many dispatched multi-device programs may be unfinished at once (None: no limit).

        XLA's CPU client runs each fake device's part of a program on a shared thread pool and its collectives
        block until every device arrives; with dozens of executions queued, the pool fills with participants of
        later executions and an earlier one never completes (measured: 8 CPU devices deadlock with 64 steps in
        flight, never with <= 16). Real accelerators queue per device and need no limit."""
        return 4 if jax.devices()[0].platform == "cpu" and self.n_devices > 1 else None


class InFlight:
    """Bounds asynchronous dispatch: ``add(x)`` blocks on the oldest of more than ``limit`` pending results."""

    def __init__(self, limit: int | None):
        from collections import deque

        self.limit, self.pending = limit, deque()

    def add(self, x) -> None:
        if self.limit is None:
            return
        self.pending.append(x)
        if len(self.pending) > self.limit:
            jax.block_until_ready(self.pending.popleft())
