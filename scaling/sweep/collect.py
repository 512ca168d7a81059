"""A sweep's table: ``runs.csv`` (and ``runs.parquet``) from the plan and every run's record, and the status view
of a sweep directory (``scaling sweep status``). Reads records only; trains nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from scaling.storage import write_atomic
from scaling.sweep.claims import STALE_AFTER_S, Claim
from scaling.sweep.schema import PlannedRun, SweepSpec
from scaling.sweep.spec import plan_sweep
from scaling.train.record import read_record_or_damaged as read_record

# a stacked run's train_time_s / step_time_s are its share of the stack's (they add up to the stack's time);
# tokens_per_sec is the stack's rate; stack_size says how many trained together
TIMING_COLUMNS = ("tokens_per_sec", "step_time_s", "compile_time_s", "wall_time_s", "train_time_s", "stack_size")
# runs.csv, column by column (what a plan gives and what each run's record gives: ``collect``)
RUNS_COLUMNS = (
    "run_id", "sweep", "status", "kind", "variant", "N", "N_active", "N_nonembedding", "D", "C", "budget", "loss",
    "eval_loss", "eval_loss_stderr", "eval_bpb", "train_loss", "progress", "seed", "d_model", "n_layers", "n_heads",
    "n_experts", "top_k", "granularity", "params_basis", "epochs", "eval_tokens", "warnings", "lr", "lr_multiplier", "batch_size",
    "steps", "role", "trunk_id", "branch_step", "C_spent", "flops_convention", *TIMING_COLUMNS, "error", "preemptions",
    "restarts", "steps_recomputed",
)


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
                "lr_multiplier": run.lr_multiplier,
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


__all__ = ["RUNS_COLUMNS", "TIMING_COLUMNS", "collect", "preemption_summary", "status_table"]
