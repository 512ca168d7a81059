"""The quickstart's worker processes: the sweep shared by this process and helper workers, and the held-out run
trained data-parallel in a child. Children are ``python -m scaling.quickstart.child``; a stop of this process
stops them as preemptions (checkpointed, resumable)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scaling.devices import with_cpu_devices
from scaling.quickstart.sizes import QuickstartSize

CHILD = [sys.executable, "-m", "scaling.quickstart.child"]


class QuickstartError(RuntimeError):
    """A stage of the quickstart failed (the message says which and where its output is)."""


def stop_child(p: subprocess.Popen, timeout: float = 120) -> None:
    """SIGTERM a child still running (it checkpoints and exits as preempted); kill it if it has not exited in
    ``timeout`` seconds."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_sweeps(sweeps: list[tuple[dict, Path]], size: QuickstartSize, progress: bool, should_stop) -> None:
    """Train the sweeps with ``size.workers`` processes: this one (with the progress bar) and helpers running
    ``scaling sweep run`` on the same directories (runs are claimed, so none is trained twice)."""
    import yaml

    from scaling.sweep.collect import collect
    from scaling.sweep.runner import run_sweep
    from scaling.sweep.spec import parse_sweep
    from scaling.ui import progress_bar

    specs = [parse_sweep(raw) for raw, _ in sweeps]  # both validated before anything trains
    pairs = []
    for raw, d in sweeps:
        d.mkdir(parents=True, exist_ok=True)
        (d.parent / f"{d.name}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        pairs += [str(d.parent / f"{d.name}.yaml"), str(d)]
    helpers = []
    env = dict(os.environ)
    for w in range(size.workers - 1):
        log = open(sweeps[0][1].parent / f"worker{w + 1}.log", "a")
        helpers.append(subprocess.Popen(CHILD + ["sweeps", *pairs], stdout=log, stderr=subprocess.STDOUT, env=env))
    try:
        for spec, (raw, d) in zip(specs, sweeps):
            with progress_bar(progress) as bar:
                res = run_sweep(spec, d, progress=bar, should_stop=should_stop, sweep_yaml=yaml.safe_dump(raw, sort_keys=False))
            if res.stopped:
                raise KeyboardInterrupt("stopped; rerun to resume")
        for h in helpers:
            h.wait()
    finally:
        for h in helpers:  # stopped: the helpers checkpoint and exit too (SIGTERM = preempted, resumable)
            stop_child(h)
    for spec, (_, d) in zip(specs, sweeps):  # a helper may have finished runs after this process collected
        collect(spec, d)


def train_heldout(cfg, run_dir: Path, run_id: str, progress: bool, should_stop, devices: int) -> dict:
    """Train the held-out run and return its record. On a CPU with ``devices`` >= 2 cores it trains data-parallel
    over that many host devices in a child process (``--xla_force_host_platform_device_count``; this process's
    JAX is already initialised with one): the sweep's workers are done, and one process alone leaves a core idle
    (measured 1.8x the tokens/s of one process with both cores' threads). The child resumes like any run and is
    stopped (checkpointed) with this process."""
    import jax
    import yaml

    from scaling import exits
    from scaling.config import load_config
    from scaling.train import train
    from scaling.ui import progress_bar

    rec = run_dir / "record.json"
    if rec.exists() and json.loads(rec.read_text()).get("status") == "completed":
        return json.loads(rec.read_text())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    devices = min(devices, cores)
    if jax.default_backend() != "cpu" or devices < 2 or cfg.train.batch_size % devices:
        with progress_bar(progress) as bar:
            return train(cfg, run_dir, progress=bar, should_stop=should_stop, run_id=run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir.parent / f"{run_id}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if load_config(cfg_path).to_dict() != cfg.to_dict():  # the child must train exactly this config
        raise QuickstartError(f"{cfg_path} does not round-trip the held-out config")
    env = with_cpu_devices(os.environ, devices)
    child = subprocess.Popen(CHILD + ["heldout", str(cfg_path), str(run_dir), run_id] + (["--progress"] if progress else []), env=env)
    try:
        while child.poll() is None and not (should_stop is not None and should_stop()):
            time.sleep(0.5)
    finally:
        stop_child(child)  # stopped (or this process failing): checkpoint and exit, a resumable preemption
    r = json.loads(rec.read_text()) if rec.exists() else {}
    if child.returncode == 0 and r.get("status") == "completed":
        return r
    if child.returncode in (exits.PREEMPTED, exits.STOPPED, -signal.SIGTERM, -signal.SIGINT):  # by exit code: an older record may say "stopped"
        raise KeyboardInterrupt("held-out run stopped; rerun to resume")
    raise QuickstartError(f"the held-out run failed (exit code {child.returncode}, status {r.get('status')!r}); its record and log are in {run_dir}")
