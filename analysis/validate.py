"""Extrapolation checks: fit on small-compute runs, score predictions for the larger held-out runs.

This is the check that tells whether to trust an extrapolation: if a law fitted below 1e20 FLOPs misses the runs
above it, its 1e24 prediction deserves little trust.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.laws import LAWS, Law


def make_law(name: str, **kw) -> Law:
    if name not in LAWS:
        raise ValueError(f"unknown law {name!r}; known: {', '.join(LAWS)}")
    return LAWS[name](**kw)


def validate_extrapolation(
    df: pd.DataFrame, law: str | Law = "chinchilla", cutoff_flops: float | None = None, n_bootstrap: int = 0, seed: int = 0, **law_kw
) -> dict:
    """Fit ``law`` on runs with C <= cutoff_flops, predict the rest; errors absolute and relative."""
    if cutoff_flops is None:
        raise ValueError("cutoff_flops is required")
    train, test = df[df["C"] <= cutoff_flops], df[df["C"] > cutoff_flops]
    if len(train) < 5:
        raise ValueError(f"only {len(train)} runs at or below the cutoff {cutoff_flops:.3g}; need at least 5")
    if len(test) == 0:
        raise ValueError(f"no runs above the cutoff {cutoff_flops:.3g} FLOPs to validate on")
    model = make_law(law, **law_kw) if isinstance(law, str) else law
    model.fit(train.reset_index(drop=True))
    if n_bootstrap:
        from analysis.uncertainty import bootstrap

        bootstrap(model, train.reset_index(drop=True), n=n_bootstrap, seed=seed)
    pred = model.predict_interval(test, include_noise=True)  # single runs: parameter + run-to-run scatter
    out = test[["N", "D", "C", "loss"]].reset_index(drop=True).copy()
    out["predicted"] = pred["loss"].to_numpy()
    out["abs_error"] = out["predicted"] - out["loss"]
    out["rel_error"] = out["abs_error"] / out["loss"]
    if "lo" in pred:
        out["lo"], out["hi"] = pred["lo"].to_numpy(), pred["hi"].to_numpy()
        out["inside_interval"] = (out["loss"] >= out["lo"]) & (out["loss"] <= out["hi"])
    summary = {
        "law": model.name,
        "cutoff_flops": cutoff_flops,
        "n_fit": int(len(train)),
        "n_heldout": int(len(test)),
        "mae": float(np.mean(np.abs(out["abs_error"]))),
        "mean_rel_error": float(np.mean(out["rel_error"])),
        "max_abs_rel_error": float(np.max(np.abs(out["rel_error"]))),
        "rmse": float(np.sqrt(np.mean(out["abs_error"] ** 2))),
        "params": model.params,
    }
    if "inside_interval" in out:
        summary["coverage"] = float(out["inside_interval"].mean())
    return {"summary": summary, "predictions": out, "law": model}


def leave_largest_out(df: pd.DataFrame, law: str = "chinchilla", k: int | float = 0.1, **law_kw) -> dict:
    """Hold out the ``k`` largest-compute runs (a count, or a fraction when < 1) and score their predictions."""
    n = int(round(k * len(df))) if k < 1 else int(k)
    n = max(1, min(n, len(df) - 5))
    cutoff = float(np.sort(df["C"].to_numpy())[len(df) - n - 1])
    return validate_extrapolation(df, law, cutoff_flops=cutoff, **law_kw)
