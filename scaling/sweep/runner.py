"""Run a sweep: every run not yet completed, resumably, by any number of workers sharing one directory.

Layout::

    SWEEP_DIR/sweep.yaml            the sweep file as run
    SWEEP_DIR/plan.csv              every planned run
    SWEEP_DIR/runs/RUN_ID/          one run directory each (scaling.train.loop)
    SWEEP_DIR/runs/RUN_ID/claim.json  the claim of the worker running it (owner, host, pid, heartbeat)
    SWEEP_DIR/events.jsonl          start / end of every execution (owner, run, status), appended
    SWEEP_DIR/runs.csv (.parquet)   one row per run: the table the analysis package reads

Claims are created with O_CREAT | O_EXCL, so two workers never run the same run; the owner refreshes the
heartbeat every few seconds, and a claim whose heartbeat is older than ``stale_after`` seconds (a dead worker) is
taken over by renaming it away first (only one renamer can win); a taker that finds it moved something other than
the claim it judged stale (another taker's fresh claim) puts it back and leaves the run.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from scaling.sweep.grids import grid_kind
from scaling.sweep.schema import PlannedRun, SweepSpec, added_sizes
from scaling.sweep.spec import plan_sweep, with_logging
from scaling.storage import storage_cause, storage_message, write_atomic
from scaling.train.record import read_record_or_damaged as read_record

HEARTBEAT_S = 5.0
BRANCH_WAIT_S = 1.0  # how often a worker waiting for a trunk's branch point looks again
STALE_AFTER_S = 60.0
# a stacked run's train_time_s / step_time_s are its share of the stack's (they add up to the stack's time);
# tokens_per_sec is the stack's rate; stack_size says how many trained together
TIMING_COLUMNS = ("tokens_per_sec", "step_time_s", "compile_time_s", "wall_time_s", "train_time_s", "stack_size")
# runs.csv, column by column (what a plan gives and what each run's record gives: ``collect``)
RUNS_COLUMNS = (
    "run_id", "sweep", "status", "kind", "variant", "N", "N_active", "N_nonembedding", "D", "C", "budget", "loss",
    "eval_loss", "eval_loss_stderr", "eval_bpb", "train_loss", "progress", "seed", "d_model", "n_layers", "n_heads",
    "n_experts", "top_k", "granularity", "params_basis", "epochs", "eval_tokens", "warnings", "lr", "batch_size",
    "steps", "role", "trunk_id", "branch_step", "C_spent", "flops_convention", *TIMING_COLUMNS, "error", "preemptions",
    "restarts", "steps_recomputed",
)


class Claim:
    def __init__(self, path: Path, owner: str):
        self.path, self.owner = path, owner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> str:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()})

    def try_acquire(self, stale_after: float) -> bool:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._is_stale(stale_after):
                    return False
                judged = _read_text(self.path)
                stale = self.path.with_name(f".claim.stale-{uuid.uuid4().hex[:8]}")
                try:  # take over a dead worker's claim: only one renamer wins, then it removes what it moved
                    os.rename(self.path, stale)
                except FileNotFoundError:
                    continue
                if _read_text(stale) != judged:
                    # another worker took the stale claim over between our look and our rename: what we moved is
                    # its fresh claim. Put it back (link: never over a newer one) and leave the run to it.
                    try:
                        os.link(stale, self.path)
                    except FileExistsError:
                        pass
                    stale.unlink(missing_ok=True)
                    return False
                stale.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self._payload())
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
            return True
        return False

    def _is_stale(self, stale_after: float) -> bool:
        """A claim is stale when its heartbeat is older than ``stale_after`` or, on this host, its process is gone."""
        try:
            info = json.loads(self.path.read_text() or "{}")
            beat = float(info.get("heartbeat", 0))
        except (OSError, ValueError):
            try:
                beat, info = self.path.stat().st_mtime, {}
            except FileNotFoundError:
                return True
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"]):
            return True
        return time.time() - beat > stale_after

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                tmp = self.path.with_name(f".claim.{self.owner}.tmp")
                tmp.write_text(self._payload())
                if json.loads(self.path.read_text()).get("owner") == self.owner:
                    os.replace(tmp, self.path)
                else:
                    tmp.unlink(missing_ok=True)
            except (OSError, ValueError):
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S + 1)
        try:
            if json.loads(self.path.read_text()).get("owner") == self.owner:
                self.path.unlink()
        except (OSError, ValueError):
            pass


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    from scaling.train import DivergedError, StopRequested, train
    from scaling.train.loop import stack_key, train_stack

    train_fn = train_fn or train

    maybe_initialize_distributed()  # a multi-host worker joins its job before any other JAX call
    import jax

    leader, multi = jax.process_index() == 0, jax.process_count() > 1
    i, n = parse_shard(shard)
    if adaptive and (not grid_kind(spec.grid.kind).adaptive or multi or n > 1 or len(spec.variants) > 1):
        raise ValueError("--adaptive refines an isoflop grid of one variant from one worker process (no --shard, one host)")
    sweep_dir = Path(sweep_dir)
    plan = plan_sweep(spec, check_data=True, sweep_dir=sweep_dir, progress=True)
    if leader:
        check_owner(sweep_dir, spec)
        (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
        if sweep_yaml is not None:
            write_atomic(sweep_dir / "sweep.yaml", sweep_yaml)
        write_atomic(sweep_dir / "plan.csv", pd.DataFrame([r.row() for r in plan]).to_csv(index=False))
    owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    result = SweepResult([], [], [])
    overall = progress.add_task(f"sweep {spec.name}", total=len(plan), loss=float("nan"), tps=0.0) if progress else None

    def advance() -> None:
        if overall is not None:
            progress.advance(overall)

    damaged_seen: set[str] = set()

    def done_or_given_up(rec: dict | None) -> bool:
        status = rec.get("status") if rec else None
        if status == "damaged":  # reported once and skipped: the other runs go on
            if rec["error"] not in damaged_seen:
                damaged_seen.add(rec["error"])
                print(f"skipped: {rec['error']}", file=sys.stderr, flush=True)
            return True
        retryable = status == "failed" and str(rec.get("error") or "").startswith("storage:")  # retried once there is room
        return status == "completed" or (status in ("failed", "diverged") and not retry_failed and not retryable)

    pending = [k for k in range(len(plan)) if k % n == i]
    index = {r.run_id: k for k, r in enumerate(plan)}

    def try_claim(k: int) -> Claim | None:
        run_dir = sweep_dir / "runs" / plan[k].run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        claim = Claim(run_dir / "claim.json", owner)
        if not claim.try_acquire(stale_after):
            return None
        if done_or_given_up(read_record(run_dir)):  # finished by another worker between our check and our claim
            claim.release()
            return None
        return claim

    def branch_ready(run: PlannedRun) -> bool:
        """A branch can start once its trunk has checkpointed the branch point (or has finished or given up: the
        branch then reports what is missing)."""
        trunk_dir = sweep_dir / "runs" / run.trunk_id
        return (trunk_dir / "checkpoints" / str(run.branch_step)).is_dir() or done_or_given_up(read_record(trunk_dir))

    def next_claim() -> tuple[int, Claim | None]:
        """(plan index, claim) of the next run this worker should train; (-1, None) when there is none. A branch
        whose trunk has not reached its branch point waits for the worker training the trunk, or trains the trunk
        here when nobody does (it may belong to another shard)."""
        while True:
            waiting = False
            for k in list(pending):
                if should_stop is not None and should_stop():
                    result.stopped = True
                    result.stop_status = getattr(should_stop, "status", "stopped")
                    return -1, None
                run = plan[k]
                if done_or_given_up(read_record(sweep_dir / "runs" / run.run_id)):
                    pending.remove(k)
                    result.skipped.append(run.run_id)
                    advance()
                    continue
                if run.role == "branch" and not branch_ready(run):
                    t = index[run.trunk_id]
                    claim = try_claim(t)
                    if claim is not None:
                        if t in pending:
                            pending.remove(t)
                        return t, claim
                    waiting = True
                    continue
                claim = try_claim(k)
                pending.remove(k)
                if claim is None:
                    result.skipped.append(run.run_id)
                    continue
                return k, claim
            if not waiting:
                return -1, None
            time.sleep(BRANCH_WAIT_S)

    def claim_stack_mates(k: int, size: int, group: list) -> None:
        """Claim pending runs that can train in one stack with run k (``stack_key``: the same shape, differing only
        in seeds and lr; a branch only once its trunk reached the branch point) into ``group``, up to ``size``."""
        key = stack_key(with_logging(plan[k], spec, sweep_dir))
        for j in list(pending):
            if len(group) >= size:
                break
            r = plan[j]
            if (r.role == "branch" and not branch_ready(r)) or stack_key(with_logging(r, spec, sweep_dir)) != key:
                continue
            if done_or_given_up(read_record(sweep_dir / "runs" / r.run_id)):
                continue  # next_claim counts it as skipped
            c = try_claim(j)
            if c is not None:
                pending.remove(j)
                group.append((j, c))

    rounds = 0
    while True:
        # One JAX job may span several processes (hosts): only process 0 claims; the others train what it chose.
        k, claim = next_claim() if leader else (-1, None)
        if multi:
            from jax.experimental import multihost_utils

            k = int(multihost_utils.broadcast_one_to_all(np.int32(k)))
        if k < 0 and adaptive and not result.stopped and not (should_stop is not None and should_stop()):
            new = _refine(spec, sweep_dir, plan, target_dex, max_added, rounds + 1, owner)
            if new is not None:
                rounds += 1
                known = {r.run_id for r in plan}
                plan = new
                fresh = [k for k, r in enumerate(plan) if r.run_id not in known]
                if overall is not None:
                    progress.update(overall, total=len(plan))
                pending = fresh
                continue
        if k < 0:
            break
        group = [(k, claim)]
        try:
            if stack > 1 and not multi and train_fn is train:
                claim_stack_mates(k, stack, group)  # inside the try: every claim taken is released below
            runs = [plan[j] for j, _ in group]
            dirs = [sweep_dir / "runs" / r.run_id for r in runs]
            if leader:
                for r, d in zip(runs, dirs):
                    rec = read_record(d)
                    if rec and rec.get("status") in ("failed", "diverged"):
                        _reset_failed_run(d)
                    _event(sweep_dir, event="start", run_id=r.run_id, owner=owner, **({"stack": len(runs)} if len(runs) > 1 else {}))
            if multi:
                multihost_utils.sync_global_devices(f"start {runs[0].run_id}")  # the reset is done before anyone reads
            cfgs = [with_logging(r, spec, sweep_dir) for r in runs]
            finals: list = [None] * len(runs)
            try:
                if len(runs) == 1:
                    finals = [train_fn(cfgs[0], dirs[0], progress=progress, should_stop=should_stop, run_id=runs[0].run_id)]
                    statuses = ["completed"]
                else:  # members that diverge or fail are recorded so by train_stack; the others complete
                    finals = train_stack(cfgs, dirs, progress=progress, should_stop=should_stop, run_ids=[r.run_id for r in runs])
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
                if leader:
                    _event(sweep_dir, event="end", run_id=r.run_id, owner=owner, status=st)
                if on_run_end is not None:
                    on_run_end(r, final if st == "completed" else None)
        finally:
            for _, c in group:
                if c is not None:
                    c.release()
        for _ in group[1:]:
            advance()
        advance()
        if result.stopped or result.storage_error:
            break
    if leader:
        try:
            collect(spec, sweep_dir, plan)
        except OSError as e:
            if not result.storage_error:
                raise
            print(f"runs.csv not updated: {storage_message(e, str(sweep_dir))}", file=sys.stderr)
    return result


def _refine(spec, sweep_dir: Path, plan: list[PlannedRun], target_dex, max_added, round_: int, owner: str):
    """One adaptive round: the new plan when sizes were added, else None (nothing to add, the cap reached, or the
    size rule has no new width where one was asked for)."""
    from dataclasses import asdict

    from scaling.accounting import count_params
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


def _record_columns(rec: dict) -> dict:
    """The runs-table columns a run's record gives (planned or not): its status, losses, timing and interruptions."""
    return {
        "status": rec.get("status", "pending"),
        "N_nonembedding": rec.get("n_params_nonembedding"),
        "loss": rec.get("final_eval_loss"),
        "eval_loss": rec.get("final_eval_loss"),
        "eval_loss_stderr": rec.get("final_eval_loss_stderr"),
        "eval_bpb": rec.get("final_eval_bpb"),
        "train_loss": rec.get("final_train_loss"),
        "progress": rec.get("progress", 0.0),
        "eval_tokens": rec.get("eval_tokens"),
        "warnings": " | ".join(rec.get("warnings") or []) or None,
        "flops_convention": rec.get("flops_convention"),
        **{c: rec.get(c) for c in TIMING_COLUMNS},
        "error": rec.get("error"),
        # interruptions: clean preemptions, restarts over an unfinished attempt, steps trained twice
        "preemptions": rec.get("preemptions") or 0,
        "restarts": rec.get("restarts") or 0,
        "steps_recomputed": rec.get("steps_recomputed") or 0,
    }


