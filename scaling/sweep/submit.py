"""Cluster submission: a slurm job array through ``submitit``; every array task runs ``scaling sweep run`` on the
shared sweep directory and claims runs until none are left (``scaling.sweep.runner``).

Preemption and time limits use submitit's checkpoint / requeue mechanism: slurm sends ``SIGUSR2`` 90 s before the
limit (``--signal=USR2@90``, submitit's default) to the task; submitit calls ``Worker.checkpoint``, which forwards
the signal to the ``scaling sweep run`` process, waits while it finishes its step, commits a checkpoint, marks the
run ``preempted`` and releases its claim (exit code 75), and hands submitit the same worker to run again; submitit
then requeues the array task (``scontrol requeue``), and the requeued task resumes the runs from their checkpoints.
A ``SIGTERM`` (preemption by a higher-priority job, ``scancel``) reaches the worker process directly; it stops the
same way, and since submitit ignores ``SIGTERM`` the worker asks for the requeue itself (``scontrol requeue``).
"""

from __future__ import annotations

import shlex
import sys
import time
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
    jobs = ex.map_array(Worker(), [cmd] * workers)
    return f"submitted {len(jobs)} array tasks: {jobs[0].job_id.split('_')[0]} (logs in {sweep_dir}/slurm)"


GRACE_S = 80  # how long checkpoint() waits for the worker to stop (slurm kills 90 s after USR2)
POLL_S = 0.2


def _checkpointable_base():
    try:
        from submitit.helpers import Checkpointable
    except ImportError:  # submitit is a dependency; this only keeps the module importable without it
        return object
    return Checkpointable


class Worker(_checkpointable_base()):
    """One array task: runs ``cmd`` (``scaling sweep run ...``) as a child process and returns its exit code.

    ``checkpoint`` is what submitit calls on ``SIGUSR2``: the child is asked to stop (the same signal), waited for,
    and the same worker is returned for submitit to requeue."""

    def __init__(self) -> None:
        self._proc = None
        self.requeue_asked = False

    def __getstate__(self) -> dict:  # submitit pickles the worker for the requeued task; a process does not travel
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def __call__(self, cmd: list[str]) -> int:
        import subprocess

        from scaling.signals import EXIT_PREEMPTED

        self._proc = subprocess.Popen(cmd)
        # poll, not Popen.wait(): submitit calls checkpoint() from a signal handler on this same thread, and
        # Popen.wait() holds the lock that a nested wait in the handler would block on until its timeout
        while (rc := self._proc.poll()) is None:
            time.sleep(POLL_S)
        if rc == EXIT_PREEMPTED and not self.requeue_asked:
            _requeue_self()  # stopped by SIGTERM, which submitit does not turn into a requeue
        return rc

    def stop_child(self, grace_s: float = GRACE_S) -> int | None:
        """Forward the preemption signal to the running worker process and wait for it (its exit code)."""
        import signal

        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + grace_s
        while (rc := proc.poll()) is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return rc

    def checkpoint(self, cmd: list[str]):
        from submitit.helpers import DelayedSubmission

        self.requeue_asked = True
        self.stop_child()
        return DelayedSubmission(Worker(), cmd)


def _requeue_self() -> None:
    """``scontrol requeue`` this slurm array task (or job); nothing outside slurm."""
    import os
    import subprocess

    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if job:
        subprocess.call(["scontrol", "requeue", job])
