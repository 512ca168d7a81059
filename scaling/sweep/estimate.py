"""Memory and wall-time estimates of a run on the devices it will run on (for ``scaling sweep plan``).

Memory: the planner of ``scaling.memory`` (parameters, gradients and optimizer state as sharded on the run's
mesh, activations of its remat policy), the same numbers ``scaling memory`` prints. Time: C / (sustained FLOP/s) +
a fixed per-run overhead (compile, evaluation, checkpoints). The devices are this machine's (the sustained rate 40%
of the known peak on accelerators, or on CPUs 30% of a measured float32 matmul rate) or named ones
(``DeviceInfo.named``: ``sweep plan --device h100 --devices 8`` from a login node, at a stated MFU).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp

from scaling.model.accounting import flops_per_token
from scaling.devices import peak_flops
from scaling.config import RunConfig

RUN_OVERHEAD_S = 8.0
DEFAULT_MFU = 0.4  # of the peak: an assumption for planning (MaxText reports 50-60% at larger sizes); --mfu sets it


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


    @classmethod
    def named(cls, device: str, count: int, mfu: float = DEFAULT_MFU) -> "DeviceInfo":
        """``count`` devices of a kind in ``scaling.devices.DEVICES`` (h100, a100, tpu-v5e, ...), sustaining ``mfu``
        of their peak dense bf16 FLOP/s; a one-line ``ConfigError`` for an unknown name or a bad count / MFU."""
        from scaling.config import ConfigError
        from scaling.devices import DEVICES

        if device not in DEVICES or device == "cpu":
            raise ConfigError(f"--device {device!r} is not known; known: {', '.join(d for d in DEVICES if d != 'cpu')} (omit it to plan for this machine)")
        if count < 1:
            raise ConfigError(f"--devices must be >= 1, got {count}")
        if not 0 < mfu <= 1:
            raise ConfigError(f"--mfu must be in (0, 1], got {mfu}")
        peak = peak_flops(device.replace("-", " "))
        return cls(device, count, DEVICES[device][0], mfu * peak * count, f"{100 * mfu:.0f}% MFU of {device}'s {peak / 1e12:.0f} TFLOP/s bf16 peak")


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
    """The ``scaling.devices.DEVICES`` entry for a JAX device kind (cpu for anything unknown)."""
    from scaling.devices import DEVICES

    k = kind.lower().replace(" ", "")
    for name in sorted(DEVICES, key=len, reverse=True):
        if name.replace("-", "") in k.replace("-", ""):
            return name
    return "cpu"


def _devices() -> dict:
    from scaling.devices import DEVICES

    return DEVICES


def estimate(cfg: RunConfig, dev: DeviceInfo | None = None) -> dict:
    from scaling.memory import plan_memory

    dev = dev or DeviceInfo.current()
    mem = plan_memory(cfg, dev.kind if dev.kind in _devices() else device_key(dev.kind), dev.count).total
    flops = flops_per_token(cfg.model, cfg.train.flops_attention) * cfg.steps * cfg.tokens_per_step
    return {"memory_bytes": mem, "time_s": flops / dev.sustained_flops + RUN_OVERHEAD_S, "flops": flops}