def collect(spec: SweepSpec, sweep_dir: str | Path, plan: list[PlannedRun] | None = None) -> pd.DataFrame:
    """Gather every run's record into ``runs.csv`` (and ``runs.parquet`` when pyarrow is installed)."""
    sweep_dir = Path(sweep_dir)
    plan = plan if plan is not None else plan_sweep(spec, sweep_dir=sweep_dir)
    rows = []
    for run in plan:
        rec = read_record(sweep_dir / "runs" / run.run_id) or {}
        cfg = run.config
        rows.append(
            {
                "run_id": run.run_id,
                "sweep": spec.name,
                "kind": "moe" if cfg.model.moe else "dense",
                "variant": run.variant,
                **_record_columns(rec),
                "N": rec.get("n_params", run.n_params),
                "N_active": rec.get("n_params_active", run.n_params_active),
                "D": rec.get("tokens", run.tokens),
                "C": rec.get("flops", run.flops),
                "budget": run.budget,
                "seed": run.seed,
                "d_model": cfg.model.d_model,
                "n_layers": cfg.model.n_layers,
                "n_heads": cfg.model.n_heads,
                "n_experts": cfg.model.moe.n_experts if cfg.model.moe else None,
                "top_k": cfg.model.moe.top_k if cfg.model.moe else None,
                "granularity": cfg.model.moe.granularity if cfg.model.moe else None,
                "params_basis": spec.grid.params,
                "epochs": rec.get("epochs", run.epochs),
                "lr": cfg.train.lr,
                "batch_size": cfg.train.batch_size,
                "steps": run.steps,
                # wsd_branches: trunks (constant lr, not scaling points: analysis.load_runs leaves them out) and
                # branches (trunk_id, the step they start from, and the compute they spent themselves)
                "role": run.role,
                "trunk_id": run.trunk_id,
                "branch_step": run.branch_step,
                "C_spent": run.spent_flops,
            }
        )
    df = pd.DataFrame(rows, columns=list(RUNS_COLUMNS))
    df["in_plan"] = True
    planned = set(df["run_id"]) if len(df) else set()
    extra = []  # runs recorded here whose config the (edited) sweep no longer plans: kept, never dropped from the table
    for d in sorted((sweep_dir / "runs").glob("*/record.json")) if (sweep_dir / "runs").is_dir() else []:
        if d.parent.name in planned:
            continue
        rec = read_record(d.parent) or {}
        extra.append({"run_id": d.parent.name, "sweep": spec.name, **_record_columns(rec), "N": rec.get("n_params"),
                      "N_active": rec.get("n_params_active"), "D": rec.get("tokens"), "C": rec.get("flops"), "seed": rec.get("seed"),
                      "role": "run", "in_plan": False})
    if extra:
        df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    write_atomic(sweep_dir / "runs.csv", df.to_csv(index=False))
    try:
        import pyarrow  # noqa: F401

        tmp = sweep_dir / f".runs.parquet.tmp{os.getpid()}"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, sweep_dir / "runs.parquet")
    except ImportError:
        pass
    return df


