"""Memory and wall-time estimates of a run on the current devices (for ``scaling sweep plan``).

Memory: the planner of ``scaling.memory`` (parameters, gradients and optimizer state as sharded on the run's
mesh, activations of its remat policy), the same numbers ``scaling memory`` prints. Time: C / (sustained FLOP/s) + a fixed per-run overhead (compile, evaluation, checkpoints), where the
sustained rate is 40% of the known peak on accelerators, or on CPUs 30% of a measured float32 matmul rate.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp

from scaling.accounting import flops_per_token
from scaling.bench import peak_flops
from scaling.config import RunConfig

RUN_OVERHEAD_S = 8.0


@dataclass(frozen=True)
class DeviceInfo:
    kind: str
    count: int
    memory_bytes: float
    sustained_flops: float
    basis: str

    @classmethod
    @lru_cache(maxsize=1)
    def current(cls) -> "DeviceInfo":
        d = jax.devices()[0]
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if stats and "bytes_limit" in stats:
            mem = float(stats["bytes_limit"])
        else:
            mem = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        peak = peak_flops(d.device_kind)
        if peak:
            rate, basis = 0.4 * peak * jax.device_count(), f"40% of {d.device_kind} peak"
        else:
            rate, basis = 0.3 * _measured_matmul_flops() * jax.device_count(), "30% of a measured float32 matmul rate"
        return cls(d.device_kind, jax.device_count(), mem, rate, basis)


def _measured_matmul_flops(n: int = 512, reps: int = 10) -> float:
    x = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        y = f(x)
    y.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def device_key(kind: str) -> str:
    """The ``scaling.memory.DEVICES`` entry for a JAX device kind (cpu for anything unknown)."""
    from scaling.memory import DEVICES

    k = kind.lower().replace(" ", "")
    for name in sorted(DEVICES, key=len, reverse=True):
        if name.replace("-", "") in k.replace("-", ""):
            return name
    return "cpu"


def estimate(cfg: RunConfig, dev: DeviceInfo | None = None) -> dict:
    from scaling.memory import plan_memory

    dev = dev or DeviceInfo.current()
    mem = plan_memory(cfg, device_key(dev.kind), dev.count).total
    flops = flops_per_token(cfg.model, cfg.train.flops_attention) * cfg.steps * cfg.tokens_per_step
    return {"memory_bytes": mem, "time_s": flops / dev.sustained_flops + RUN_OVERHEAD_S, "flops": flops}
