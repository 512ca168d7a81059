"""Adaptive IsoFLOP refinement: after a round of runs, refit each budget and add sizes where they help most.

A budget gets one more size per round when

* its lowest loss is at the smallest or largest size (the minimum is not bracketed): a size one step (the
  budget's median spacing in log N) beyond that end;
* or its minimum is bracketed but the 95% bootstrap interval of log10 N_opt (runs resampled within the budget, the
  robust ``local`` IsoFLOP method of ``analysis.isoflop``) is wider than ``target_dex`` (with too few sizes for a
  bootstrap: the interval between the minimum's two neighbours): a size in the middle of the gap between trained
  sizes that the interval overlaps most (weighted by the gap's width), where a new point shrinks the vertex's
  uncertainty most.

Sizes go through the size rule (``scaling.model.presets``); a proposal that lands on a width the budget already
has moves to the next-best gap, and a budget with no new width left is done.

The additions are written to ``SWEEP_DIR/adaptive.json`` and planned like every other run (``plan_sweep(...,
sweep_dir=...)``): hashed, claimable, resumable; the events log says why each was added.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from scaling.sweep.schema import ADDED_FILE, added_sizes

TARGET_DEX = 0.1  # default: the 95% interval of log10 N_opt at each budget narrower than 0.1 dex (x1.26)
BOOTSTRAP = 200


@dataclass(frozen=True)
class Addition:
    budget: float
    target_params: float
    reason: str
    round: int = 0


def budget_state(g: pd.DataFrame, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict:
    """One budget's completed runs (columns N, D, loss): its sizes, where the lowest loss is, and the 95% bootstrap
    interval of log10 N_opt when the minimum is bracketed."""
    from analysis.isoflop import bootstrap_minima, budget_minima

    per_size = g.groupby("N", sort=True)["loss"].mean()
    x = np.log10(per_size.index.to_numpy(float))
    i0 = int(np.argmin(per_size.to_numpy(float)))
    out = {"x": x, "i0": i0, "bracketed": 0 < i0 < len(x) - 1, "lo": None, "hi": None}
    # a quadratic through 3 sizes is exact: resampling them says nothing about the vertex; 4 sizes or more
    if len(x) >= 4 and out["bracketed"]:
        d = g.assign(budget=1.0)
        minima, _ = budget_minima(d)
        if len(minima):
            xs = bootstrap_minima(d, minima, n=n_boot, rng=np.random.default_rng(seed))["x_opt"][:, 0]
            xs = xs[np.isfinite(xs)]
            if len(xs) >= 10:
                out["x_opt"] = float(np.log10(minima["N_opt"].iloc[0]))
                out["lo"], out["hi"] = (float(v) for v in np.quantile(xs, [0.025, 0.975]))
    return out


def propose(
    df: pd.DataFrame, budgets: list[float], target_dex: float = TARGET_DEX, round_: int = 0, snap: Callable[[float], float] | None = None
) -> list[Addition]:
    """At most one new size per budget (see the module docstring); none where the budget is precise enough.

    ``snap(target)``: the parameter count of the model the size rule builds for ``target``; a proposal that snaps
    to a size the budget already has is replaced by the next-best gap (none left: the budget is as fine as the
    rule allows)."""
    snap = snap or (lambda n: n)
    adds = []
    for C in budgets:
        g = df[np.isclose(df["budget"].to_numpy(float), float(C), rtol=1e-9)]
        if g["N"].nunique() < 2:
            continue
        st = budget_state(g)
        x = st["x"]
        step = float(np.median(np.diff(x)))
        if not st["bracketed"]:
            end = "smallest" if st["i0"] == 0 else "largest"
            xn = x[0] - step if st["i0"] == 0 else x[-1] + step
            if _known(snap(10**xn), x):
                continue  # the size rule has nothing beyond this end (e.g. its smallest width)
            adds.append(Addition(float(C), 10**xn, f"minimum not bracketed: lowest loss at the {end} size ({10 ** x[st['i0']]:.3g})", round_))
        elif st["lo"] is None or st["hi"] - st["lo"] > target_dex:
            if st["lo"] is None:  # too few sizes for a bootstrap: the minimum lies between its two neighbours
                lo, hi = x[st["i0"] - 1], x[st["i0"] + 1]
                why = f"N_opt not determined by {len(x)} sizes (between {10**lo:.3g} and {10**hi:.3g})"
            else:
                lo, hi = st["lo"], st["hi"]
                why = f"N_opt 95% interval {hi - lo:.3f} dex > {target_dex:g} (N_opt {10 ** st['x_opt']:.3g} [{10 ** lo:.3g}, {10 ** hi:.3g}])"
            score = [max(0.0, min(hi, b) - max(lo, a)) * (b - a) for a, b in zip(x[:-1], x[1:])]
            new = [i for i in np.argsort(score)[::-1] if score[i] > 0 and not _known(snap(10 ** ((x[i] + x[i + 1]) / 2)), x)]
            if not new:
                continue
            i = int(new[0])
            xn = (x[i] + x[i + 1]) / 2
            adds.append(Addition(float(C), 10**xn, why, round_))
    return adds


def _known(n: float, x: np.ndarray) -> bool:
    return bool(np.any(np.isclose(np.log10(n), x, atol=1e-9)))


def record_additions(sweep_dir: str | Path, adds: list[Addition]) -> None:
    """Append to ``adaptive.json`` (rewritten atomically)."""
    from scaling.train.record import write_json_atomic

    path = Path(sweep_dir) / ADDED_FILE
    old = added_sizes(sweep_dir)
    write_json_atomic(path, {"added": old + [asdict(a) | {"time": time.time()} for a in adds]})


__all__ = ["Addition", "TARGET_DEX", "budget_state", "propose", "record_additions"]