def preemption_summary(df: pd.DataFrame) -> dict:
    """Interruptions over a sweep's runs table: clean preemptions, restarts (requeued or rerun over an unfinished
    attempt), steps trained twice because they came after the last checkpoint, and the training time that cost
    (each run's steps recomputed x its step time)."""
    step_time = df["step_time_s"].astype(float)
    # unfinished runs have no step time yet: tokens per step / tokens per second
    est = (df["D"] / df["steps"]).astype(float) / df["tokens_per_sec"].astype(float)
    step_time = step_time.where(step_time.notna(), est)
    lost = (df["steps_recomputed"].astype(float) * step_time).fillna(0.0)
    return {
        "preemptions": int(df["preemptions"].sum()),
        "runs_preempted": int((df["preemptions"] > 0).sum()),
        "restarts": int(df["restarts"].sum()),
        "steps_recomputed": int(df["steps_recomputed"].sum()),
        "time_recomputed_s": float(lost.sum()),
    }


def status_table(spec: SweepSpec, sweep_dir: str | Path) -> pd.DataFrame:
    df = collect(spec, sweep_dir)
    sweep_dir = Path(sweep_dir)
    running = []
    for rid, st in zip(df["run_id"], df["status"]):
        claim = sweep_dir / "runs" / rid / "claim.json"
        running.append(st == "running" and claim.exists() and not Claim(claim, "")._is_stale(STALE_AFTER_S))
    df["status"] = [("running" if r else ("interrupted" if s == "running" else s)) for r, s in zip(running, df["status"])]
    return df


__all__ = ["Claim", "SweepResult", "collect", "parse_shard", "preemption_summary", "run_sweep", "status_table"]
