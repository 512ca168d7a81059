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

import contextlib
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path


def worker_command(sweep_yaml: str | Path, sweep_dir: str | Path, overrides: list[str] | None = None,
                   devices_per_worker: int | None = None) -> list[str]:
    from scaling.remote import is_url

    out = str(sweep_dir) if is_url(sweep_dir) else str(Path(sweep_dir).absolute())
    cmd = [sys.executable, "-m", "scaling", "sweep", "run", str(Path(sweep_yaml).absolute()), "--out", out, "--no-progress"]
    cmd += sum((["--set", o] for o in overrides or []), [])
    if devices_per_worker:
        cmd += ["--devices-per-worker", str(devices_per_worker)]
    return cmd


def executor(sweep_dir: Path, name: str, workers: int, partition: str | None, gpus_per_node: int, timeout_min: int,
             nodes: int = 1, cpus_per_task: int = 8, extra: dict | None = None):
    """The submitit slurm executor of a sweep's job array. One array task per worker; with ``nodes`` > 1 each task
    is one JAX job over that many hosts (one process per node, all its GPUs): srun starts the worker on every node,
    JAX joins them from slurm's environment, and process 0 claims the runs the job trains together. Every task asks
    for ``--signal=USR2@90`` (submitit's default) and ``--requeue``."""
    import submitit

    ex = submitit.AutoExecutor(folder=sweep_dir / "slurm" / "%j", cluster="slurm")
    extra = dict(extra or {})
    additional = {"requeue": True, **extra.pop("additional_parameters", {})}
    ex.update_parameters(
        name=f"scaling-{name}",
        slurm_array_parallelism=workers,
        timeout_min=timeout_min,
        gpus_per_node=gpus_per_node,
        nodes=nodes,
        tasks_per_node=1,
        cpus_per_task=cpus_per_task,
        slurm_additional_parameters=additional,
        **({"slurm_partition": partition} if partition else {}),
        **{f"slurm_{k}": v for k, v in extra.items()},
    )
    return ex


FAKE_JOB_ID = "0"  # slurm numbers jobs from 1: a dry run's files can never be a real job's


@contextlib.contextmanager
def _stub_sbatch():
    """``sbatch`` replaced on PATH by a program that keeps the script it is handed and answers a job id: the dry
    run goes through submitit's submission exactly as a real one does."""
    with tempfile.TemporaryDirectory(prefix="scaling-sbatch-") as d:
        capture = Path(d) / "script.sbatch"
        stub = Path(d) / "sbatch"
        stub.write_text(f'#!/bin/sh\ncp "$1" {shlex.quote(str(capture))}\necho "Submitted batch job {FAKE_JOB_ID}"\n')
        stub.chmod(0o755)
        srun = Path(d) / "srun"  # submitit checks that srun exists; a dry run never starts it
        srun.write_text('#!/bin/sh\necho "srun stub of a dry run" >&2\nexit 1\n')
        srun.chmod(0o755)
        old = os.environ.get("PATH", "")
        os.environ["PATH"] = f"{d}{os.pathsep}{old}"
        try:
            yield capture
        finally:
            os.environ["PATH"] = old


def submit_slurm(sweep_yaml, sweep_dir, workers: int = 4, partition: str | None = None, gpus_per_node: int = 1, timeout_min: int = 1440,
                 dry_run: bool = False, extra: dict | None = None, nodes: int = 1, cpus_per_task: int = 8, name: str = "sweep",
                 overrides: list[str] | None = None, devices_per_worker: int | None = None) -> str:
    """Submit ``workers`` array tasks (or, with ``dry_run``, go through the same submission with a stub ``sbatch``
    and submit nothing). Either way the script sbatch received is written to ``SWEEP_DIR/slurm/array.sbatch``;
    returned: the script (dry run) or a line naming the job.

    A sweep directory on object storage (``gs://...``) is worked by one array task (one host: its workers share
    one staging directory, see ``scaling.remote``); submitit's files then go to ``runs/NAME/slurm`` here, which
    the compute nodes must see (a shared home or project directory)."""
    from scaling.remote import is_url

    url = str(sweep_dir) if is_url(sweep_dir) else None
    if url and (workers > 1 or nodes > 1):
        raise ValueError(f"{url}: a sweep directory on object storage is worked from one host (--workers 1 --nodes 1, with "
                         "--devices-per-worker K for several workers there); several hosts need a shared file system path")
    sweep_dir = Path("runs", name) if url else Path(sweep_dir)
    (sweep_dir / "slurm").mkdir(parents=True, exist_ok=True)
    cmd = worker_command(sweep_yaml, url or sweep_dir, overrides, devices_per_worker)
    make = lambda: executor(sweep_dir, name, workers, partition, gpus_per_node, timeout_min, nodes, cpus_per_task, extra)  # noqa: E731
    if dry_run:
        with _stub_sbatch() as capture:
            make().map_array(Worker(), [cmd] * workers)
            script = capture.read_text()
        for f in [*(sweep_dir / "slurm").glob(f"{FAKE_JOB_ID}_*"), sweep_dir / "slurm" / FAKE_JOB_ID]:  # the dry run's files
            shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)
        for link in (sweep_dir / "slurm").glob(".submission_file_*"):  # submitit's links to the removed script
            if link.is_symlink() and not link.exists():
                link.unlink()
        (sweep_dir / "slurm" / "array.sbatch").write_text(script)
        return script
    if not shutil.which("srun") or not shutil.which("sbatch"):
        raise ValueError("no slurm on this machine (sbatch / srun not found); --dry-run shows the script without submitting")
    from submitit.core.utils import JobPaths

    jobs = make().map_array(Worker(), [cmd] * workers)
    array_id = jobs[0].job_id.split("_")[0]
    (sweep_dir / "slurm" / "array.sbatch").write_text(JobPaths(sweep_dir / "slurm" / "%j", job_id=array_id).submission_file.read_text())
    return f"submitted {len(jobs)} array tasks: {jobs[0].job_id.split('_')[0]} (script and logs in {sweep_dir}/slurm)"


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

        from scaling import exits

        self._proc = subprocess.Popen(cmd)
        # poll, not Popen.wait(): submitit calls checkpoint() from a signal handler on this same thread, and
        # Popen.wait() holds the lock that a nested wait in the handler would block on until its timeout
        while (rc := self._proc.poll()) is None:
            time.sleep(POLL_S)
        if rc == exits.PREEMPTED and not self.requeue_asked:
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
