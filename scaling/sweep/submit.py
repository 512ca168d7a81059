"""Cluster submission: a slurm job array through ``submitit``; every array task runs ``scaling sweep run`` on the
shared sweep directory and claims runs until none are left (``scaling.sweep.runner``)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def worker_command(sweep_yaml: str | Path, sweep_dir: str | Path) -> list[str]:
    return [sys.executable, "-m", "scaling", "sweep", "run", str(Path(sweep_yaml).absolute()), "--out", str(Path(sweep_dir).absolute()), "--no-progress"]


def slurm_parameters(workers: int, partition: str | None, gpus_per_node: int, timeout_min: int, extra: dict | None = None, nodes: int = 1) -> dict:
    """One array task per worker; with ``nodes`` > 1 each task is one JAX job over that many hosts (one process per
    node, all its GPUs): srun starts the worker on every node, JAX joins them from slurm's environment, and process 0
    claims the runs the job trains together."""
    params = {
        "job_name": "scaling-sweep",
        "time": timeout_min,
        "gpus_per_node": gpus_per_node,
        "nodes": nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": 8,
        "array_parallelism": workers,
    }
    if partition:
        params["partition"] = partition
    params.update(extra or {})
    return params


def sbatch_script(sweep_yaml, sweep_dir, workers: int = 4, partition: str | None = None, gpus_per_node: int = 1, timeout_min: int = 1440, extra: dict | None = None, nodes: int = 1) -> str:
    """The sbatch script submitit would submit for the array (no cluster needed)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = slurm_parameters(workers, partition, gpus_per_node, timeout_min, extra, nodes)
    array = params.pop("array_parallelism")
    folder = Path(sweep_dir).absolute() / "slurm" / "%j"
    return _make_sbatch_string(
        command=shlex.join(worker_command(sweep_yaml, sweep_dir)),
        folder=str(folder),
        map_count=workers,
        array_parallelism=array,
        **params,
    )


def submit_slurm(sweep_yaml, sweep_dir, workers: int = 4, partition: str | None = None, gpus_per_node: int = 1, timeout_min: int = 1440, dry_run: bool = False, extra: dict | None = None, nodes: int = 1) -> str:
    sweep_dir = Path(sweep_dir)
    (sweep_dir / "slurm").mkdir(parents=True, exist_ok=True)
    script = sbatch_script(sweep_yaml, sweep_dir, workers, partition, gpus_per_node, timeout_min, extra, nodes)
    (sweep_dir / "slurm" / "array.sbatch").write_text(script)
    if dry_run:
        return script
    import submitit

    ex = submitit.AutoExecutor(folder=sweep_dir / "slurm" / "%j", cluster="slurm")
    ex.update_parameters(
        slurm_array_parallelism=workers,
        timeout_min=timeout_min,
        gpus_per_node=gpus_per_node,
        nodes=nodes,
        tasks_per_node=1,
        **({"slurm_partition": partition} if partition else {}),
        **{f"slurm_{k}": v for k, v in (extra or {}).items()},
    )
    cmd = worker_command(sweep_yaml, sweep_dir)
    jobs = ex.map_array(_run_worker, [cmd] * workers)
    return f"submitted {len(jobs)} array tasks: {jobs[0].job_id.split('_')[0]} (logs in {sweep_dir}/slurm)"


def _run_worker(cmd: list[str]) -> int:
    import subprocess

    return subprocess.call(cmd)
