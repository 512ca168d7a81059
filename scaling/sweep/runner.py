"""Run a sweep: every run not yet completed, resumably, by any number of workers sharing one directory.

Layout::

    SWEEP_DIR/sweep.yaml            the sweep file as run
    SWEEP_DIR/plan.csv              every planned run
    SWEEP_DIR/runs/RUN_ID/          one run directory each (scaling.train.loop)
    SWEEP_DIR/runs/RUN_ID/claim.json  the claim of the worker running it (owner, host, pid, heartbeat)
    SWEEP_DIR/events.jsonl          start / end of every execution (owner, run, status), appended
    SWEEP_DIR/runs.csv (.parquet)   one row per run: the table the analysis package reads

Which worker runs which run is decided by claims (``scaling.sweep.claims``); the table is written by
``scaling.sweep.collect``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from scaling.sweep.claims import STALE_AFTER_S, Claim
from scaling.sweep.collect import collect
from scaling.sweep.grids import grid_kind
from scaling.sweep.schema import PlannedRun, SweepSpec, added_sizes
from scaling.sweep.spec import plan_sweep, with_logging
from scaling.storage import storage_cause, storage_message, write_atomic
from scaling.train.record import read_record_or_damaged as read_record

BRANCH_WAIT_S = 1.0  # how often a worker waiting for a trunk's branch point looks again


def _event(sweep_dir: Path, **fields) -> None:
    line = json.dumps({"time": time.time(), **fields}) + "\n"
    fd = os.open(sweep_dir / "events.jsonl", os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def parse_shard(shard: str | None) -> tuple[int, int]:
    if not shard:
        return 0, 1
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects i/n (e.g. 0/4), got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {shard}: need 0 <= i < n")
    return i, n


@dataclass
class SweepResult:
    completed: list[str]
    failed: list[str]
    skipped: list[str]
    stopped: bool = False
    stop_status: str | None = None  # preempted | stopped, when stopped
    storage_error: str | None = None  # the sweep stopped on a storage failure (path: cause)

    @property
    def preempted(self) -> bool:
        return self.stop_status == "preempted"


def run_sweep(
    spec: SweepSpec,
    sweep_dir: str | Path,
    *,
    shard: str | None = None,
    retry_failed: bool = False,
    should_stop: Callable[[], bool] | None = None,
    stale_after: float = STALE_AFTER_S,
    progress=None,
    sweep_yaml: str | None = None,
    on_run_end: Callable[[PlannedRun, dict | None], None] | None = None,
    adaptive: bool = False,
    target_dex: float | None = None,
    max_added: int | None = None,
    train_fn: Callable | None = None,
    stack: int = 1,
) -> SweepResult:
    """Train every planned run not yet completed (see the module docstring); returns what this worker did.

    ``adaptive``: an IsoFLOP sweep refines itself after each round of runs (``scaling.sweep.adaptive``): budgets
    whose minimum is not bracketed or whose N_opt interval is wider than ``target_dex`` get one more size per
    round, until none needs one or ``max_added`` sizes were added (default 3 per budget). ``train_fn`` replaces
    ``scaling.train.train`` (same signature; a test double trains nothing). ``stack``: up to this many claimable runs
    that differ only in seeds and lr train together in one compiled step (``scaling.train.loop.train_stack``; each
    keeps its own record, numbers bit-identical to training alone); 1 trains every run alone. Not with ``train_fn``
    or a multi-process job."""
    from scaling.parallel import maybe_initialize_distributed
    from scaling.train import train

    maybe_initialize_distributed()  # a multi-host worker joins its job before any other JAX call
    import jax

    leader, multi = jax.process_index() == 0, jax.process_count() > 1
    i, n = parse_shard(shard)
    if adaptive and (not grid_kind(spec.grid.kind).adaptive or multi or n > 1 or len(spec.variants) > 1):
        raise ValueError("--adaptive refines an isoflop grid of one variant from one worker process (no --shard, one host)")
    sweep_dir = Path(sweep_dir)
    plan = plan_sweep(spec, check_data=True, sweep_dir=sweep_dir, progress=True)
    if leader:
        _write_plan(spec, sweep_dir, plan, sweep_yaml)
    w = _Worker(spec, sweep_dir, plan, [k for k in range(len(plan)) if k % n == i], should_stop, stale_after, retry_failed,
                progress, leader, multi)
    train_fn = train_fn or train
    rounds = 0
    while True:
        # One JAX job may span several processes (hosts): only process 0 claims; the others train what it chose.
        k, claim = w.next_claim() if leader else (-1, None)
        if multi:
            from jax.experimental import multihost_utils

            k = int(multihost_utils.broadcast_one_to_all(np.int32(k)))
        if k < 0 and adaptive and not w.result.stopped and not (should_stop is not None and should_stop()):
            new = _refine(spec, sweep_dir, w.plan, target_dex, max_added, rounds + 1, w.owner)
            if new is not None:
                rounds += 1
                w.replan(new)
                continue
        if k < 0:
            break
        group = [(k, claim)]
        try:
            if stack > 1 and not multi and train_fn is train:
                w.claim_stack_mates(k, stack, group)  # inside the try: every claim taken is released below
            w.train_group([w.plan[j] for j, _ in group], train_fn, on_run_end)
        finally:
            for _, c in group:
                if c is not None:
                    c.release()
        for _ in group:
            w.advance()
        if w.result.stopped or w.result.storage_error:
            break
    if leader:
        _collect_at_end(spec, sweep_dir, w)
    return w.result


def _collect_at_end(spec: SweepSpec, sweep_dir: Path, w: "_Worker") -> None:
    """runs.csv after this worker's last run; after a storage failure a table that cannot be written is said, not
    raised (the failure itself is the result)."""
    try:
        collect(spec, sweep_dir, w.plan)
    except OSError as e:
        if not w.result.storage_error:
            raise
        print(f"runs.csv not updated: {storage_message(e, str(sweep_dir))}", file=sys.stderr)


def _write_plan(spec: SweepSpec, sweep_dir: Path, plan: list[PlannedRun], sweep_yaml: str | None) -> None:
    """The sweep directory's own files: refused if it belongs to another sweep; the sweep file as run and the plan."""
    check_owner(sweep_dir, spec)
    (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
    if sweep_yaml is not None:
        write_atomic(sweep_dir / "sweep.yaml", sweep_yaml)
    write_atomic(sweep_dir / "plan.csv", pd.DataFrame([r.row() for r in plan]).to_csv(index=False))


class _Worker:
    """One worker's view of a sweep directory: the runs it may still train (``pending``), its claims, and what it
    did (``result``)."""

    def __init__(self, spec: SweepSpec, sweep_dir: Path, plan: list[PlannedRun], pending: list[int], should_stop,
                 stale_after: float, retry_failed: bool, progress, leader: bool, multi: bool):
        self.spec, self.sweep_dir, self.plan, self.pending = spec, sweep_dir, plan, pending
        self.should_stop, self.stale_after, self.retry_failed = should_stop, stale_after, retry_failed
        self.progress, self.leader, self.multi = progress, leader, multi
        self.index = {r.run_id: k for k, r in enumerate(plan)}
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.result = SweepResult([], [], [])
        self.overall = progress.add_task(f"sweep {spec.name}", total=len(plan), loss=float("nan"), tps=0.0) if progress else None
        self.damaged_seen: set[str] = set()

    def advance(self) -> None:
        if self.overall is not None:
            self.progress.advance(self.overall)

    def replan(self, new: list[PlannedRun]) -> None:
        """An adaptive round added runs: they are what is pending now."""
        known = {r.run_id for r in self.plan}
        self.plan = new
        self.index = {r.run_id: k for k, r in enumerate(new)}
        self.pending = [k for k, r in enumerate(new) if r.run_id not in known]
        if self.overall is not None:
            self.progress.update(self.overall, total=len(new))

    def record(self, run_id: str) -> dict | None:
        return read_record(self.sweep_dir / "runs" / run_id)

    def done_or_given_up(self, rec: dict | None) -> bool:
        status = rec.get("status") if rec else None
        if status == "damaged":  # reported once and skipped: the other runs go on
            if rec["error"] not in self.damaged_seen:
                self.damaged_seen.add(rec["error"])
                print(f"skipped: {rec['error']}", file=sys.stderr, flush=True)
            return True
        retryable = status == "failed" and str(rec.get("error") or "").startswith("storage:")  # retried once there is room
        return status == "completed" or (status in ("failed", "diverged") and not self.retry_failed and not retryable)

    def try_claim(self, k: int) -> Claim | None:
        run_dir = self.sweep_dir / "runs" / self.plan[k].run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        claim = Claim(run_dir / "claim.json", self.owner)
        if not claim.try_acquire(self.stale_after):
            return None
        if self.done_or_given_up(read_record(run_dir)):  # finished by another worker between our check and our claim
            claim.release()
            return None
        return claim

    def branch_ready(self, run: PlannedRun) -> bool:
        """A branch can start once its trunk has checkpointed the branch point (or has finished or given up: the
        branch then reports what is missing)."""
        trunk_dir = self.sweep_dir / "runs" / run.trunk_id
        return (trunk_dir / "checkpoints" / str(run.branch_step)).is_dir() or self.done_or_given_up(read_record(trunk_dir))

    def next_claim(self) -> tuple[int, Claim | None]:
        """(plan index, claim) of the next run this worker should train; (-1, None) when there is none. A branch
        whose trunk has not reached its branch point waits for the worker training the trunk, or trains the trunk
        here when nobody does (it may belong to another shard)."""
        pending, result, should_stop = self.pending, self.result, self.should_stop
        while True:
            waiting = False
            for k in list(pending):
                if should_stop is not None and should_stop():
                    result.stopped = True
                    result.stop_status = getattr(should_stop, "status", "stopped")
                    return -1, None
                run = self.plan[k]
                if self.done_or_given_up(self.record(run.run_id)):
                    pending.remove(k)
                    result.skipped.append(run.run_id)
                    self.advance()
                    continue
                if run.role == "branch" and not self.branch_ready(run):
                    t = self.index[run.trunk_id]
                    claim = self.try_claim(t)
                    if claim is not None:
                        if t in pending:
                            pending.remove(t)
                        return t, claim
                    waiting = True
                    continue
                claim = self.try_claim(k)
                pending.remove(k)
                if claim is None:
                    result.skipped.append(run.run_id)
                    continue
                return k, claim
            if not waiting:
                return -1, None
            time.sleep(BRANCH_WAIT_S)

    def claim_stack_mates(self, k: int, size: int, group: list) -> None:
        """Claim pending runs that can train in one stack with run k (``stack_key``: the same shape, differing only
        in seeds and lr; a branch only once its trunk reached the branch point) into ``group``, up to ``size``."""
        from scaling.train.loop import stack_key

        key = stack_key(with_logging(self.plan[k], self.spec, self.sweep_dir))
        for j in list(self.pending):
            if len(group) >= size:
                break
            r = self.plan[j]
            if (r.role == "branch" and not self.branch_ready(r)) or stack_key(with_logging(r, self.spec, self.sweep_dir)) != key:
                continue
            if self.done_or_given_up(self.record(r.run_id)):
                continue  # next_claim counts it as skipped
            c = self.try_claim(j)
            if c is not None:
                self.pending.remove(j)
                group.append((j, c))

    def train_group(self, runs: list[PlannedRun], train_fn, on_run_end) -> None:
        """Train claimed runs (one alone, several as a stack) and record how each ended."""
        from scaling.train import DivergedError, StopRequested
        from scaling.train.loop import train_stack

        sweep_dir, should_stop, result = self.sweep_dir, self.should_stop, self.result
        dirs = [sweep_dir / "runs" / r.run_id for r in runs]
        if self.leader:
            for r, d in zip(runs, dirs):
                rec = read_record(d)
                if rec and rec.get("status") in ("failed", "diverged"):
                    _reset_failed_run(d)
                _event(sweep_dir, event="start", run_id=r.run_id, owner=self.owner, **({"stack": len(runs)} if len(runs) > 1 else {}))
        if self.multi:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"start {runs[0].run_id}")  # the reset is done before anyone reads
        cfgs = [with_logging(r, self.spec, sweep_dir) for r in runs]
        finals: list = [None] * len(runs)
        try:
            if len(runs) == 1:
                finals = [train_fn(cfgs[0], dirs[0], progress=self.progress, should_stop=should_stop, run_id=runs[0].run_id)]
                statuses = ["completed"]
            else:  # members that diverge or fail are recorded so by train_stack; the others complete
                finals = train_stack(cfgs, dirs, progress=self.progress, should_stop=should_stop, run_ids=[r.run_id for r in runs])
                statuses = [f.get("status") or "failed" for f in finals]
        except StopRequested as e:
            result.stopped, result.stop_status = True, e.status
            # preempted (SIGUSR2 / SIGTERM) or stopped (Ctrl-C); resumable either way. Stack members that ended
            # otherwise before the stop (completed, diverged, failed) keep what their record says.
            on_disk = [read_record(d) or {} for d in dirs]
            statuses = [r.get("status") if r.get("status") in ("completed", "diverged", "failed") else e.status for r in on_disk]
            finals = [r if st == "completed" else None for r, st in zip(on_disk, statuses)]
        except DivergedError:
            statuses = ["diverged"]
        except Exception as e:  # recorded as failed by train(); the sweep goes on, unless the disk failed
            statuses = ["failed"] * len(runs)
            if storage_cause(e):
                result.storage_error = storage_message(e, str(dirs[0]))
        for r, st, final in zip(runs, statuses, finals):
            if st == "completed":
                result.completed.append(r.run_id)
            elif st in ("failed", "diverged"):
                result.failed.append(r.run_id)
            if self.leader:
                _event(sweep_dir, event="end", run_id=r.run_id, owner=self.owner, status=st)
            if on_run_end is not None:
                on_run_end(r, final if st == "completed" else None)


