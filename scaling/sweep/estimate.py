"""Rough memory and wall-time estimates of a run on the current device (for ``scaling sweep plan``).

Memory: 16 bytes per parameter (float32 params, grads, two Adam moments) plus activations
(~34 * B * L * d_model * n_layers bytes in the compute dtype, Korthikanti et al.) plus 3 float32 copies of the
logits. Time: C / (sustained FLOP/s) + a fixed per-run overhead (compile, evaluation, checkpoints), where the
sustained rate is 40% of the known peak on accelerators, or on CPUs 30% of a measured float32 matmul rate.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp

from scaling.accounting import count_params, flops_per_token
from scaling.bench import peak_flops
from scaling.config import RunConfig
from scaling.model import compute_dtype

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


def estimate(cfg: RunConfig, dev: DeviceInfo | None = None) -> dict:
    dev = dev or DeviceInfo.current()
    m = cfg.model
    n = count_params(m).total
    micro = cfg.train.batch_size // cfg.train.grad_accum // max(1, dev.count)
    bytes_dt = jnp.dtype(compute_dtype(m)).itemsize
    acts = 17 * micro * m.seq_len * m.d_model * m.n_layers * bytes_dt
    logits = 3 * 4 * micro * m.seq_len * m.vocab_size
    mem = 16 * n + acts + logits
    flops = flops_per_token(m, cfg.train.flops_attention) * cfg.steps * cfg.tokens_per_step
    return {"memory_bytes": mem, "time_s": flops / dev.sustained_flops + RUN_OVERHEAD_S, "flops": flops}
