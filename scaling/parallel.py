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
    if jax.process_count() > 1:
        return True
    if os.environ.get("SCALING_NO_DISTRIBUTED") or not any(k in os.environ for k in _DISTRIBUTED_ENV):
        return False
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
            raise ValueError(f"{field}={global_batch} must be divisible by the number of devices ({self.n_devices})")

    def put_batch(self, local_rows: np.ndarray, global_shape: tuple[int, ...]) -> jax.Array:
        """This process's rows -> one global array sharded over ``data``."""
        return jax.make_array_from_process_local_data(self.batch, local_rows, global_shape)

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)
