"""One sweep worker per group of devices of a host (``scaling sweep run --devices-per-worker K``).

Small models waste an 8-GPU host when each run takes every device. With K devices per worker, the host runs
devices / K ``scaling sweep run`` processes on the same sweep directory, each pinned to its own devices before JAX
starts (GPUs: ``CUDA_VISIBLE_DEVICES``; CPU: ``--xla_force_host_platform_device_count``), and the sweep's claims
give every run to exactly one of them. The parent counts the host's devices in a short child process (so it never
holds a GPU itself), forwards preemption and interrupt signals to every worker, and exits like one worker would:
75 when any was preempted (so a slurm task requeues), 130 when stopped, 1 when any run failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from scaling.config import ConfigError
from scaling.devices import with_cpu_devices
from scaling import exits

PROBE = "import jax, json; d = jax.local_devices(); print(json.dumps({'n': len(d), 'platform': d[0].platform}))"


def host_devices(env: dict | None = None) -> tuple[int, str]:
    """(local device count, platform) as a fresh JAX process sees them."""
    env = dict(os.environ if env is None else env, SCALING_NO_DISTRIBUTED="1")
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    if p.returncode != 0:
        raise ConfigError(f"--devices-per-worker: could not count this host's devices: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    d = json.loads(p.stdout.strip().splitlines()[-1])
    return int(d["n"]), d["platform"]


def worker_envs(k: int, n: int, platform: str, env: dict) -> list[dict]:
    """The environment of each of the n // k workers, pinned to its devices; refuses an impossible split."""
    if k < 1:
        raise ConfigError(f"--devices-per-worker must be >= 1, got {k}")
    if k > n:
        raise ConfigError(f"--devices-per-worker {k}: this host has {n} {platform} device{'s' * (n != 1)}")
    if n % k:
        raise ConfigError(f"--devices-per-worker {k}: this host's {n} {platform} devices are not a multiple of {k}")
    if platform not in ("gpu", "cuda", "rocm", "cpu"):
        raise ConfigError(f"--devices-per-worker pins GPUs or CPU devices; on {platform} run one worker per host")
    out = []
    for w in range(n // k):
        e = dict(env, SCALING_NO_DISTRIBUTED="1", SCALING_WORKER=str(w))
        if platform == "cpu":
            e = with_cpu_devices(e, k)
            e["JAX_PLATFORMS"] = "cpu"
        else:
            visible = env.get("CUDA_VISIBLE_DEVICES")
            ids = visible.split(",") if visible else [str(i) for i in range(n)]
            e["CUDA_VISIBLE_DEVICES"] = ",".join(ids[w * k : (w + 1) * k])
        out.append(e)
    return out


def run_per_device(argv: list[str], k: int) -> int:
    """Run ``scaling sweep run`` with ``argv`` (without --devices-per-worker) once per K devices; the exit code."""
    n, platform = host_devices()
    envs = worker_envs(k, n, platform, dict(os.environ))
    cmd = [sys.executable, "-m", "scaling", "sweep", "run", *argv]
    print(f"{len(envs)} workers of {k} {platform} device{'s' * (k != 1)} each on this host's {n}", file=sys.stderr, flush=True)
    procs = [subprocess.Popen(cmd, env=e) for e in envs]
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)}
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    codes = [p.returncode for p in procs]
    if exits.PREEMPTED in codes:
        return exits.PREEMPTED
    if exits.STOPPED in codes or received:
        return exits.STOPPED if signal.SIGINT in received or exits.STOPPED in codes else exits.PREEMPTED
    if 2 in codes:
        return 2
    return 1 if any(codes) else 0


__all__ = ["host_devices", "run_per_device", "worker_envs"]
