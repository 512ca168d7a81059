"""Load a table of training runs (ours or published) into the canonical columns N, D, C, loss.

C is the table's own training compute and D its own token count: a sweep's ``runs.csv`` counts FLOPs per token
(attention included) times D, which is not 6ND. They are derived only when the table lacks them: D = C / (6N),
C = 6ND, N = C / (6D), each derivation recorded in ``df.attrs["notes"]``. Optional canonical columns
(``OPTIONAL``: active parameters, experts, top-k, granularity, variant, budget) are kept, and can be mapped like
the others. Column names are mapped with ``col={"N": "Model Size", ...}``. Rows with missing or non-positive
values are rejected with a message naming them (``drop_invalid=True`` drops them instead, noting it). Every
problem with the file itself (missing, empty, binary, not a table) raises ``RunsError`` with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from analysis.errors import RunsError

CANONICAL = ("N", "D", "C", "loss")
OPTIONAL = ("N_active", "n_experts", "top_k", "granularity", "variant", "budget")
NUMERIC_OPTIONAL = ("N_active", "n_experts", "top_k", "granularity", "budget")
DATA_DIR = Path(__file__).resolve().parent / "data"

__all__ = ["CANONICAL", "OPTIONAL", "RunsError", "load_runs", "example_path", "example_runs", "EXAMPLES"]


def _read(source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.copy()
    p = Path(source)
    name = repr(str(p))
    if not p.exists():
        raise RunsError(f"runs table {name} does not exist")
    if p.is_dir():
        raise RunsError(f"runs table {name} is a directory, not a file")
    if p.stat().st_size == 0:
        raise RunsError(f"runs table {name} is empty")
    try:
        if p.suffix == ".parquet":
            return pd.read_parquet(p)
        head = p.open("rb").read(4096)
        if b"\x00" in head:
            raise RunsError(f"runs table {name} is a binary file, not a CSV, JSON or parquet table")
        if p.suffix == ".json":
            return pd.read_json(p)
        return pd.read_csv(p)
    except RunsError:
        raise
    except UnicodeDecodeError:
        raise RunsError(f"runs table {name} is not a text file (expected CSV, JSON or parquet)") from None
    except pd.errors.EmptyDataError:
        raise RunsError(f"runs table {name} has no columns (empty or blank)") from None
    except (pd.errors.ParserError, ValueError, OSError, ImportError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise RunsError(f"runs table {name} could not be read: {msg}") from None


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
    ``train_loss``; its ``loss`` column is the eval loss). ``status``: when the table has a ``status`` column,
    keep only rows with this status (None keeps all). Rows with ``role`` = trunk (a WSD sweep's constant-lr
    trunks) are always left out, noted."""
    df = _read(source)
    if len(df.columns) == 0:
        raise RunsError("the runs table has no columns")
    df.columns = [str(c) for c in df.columns]
    notes: list[str] = []
    mapping = dict(col or {})
    if loss is not None:
        mapping["loss"] = loss
    for canon, name in mapping.items():
        if canon not in CANONICAL + OPTIONAL:
            raise RunsError(f"--col {canon}=...: {canon!r} is not one of {', '.join(CANONICAL + OPTIONAL)}")
        if name not in df.columns:
            raise RunsError(f"--col {canon}={name!r}: no such column; columns are {', '.join(map(str, df.columns))}")
        if canon in df.columns and canon != name:
            df = df.drop(columns=[canon])
        df = df.rename(columns={name: canon})
    if "role" in df.columns and (df["role"] == "trunk").any():
        # a WSD sweep's trunks train at constant lr to feed their branches: not scaling points
        notes.append(f"{int((df['role'] == 'trunk').sum())} WSD trunk runs left out (their branches are the points)")
        df = df[df["role"] != "trunk"]
    if status is not None and "status" in df.columns:
        dropped = int((df["status"] != status).sum())
        df = df[df["status"] == status]
        if dropped:
            notes.append(f"{dropped} runs without status {status!r} left out")
    if "loss" not in df.columns:
        raise RunsError(f"the table has no 'loss' column (columns: {', '.join(map(str, df.columns))}); map one with --col loss=NAME")
    for c in CANONICAL + NUMERIC_OPTIONAL:
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    if "N" not in df.columns:
        if not {"C", "D"} <= set(df.columns):
            raise RunsError("the table has no 'N' (parameters) column; map one with --col N=NAME")
        df["N"] = df["C"] / (6 * df["D"])
        notes.append("N derived as C / (6D): the table has no parameter count")
    if "D" not in df.columns and "C" not in df.columns:
        raise RunsError("the table needs D (tokens) or C (FLOPs); map one with --col D=NAME or --col C=NAME")
    if "D" not in df.columns:
        df["D"] = df["C"] / (6 * df["N"])
        notes.append("D derived as C / (6N): the table has no token count")
    if "C" not in df.columns:
        df["C"] = 6 * df["N"] * df["D"]
        notes.append("C derived as 6ND: the table has no FLOPs column")
    bad = ~np.isfinite(df[list(CANONICAL)]).all(axis=1) | (df[list(CANONICAL)] <= 0).any(axis=1)
    if bad.any():
        rows = [str(i) for i in df.index[bad][:10]]
        msg = f"{int(bad.sum())} rows have missing or non-positive N, D, C or loss (rows {', '.join(rows)}{' ...' if bad.sum() > 10 else ''})"
        if not drop_invalid:
            raise RunsError(msg + "; fix them or pass --drop-invalid")
        df = df[~bad]
        notes.append(msg + ": dropped")
    if len(df) == 0:
        raise RunsError("no usable runs in the table")
    df = df.reset_index(drop=True)
    notes += table_notes(df)
    df.attrs["notes"] = notes
    return df


