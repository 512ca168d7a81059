"""Parallelism as data: one device mesh with named axes and one table that maps logical axis names to them.

Mesh axes (``parallel:`` config section; the product of their sizes is the device count):

* ``data``: the batch is split; parameters and optimizer state are replicated (``jax.jit`` inserts the gradient
  all-reduce).
* ``fsdp``: the batch is split *and* parameters and optimizer state are sharded along their ``embed`` axis
  (ZeRO-3 / fully sharded data parallel); XLA all-gathers each weight where it is used and reduce-scatters its
  gradient.
* ``tensor``: attention heads, the MLP hidden width and the vocabulary are split (Megatron-style).
* ``expert``: the experts of MoE layers are split; the batch is split over it too, so tokens travel to their
  experts' shards (all-to-all, inserted by XLA from the sharding constraints in ``scaling.model.moe``).

Model code never names a mesh axis: every parameter carries logical axis names (``scaling.model.axes``) and
``LOGICAL_RULES`` below is the only place they meet the mesh (MaxText's ``logical_axis_rules``). A dimension that
its mesh axes do not divide is left unsharded (e.g. 3 heads over ``tensor: 2``).

Multi-host: ``maybe_initialize_distributed`` joins the job; each process loads only its rows of the global batch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from scaling.config import ConfigError, ParallelConfig

MESH_AXES = ("data", "fsdp", "tensor", "expert")

# logical axis -> the mesh axes it is split over, in order. Everything not listed is replicated.
LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp", "expert"),
    "batch_no_expert": ("data", "fsdp"),  # activations whose expert axis holds experts (MoE dispatch buffers)
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "expert": ("expert",),
}


def enable_compilation_cache(cache_dir: str | None = None) -> None:
    """Persist compiled XLA programs (sweeps and resumes recompile the same shapes); the user's
    JAX_COMPILATION_CACHE_DIR wins. Cached programs are the same programs: numbers do not change."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return
    from pathlib import Path

    root = Path(cache_dir or os.environ.get("SCALING_CACHE") or Path.home() / ".cache" / "scaling").expanduser()
    jax.config.update("jax_compilation_cache_dir", str(root / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def on_cloud_tpu_vm() -> bool:
    """A Cloud TPU VM: Google's PCI vendor id on an attached device (as JAX itself detects it) or the TPU runtime's
    worker variables."""
    import glob

    if any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if open(vendor).read().strip() == "0x1ae0":
                return True
        except OSError:
            continue
    return False


def distributed_args(env: dict, tpu_vm: bool = False) -> dict | None:
    """How this process joins a multi-process JAX job: ``None`` (it runs alone) or the keyword arguments of
    ``jax.distributed.initialize`` (``{}``: JAX detects the cluster itself, as on TPU pods, slurm with several tasks
    and Open MPI). An environment that describes a job only in part is refused with one line naming what is missing."""
    if env.get("SCALING_NO_DISTRIBUTED"):
        return None
    explicit = {k: env[k] for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if env.get(k)}
    if explicit:
        if "JAX_COORDINATOR_ADDRESS" not in explicit:
            raise ConfigError(f"{' and '.join(explicit)} set without JAX_COORDINATOR_ADDRESS=host:port (the process 0 address every process connects to)")
        addr = explicit["JAX_COORDINATOR_ADDRESS"]
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"JAX_COORDINATOR_ADDRESS={addr!r} is not host:port")
        kw: dict = {"coordinator_address": addr}
        auto = tpu_vm or int(env.get("SLURM_NTASKS", "1") or 1) > 1 or "OMPI_COMM_WORLD_SIZE" in env
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in explicit]
        if missing and not auto:
            raise ConfigError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} is not: set all three on every process (or none)")
        for key, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
            if key in explicit:
                if not explicit[key].isdigit():
                    raise ConfigError(f"{key}={explicit[key]!r} is not a non-negative integer")
                kw[arg] = int(explicit[key])
        if kw.get("num_processes") == 0 or ("process_id" in kw and "num_processes" in kw and kw["process_id"] >= kw["num_processes"]):
            raise ConfigError(f"JAX_PROCESS_ID={kw.get('process_id')} must be below JAX_NUM_PROCESSES={kw.get('num_processes')}")
        return kw
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return {}
    if "OMPI_COMM_WORLD_SIZE" in env or tpu_vm:
        return {}
    return None


def maybe_initialize_distributed() -> bool:
    """Join a multi-process JAX job when the environment describes one; a no-op otherwise. It makes no other JAX
    call first (``jax.distributed.initialize`` must precede every backend call, ``jax.process_count()`` included).

    ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` are passed explicitly; on a Cloud TPU
    VM (every worker of a pod slice runs the same command), under slurm with several tasks, or Open MPI, JAX
    detects the cluster itself (``distributed_args``)."""
    if jax.distributed.is_initialized():
        return True
    env = dict(os.environ)
    kw = distributed_args(env, tpu_vm=not env.get("SCALING_NO_DISTRIBUTED") and on_cloud_tpu_vm())
    if kw is None:
        return False
    # CPU devices of several processes talk through gloo (a no-op setting on GPU / TPU backends).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kw)
    return True


