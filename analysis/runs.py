"""Load a table of training runs (ours or published) into the canonical columns N, D, C, loss.

Column names are mapped with ``col={"N": "Model Size", ...}``. If D is missing it is C / (6N); if C is missing it
is 6ND; if N is missing it is C / (6D); each derivation is recorded in ``df.attrs["notes"]``. Rows with missing or non-positive values are
rejected with a message naming them (``drop_invalid=True`` drops them instead, noting it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

CANONICAL = ("N", "D", "C", "loss")
DATA_DIR = Path(__file__).resolve().parent / "data"


class RunsError(ValueError):
    """The runs table cannot be used as given."""


def _read(source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.copy()
    p = Path(source)
    if not p.exists():
        raise RunsError(f"runs table {str(p)!r} does not exist")
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    if p.suffix == ".json":
        return pd.read_json(p)
    return pd.read_csv(p)


def load_runs(
    source,
    col: Mapping[str, str] | None = None,
    *,
    loss: str | None = None,
    status: str | None = "completed",
    drop_invalid: bool = False,
) -> pd.DataFrame:
    """A DataFrame with float columns N, D, C, loss (and every other column kept), validated.

    ``loss`` picks the loss column when the table has several (a ``runs.csv`` of a sweep has ``eval_loss`` and
    ``final_train_loss``; its ``loss`` column is the eval loss). ``status``: when the table has a ``status``
    column, keep only rows with this status (None keeps all)."""
    df = _read(source)
    notes: list[str] = []
    mapping = dict(col or {})
    if loss is not None:
        mapping["loss"] = loss
    for canon, name in mapping.items():
        if canon not in CANONICAL:
            raise RunsError(f"--col {canon}=...: {canon!r} is not one of {', '.join(CANONICAL)}")
        if name not in df.columns:
            raise RunsError(f"--col {canon}={name!r}: no such column; columns are {', '.join(map(str, df.columns))}")
        if canon in df.columns and canon != name:
            df = df.drop(columns=[canon])
        df = df.rename(columns={name: canon})
    if status is not None and "status" in df.columns:
        dropped = int((df["status"] != status).sum())
        df = df[df["status"] == status]
        if dropped:
            notes.append(f"{dropped} runs without status {status!r} left out")
    if "loss" not in df.columns:
        raise RunsError(f"the table has no 'loss' column (columns: {', '.join(map(str, df.columns))}); map one with col={{'loss': NAME}}")
    for c in ("N", "D", "C", "loss"):
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    if "N" not in df.columns:
        if not {"C", "D"} <= set(df.columns):
            raise RunsError("the table has no 'N' (parameters) column; map one with col={'N': NAME}")
        df["N"] = df["C"] / (6 * df["D"])
        notes.append("N derived as C / (6D)")
    if "D" not in df.columns and "C" not in df.columns:
        raise RunsError("the table needs D (tokens) or C (FLOPs); map one with col={'D': NAME} or col={'C': NAME}")
    if "D" not in df.columns:
        df["D"] = df["C"] / (6 * df["N"])
        notes.append("D derived as C / (6N)")
    if "C" not in df.columns:
        df["C"] = 6 * df["N"] * df["D"]
        notes.append("C derived as 6ND")
    bad = ~np.isfinite(df[list(CANONICAL)]).all(axis=1) | (df[list(CANONICAL)] <= 0).any(axis=1)
    if bad.any():
        rows = [str(i) for i in df.index[bad][:10]]
        msg = f"{int(bad.sum())} rows have missing or non-positive N, D, C or loss (rows {', '.join(rows)}{' ...' if bad.sum() > 10 else ''})"
        if not drop_invalid:
            raise RunsError(msg + "; fix them or pass drop_invalid=True")
        df = df[~bad]
        notes.append(msg + ": dropped")
    if len(df) == 0:
        raise RunsError("no usable runs in the table")
    df = df.reset_index(drop=True)
    df.attrs["notes"] = notes
    return df


def example_path(name: str = "chinchilla") -> Path:
    """Shipped example tables (sources in ``analysis/data/SOURCES.md``)."""
    files = {"chinchilla": "epoch_chinchilla_tidy.csv", "llama3_isoflop": "llama3_isoflops_points_extracted.csv"}
    return DATA_DIR / files.get(name, name)


def chinchilla_runs(exclude_highest_loss: int = 5) -> pd.DataFrame:
    """Hoffmann et al. 2022 Fig. 4 runs as digitised by Besiroglu et al. 2024, without the 5 highest-loss points
    (their procedure)."""
    df = load_runs(example_path("chinchilla"))
    if exclude_highest_loss:
        df = df.drop(df["loss"].nlargest(exclude_highest_loss).index).reset_index(drop=True)
    return df


def compute_frontier(df: pd.DataFrame, x: str = "C", y: str = "loss") -> pd.DataFrame:
    """The lower envelope: runs that reach a lower loss than every run with less (or equal) compute."""
    d = df.sort_values([x, y]).reset_index(drop=True)
    best = np.minimum.accumulate(d[y].to_numpy())
    keep = np.r_[True, d[y].to_numpy()[1:] < best[:-1]]
    return d[keep].reset_index(drop=True)


def llama3_isoflop_runs() -> pd.DataFrame:
    """Llama 3 (2024) Fig. 2 IsoFLOP points (digitised): budget, tokens and validation loss; N = C / (6D)."""
    df = load_runs(example_path("llama3_isoflop"), col={"C": "compute_budget", "D": "training_tokens", "loss": "validation_loss"})
    df["budget"] = df["C"]
    return df