def _refine(spec, sweep_dir: Path, plan: list[PlannedRun], target_dex, max_added, round_: int, owner: str):
    """One adaptive round: the new plan when sizes were added, else None (nothing to add, the cap reached, or the
    size rule has no new width where one was asked for)."""
    from dataclasses import asdict

    from scaling.model.accounting import count_params
    from scaling.config import ConfigError, merge_dicts
    from scaling.sweep import adaptive as ad
    from scaling.sweep.schema import resolve_model

    budgets = [float(b) for b in spec.grid.budgets]
    cap = 3 * len(budgets) if max_added is None else max_added
    kept = added_sizes(sweep_dir)
    df = collect(spec, sweep_dir, plan)
    done = df[df["status"] == "completed"].assign(N=lambda d: d["N_active"] if spec.grid.params == "active" else d["N"])
    base = merge_dicts(spec.base, next(iter(spec.variants.values()), {}))

    def snap(target: float) -> float:
        c = count_params(resolve_model(base, {"target_params": target}))
        return c.active if spec.grid.params == "active" else c.total

    proposed = ad.propose(done, budgets, ad.TARGET_DEX if target_dex is None else target_dex, round_, snap)
    adds = []
    for a in proposed[: max(0, cap - len(kept))]:
        try:  # a size that cannot run at its budget (budget check, steps, epochs) is refused before it is recorded
            plan_sweep(spec, check_data=True, sweep_dir=sweep_dir, added=kept + [asdict(a)])
        except ConfigError as e:
            _event(sweep_dir, event="add_refused", round=round_, budget=a.budget, target_params=a.target_params,
                   reason=a.reason, error=str(e), owner=owner)
            continue
        adds.append(a)
        kept.append(asdict(a))
    if not adds:
        return None
    ad.record_additions(sweep_dir, adds)
    new = plan_sweep(spec, check_data=True, sweep_dir=sweep_dir)
    known = {r.run_id for r in plan}
    added = [r for r in new if r.run_id not in known]
    for a in adds:
        match = [r.run_id for r in added if r.budget == a.budget]
        _event(sweep_dir, event="added", round=round_, budget=a.budget, target_params=a.target_params, reason=a.reason,
               run_id=match[0] if match else None, owner=owner)
    if not added:  # every proposed size snapped to a model the budget already has
        _event(sweep_dir, event="refine_stopped", round=round_, reason="the size rule has no new width where sizes were asked for", owner=owner)
        return None
    write_atomic(sweep_dir / "plan.csv", pd.DataFrame([r.row() for r in new]).to_csv(index=False))
    return new


def _reset_failed_run(run_dir: Path) -> None:
    """--retry-failed: start the run over (its checkpoints may hold the NaN state)."""
    import shutil

    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    for name in ("record.json", "metrics.jsonl", "wandb_id"):
        (run_dir / name).unlink(missing_ok=True)


def check_owner(sweep_dir: Path, spec: SweepSpec) -> None:
    """A sweep directory belongs to one sweep (its ``sweep.yaml``'s name): another sweep would overwrite its plan
    and table. An edited sweep of the same name is welcome (run ids are config hashes: edits keep the others)."""
    import yaml

    path = sweep_dir / "sweep.yaml"
    if not path.exists():
        return
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged ({str(e).splitlines()[0]}); it names the sweep this directory belongs to: repair or remove it") from None
    name = raw.get("name", "sweep") if isinstance(raw, dict) else None
    if name != spec.name:
        raise ValueError(f"{sweep_dir} holds the sweep {name!r} ({path}); sweep {spec.name!r} would overwrite its plan and runs.csv: use another --out")


__all__ = ["SweepResult", "parse_shard", "run_sweep"]
