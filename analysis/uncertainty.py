"""Bootstrap over runs: resample rows with replacement, refit, keep the parameter vectors.

A resample is a weighting of the runs (how many times each is drawn), so all resamples are refitted together by
the batched optimiser of ``analysis.optim``, each from the full-data optimum and from the ``extra_starts`` grid
points that score best on the full data; each resample keeps its best. Results depend only on ``seed``.
Laws may define their own resampling (the frontier law resamples runs within each compute budget).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.laws import Law
from analysis.optim import minimize_batched
from analysis.progress import progress_bar


def bootstrap(
    law: Law,
    df: pd.DataFrame,
    n: int = 1000,
    seed: int = 0,
    n_jobs: int | None = None,
    extra_starts: int = 1,
    progress: bool = False,
    level: float = 0.95,
) -> Law:
    """Fit ``law`` on ``df`` if needed, then attach ``n`` bootstrap parameter vectors (``law.bootstrap_samples``;
    a resample that cannot be fitted is a row of NaN) and add notes for degenerate intervals.

    ``n_jobs`` is accepted for compatibility and ignored: the batched refit runs in this process."""
    if law.theta is None:
        law.fit(df)
    if n <= 0:
        law.bootstrap_samples = None
        return law
    rng = np.random.default_rng(seed)
    X, Y, W = law.bootstrap_problems(df, n, rng)
    y_full = np.log(df["loss"].to_numpy(float)) if np.ndim(Y) == 1 and len(Y) == len(df) else None
    starts = [law.theta[None]]
    if extra_starts and y_full is not None:
        grid = law.starts()
        starts.append(grid[np.argsort(law.objective_batch(grid, X, y_full), kind="stable")[:extra_starts]])
    starts = np.vstack(starts)
    m = len(starts)
    theta0 = np.tile(starts, (n, 1))
    Yb = np.repeat(np.atleast_2d(Y), m, axis=0) if np.ndim(Y) == 2 else Y
    Wb = np.repeat(W, m, axis=0)
    lo, hi = law.bounds()
    with progress_bar(progress, f"bootstrap ({n} resamples)") as cb:
        res = minimize_batched(law.fit_model(X), theta0, Yb, Wb, delta=law.delta, lower=lo, upper=hi, on_iter=cb)
    f = res.fun.reshape(n, m)
    best = np.argmin(np.where(np.isfinite(f), f, np.inf), axis=1)
    thetas = res.theta.reshape(n, m, -1)[np.arange(n), best]
    failed = ~np.isfinite(f[np.arange(n), best]) | (W.sum(axis=1) == 0)
    thetas[failed] = np.nan
    law.bootstrap_samples = thetas
    law.notes = [s for s in law.notes if "interval of" not in s and "bootstrap resamples" not in s]
    if failed.any():
        law.notes.append(f"{int(failed.sum())} of {n} bootstrap resamples could not be fitted and are left out")
    law.notes += law.interval_notes(level)
    return law


def seed_scatter(df: pd.DataFrame, keys: tuple[str, ...] = ("N", "budget"), seed: str = "seed") -> dict:
    """Run-to-run scatter measured on repeated seeds: the pooled standard deviation of log loss over the seeds of
    every point (``keys``) trained with more than one, sigma = sqrt(sum_i (n_i - 1) s_i^2 / sum_i (n_i - 1)).

    Returns ``{"sigma": ..., "dof": ..., "n_points": ..., "points": [...]}``; sigma is a relative scatter (of the
    loss itself, to first order), None when no point has two seeds."""
    points, ss, dof = [], 0.0, 0
    for key, g in df.groupby(list(keys)):
        if g[seed].nunique() < 2:
            continue
        y = np.log(g["loss"].to_numpy(float))
        n = len(y)
        ss += float(((y - y.mean()) ** 2).sum())
        dof += n - 1
        points.append({**dict(zip(keys, np.atleast_1d(key))), "n_seeds": n, "sd": float(y.std(ddof=1))})
    return {"sigma": float(np.sqrt(ss / dof)) if dof else None, "dof": dof, "n_points": len(points), "points": points}