def mesh_shape(cfg: ParallelConfig, n_devices: int) -> dict[str, int]:
    """Axis sizes with -1 resolved; their product must be the device count (else a ConfigError naming them)."""
    sizes = {a: getattr(cfg, a) for a in MESH_AXES}
    known = math.prod(v for v in sizes.values() if v != -1)
    for a, v in sizes.items():
        if v == -1:
            if n_devices % known:
                raise ConfigError(f"parallel.{a}=-1: {n_devices} devices are not divisible by the other axes' product {known}")
            sizes[a] = n_devices // known
    if math.prod(sizes.values()) != n_devices:
        got = " x ".join(f"{a}={v}" for a, v in sizes.items())
        raise ConfigError(f"parallel: {got} = {math.prod(sizes.values())} devices, but there are {n_devices}; set one axis to -1 or make the product {n_devices}")
    return sizes


def partition_spec(logical_axes: tuple[str | None, ...], shape: tuple[int, ...] | None, sizes: dict[str, int]) -> P:
    """The PartitionSpec of an array with these logical axes on a mesh of these axis sizes: each dimension over the
    mesh axes its rule names, skipping axes of size 1, axes an earlier dimension already uses, and any that would
    not divide the dimension. A pure function of sizes, so the memory planner can use it for meshes not present."""
    used: set[str] = set()
    out = []
    for i, name in enumerate(logical_axes):
        axes = []
        for a in LOGICAL_RULES.get(name, ()) if name else ():
            if sizes[a] == 1 or a in used:
                continue
            size = math.prod(sizes[x] for x in axes) * sizes[a]
            if shape is not None and shape[i] % size:
                continue
            axes.append(a)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return P(*out)


def shard_shape(shape: tuple[int, ...], spec: P, sizes: dict[str, int]) -> tuple[int, ...]:
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if entry is None else (entry,) if isinstance(entry, str) else entry
        out.append(dim // math.prod(sizes[a] for a in names))
    return tuple(out)


@dataclass(frozen=True)
class Parallel:
    """The mesh and the shardings derived from it: parameters by their logical axes, the batch over
    ``data`` x ``fsdp`` x ``expert``."""

    mesh: jax.sharding.Mesh

    @classmethod
    def create(cls, cfg: ParallelConfig | None = None) -> "Parallel":
        sizes = mesh_shape(cfg or ParallelConfig(), jax.device_count())
        # Auto axis types: the compiler propagates shardings from the declared inputs and outputs (an embedding
        # gather on a sharded batch fails under the default Explicit types).
        mesh = jax.make_mesh(tuple(sizes.values()), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
        return cls(mesh)

    @property
    def n_devices(self) -> int:
        return self.mesh.size

    @property
    def sizes(self) -> dict[str, int]:
        return dict(self.mesh.shape)

    # -- specs ------------------------------------------------------------------------------------------------
    def spec(self, logical_axes: tuple[str | None, ...], shape: tuple[int, ...] | None = None) -> P:
        return partition_spec(logical_axes, shape, dict(self.mesh.shape))

    def sharding(self, logical_axes, shape=None) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical_axes, shape))

    def activation_rules(self):
        """Install the logical-to-mesh mapping for activation constraints in model code while tracing."""
        from scaling.model.axes import sharding_rules

        return sharding_rules(self.sharding)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(("batch",)))

    @property
    def batch_shards(self) -> int:
        spec = self.spec(("batch",))[0]
        names = () if spec is None else (spec,) if isinstance(spec, str) else spec
        return math.prod(self.mesh.shape[a] for a in names)

    def state_shardings(self, abstract_tree):
        """Shardings for a tree of (abstract) NNX variables and arrays: a variable by the logical axes in its
        ``out_sharding`` metadata (optimizer moments inherit their parameter's), anything else replicated."""
        from flax import nnx

        def one(x):
            if isinstance(x, nnx.Variable):
                axes = x.get_metadata().get("out_sharding")
                value = x.get_value()
                if axes:
                    return x.replace(self.sharding(tuple(axes), tuple(value.shape)))
                return x.replace(self.replicated)
            return self.replicated

        return jax.tree.map(one, abstract_tree, is_leaf=lambda x: isinstance(x, nnx.Variable))

    # -- data -------------------------------------------------------------------------------------------------
    def local_rows(self, global_batch: int) -> slice:
        """The rows of a global batch whose shards live on this process's devices (one contiguous block: the mesh
        lists each process's devices together)."""
        if jax.process_count() == 1:
            return slice(0, global_batch)
        index = self.batch.addressable_devices_indices_map((global_batch,))
        starts = sorted({(idx[0].start or 0, idx[0].stop or global_batch) for idx in index.values()})
        lo, hi = starts[0][0], starts[-1][1]
        assert sum(b - a for a, b in starts) == hi - lo, f"this process's batch rows are not contiguous: {starts}"
        return slice(lo, hi)

    def check_batch(self, global_batch: int, field: str = "train.batch_size") -> None:
        if global_batch % self.batch_shards:
            raise ConfigError(
                f"{field}={global_batch} must be divisible by the {self.batch_shards} batch shards "
                f"(parallel.data x fsdp x expert on {self.n_devices} devices)"
            )

    def put_batch(self, local_rows: np.ndarray, global_shape: tuple[int, ...]) -> jax.Array:
        """This process's rows -> one global array sharded over the batch axes."""
        return jax.make_array_from_process_local_data(self.batch, local_rows, global_shape)

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)

    @staticmethod
    def any_process(flag: bool) -> bool:
        """True on every process if it is true on any (a collective: every process must call it together)."""
        if jax.process_count() == 1:
            return flag
        from jax.experimental import multihost_utils

        return bool(np.asarray(multihost_utils.process_allgather(np.array(flag))).any())

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

