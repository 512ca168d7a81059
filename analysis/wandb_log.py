"""Fits on the dashboard: one W&B run per fit (or validation), in the sweep's group, beside the training runs.

The run's summary holds the law's parameters, their bootstrap standard errors and 95% intervals, the objective and
the notes; the per-run predictions go in as a W&B Table and the plots as images. Offline by default (no account,
no network: files under ``DIR/wandb/offline-run-*``; ``wandb sync`` uploads them later). ``wandb`` is imported
only here, and only when asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from analysis.errors import AnalysisError
from analysis.jsonutil import json_safe

PROJECT = "scaling"


def default_group(df, runs_path: str | Path | None = None) -> str:
    """The sweep a runs table came from (its ``sweep`` column), else the table's file name."""
    if "sweep" in getattr(df, "columns", ()):
        names = sorted({str(s) for s in df["sweep"].dropna()})
        if len(names) == 1:
            return names[0]
    return Path(runs_path).stem if runs_path else "fits"


def summary_of(law_dict: dict) -> dict:
    """Flat summary keys of a law's ``to_dict()``: ``param/NAME``, ``param/NAME/lo|hi|se``, objective, notes."""
    out: dict[str, Any] = {}
    for k, v in (law_dict.get("params") or {}).items():
        out[f"param/{k}"] = v
    for k, iv in (law_dict.get("intervals") or {}).items():
        for q in ("lo", "hi", "se"):
            if q in iv:
                out[f"param/{k}/{q}"] = iv[q]
    for k in ("law", "form", "objective", "n_points", "resid_scale", "a", "b"):
        if k in law_dict and isinstance(law_dict[k], (int, float, str)):
            out[k] = law_dict[k]
    if law_dict.get("notes"):
        out["notes"] = " | ".join(law_dict["notes"])
    return json_safe(out)


def log_fit(
    name: str,
    summary: dict,
    *,
    tables: dict | None = None,
    figures: dict | None = None,
    group: str | None = None,
    mode: str = "offline",
    directory: str | Path = ".",
    job_type: str = "fit",
    config: dict | None = None,
    project: str | None = None,
    artifacts: dict | None = None,
) -> Path | None:
    """Log one fit as a W&B run; returns the run's directory (offline: the ``offline-run-*`` folder).

    ``artifacts``: ``{name: (type, path)}`` files versioned with the fit (the runs table it was fitted on, the fit
    itself, the lock file of the environment); ``lock_artifact()`` adds the last."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency of the project
        raise AnalysisError("--wandb needs the wandb package (pip install wandb)") from None
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalysisError(f"cannot write W&B files under {str(directory)!r}: {e.strerror or e}") from None
    try:
        run = _init(wandb, project, group, job_type, name, mode, directory, config)
    except Exception as e:  # not logged in, no network for online mode, a bad setting: one line, not a traceback
        raise AnalysisError(f"W&B ({mode}) could not start a run: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    try:
        run.summary.update(summary)
        payload: dict[str, Any] = {}
        for key, df in (tables or {}).items():
            df = df.replace([np.inf, -np.inf], np.nan)
            payload[key] = wandb.Table(dataframe=df.reset_index(drop=True))
        for key, fig in (figures or {}).items():
            payload[key] = wandb.Image(fig)
        if payload:
            run.log(payload)
        for art_name, (kind, path) in (artifacts or {}).items():
            if path is not None and Path(path).is_file():
                art = wandb.Artifact(_artifact_name(art_name), type=kind)
                art.add_file(str(path))
                run.log_artifact(art)
        where = Path(run.dir).parent if mode != "disabled" else None
    finally:
        run.finish()
    return where


def _artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, dashes, underscores and dots."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "artifact"


def lock_artifact() -> dict:
    """The environment's ``uv.lock`` (the exact library versions) as an artifact entry, where this is a checkout."""
    lock = Path(__file__).resolve().parents[1] / "uv.lock"
    return {"uv.lock": ("environment", lock)} if lock.is_file() else {}


def _init(wandb, project, group, job_type, name, mode, directory, config):
    return wandb.init(
        project=project or os.environ.get("WANDB_PROJECT", PROJECT),
        group=group,
        job_type=job_type,
        name=name,
        mode=mode,
        dir=str(directory),
        config=json_safe(config or {}),
        reinit="finish_previous",
        settings=wandb.Settings(silent=True, console="off"),
    )


def sweep_project(runs_path: str | Path | None) -> str | None:
    """The W&B project of the sweep whose ``runs.csv`` this is (its ``sweep.yaml``'s ``base.log.wandb_project``)."""
    if not runs_path:
        return None
    spec = Path(runs_path).parent / "sweep.yaml"
    try:
        import yaml

        raw = yaml.safe_load(spec.read_text()) or {}
        return ((raw.get("base") or {}).get("log") or {}).get("wandb_project")
    except Exception:  # no sweep.yaml beside the table, or not a sweep file
        return None


def predictions_table(law, df):
    """The fitted runs with the law's prediction and residual (log) for each."""
    import pandas as pd

    cols = [c for c in ("run_id", "variant", "budget", "N", "D", "C") if c in df.columns]
    out = pd.DataFrame({c: df[c].to_numpy() for c in cols})
    out["loss"] = df["loss"].to_numpy(float)
    out["predicted"] = law.predict(df)
    out["log_residual"] = np.log(out["loss"] / out["predicted"])
    return out


__all__ = ["default_group", "lock_artifact", "log_fit", "predictions_table", "summary_of", "sweep_project"]