LEVERAGE_DEX = 2.0  # a run further than this (decades) from every other run in N, D or C is flagged
FLOPS_RULE = (1.0, 30.0)  # plausible FLOPs per parameter per token (6 under 6ND; 2-24 for every convention in use)


def table_notes(df: pd.DataFrame) -> list[str]:
    """What can make a fit on this table misleading, as notes: conflicting duplicates (the same N and D with
    different losses, and their scatter), extreme leverage (a run decades away from every other one), C that does
    not follow any FLOPs rule (C / (N D) far from 6: a unit error in N, D or C)."""
    notes = []
    dup = df.groupby(["N", "D"])["loss"]
    sizes = dup.transform("size")
    if (sizes > 1).any():
        g = df[sizes > 1].groupby(["N", "D"])["loss"]
        spread = (g.max() / g.min() - 1).max()
        sd = float(np.sqrt(g.apply(lambda x: np.var(np.log(x), ddof=1)).mean()))
        notes.append(f"{int(g.ngroups)} (N, D) points appear more than once with losses up to {100 * spread:.2g}% apart "
                     f"(log scatter {100 * sd:.2g}%): repeated seeds, or conflicting rows; the fit weighs each row")
    for c in ("N", "D", "C"):
        x = np.sort(np.log10(df[c].to_numpy(float)))
        if len(x) < 3:
            continue
        gaps = np.diff(x)
        if gaps[0] > LEVERAGE_DEX or gaps[-1] > LEVERAGE_DEX:
            which = [f"{c} = {10 ** x[0]:.3g}" for _ in [0] if gaps[0] > LEVERAGE_DEX] + [f"{c} = {10 ** x[-1]:.3g}" for _ in [0] if gaps[-1] > LEVERAGE_DEX]
            notes.append(f"extreme leverage: the run at {' and '.join(which)} is more than {LEVERAGE_DEX:g} decades from every other run; "
                         "it alone decides the fit at that end (check it, or drop it)")
    k = df["C"].to_numpy(float) / (df["N"].to_numpy(float) * df["D"].to_numpy(float))
    med = float(np.median(k))
    if not FLOPS_RULE[0] <= med <= FLOPS_RULE[1]:
        notes.append(f"C / (N D) = {med:.3g} (median): no FLOPs rule gives that (6 N D is 6); N, D or C is probably in other units")
    else:
        off = (k < med / 2) | (k > med * 2)
        if off.any():
            notes.append(f"{int(off.sum())} runs have C / (N D) more than 2x from the table's median {med:.3g} (from {k.min():.3g} to {k.max():.3g}): check their C")
    return notes


# Shipped tables (sources in analysis/data/SOURCES.md): name -> (file, load_runs keyword arguments).
EXAMPLES: dict[str, tuple[str, dict]] = {
    "chinchilla": ("epoch_chinchilla_tidy.csv", {}),
    "llama3_isoflop": ("llama3_isoflop_tidy.csv", {}),
    "marin_comma": ("marin2026_isoflop_comma.csv", {}),
    "marin_dclm": ("marin2026_isoflop_dclm.csv", {}),
    "marin_nemotron": ("marin2026_isoflop_nemotron.csv", {}),
    "porian_kaplan": ("porian2024_isoflop_rw_reproducing_kaplan.csv", {}),
    "porian_tuned": ("porian2024_isoflop_rw_optimizer_tuning.csv", {}),
    "gadre_rpj": ("gadre2024_overtraining_rpj.csv", {}),
    "misfitting": ("misfitting2025_best_lr.csv", {}),
}


def example_path(name: str = "chinchilla") -> Path:
    """Path of a shipped table by name (``EXAMPLES``) or file name."""
    return DATA_DIR / EXAMPLES.get(name, (name, {}))[0]


def example_runs(name: str = "chinchilla", **kw) -> pd.DataFrame:
    """A shipped table loaded with ``load_runs``."""
    file, opts = EXAMPLES.get(name, (name, {}))
    return load_runs(DATA_DIR / file, **{**opts, **kw})


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
    """Llama 3 (2024) Fig. 2 IsoFLOP points (digitised): budget C, tokens D and validation loss; N = C / (6D)."""
    return load_runs(example_path("llama3_isoflop"))
