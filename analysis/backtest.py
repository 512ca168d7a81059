"""The backtests that measure a law's extrapolation error (``analysis.calibration`` describes the model): the same law
refitted below internal compute cut-offs, predicting the runs above them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.calibration import (INNER_BOOTSTRAP, MAX_CUTOFFS, MIN_FIT_FRACTION, Calibration, compute_of, fit_kappa, floor_verdict,
                                  internal_cutoffs)
from analysis.errors import AnalysisError


def calibrate(law, df: pd.DataFrame, max_cutoffs: int = MAX_CUTOFFS, min_fit_fraction: float = MIN_FIT_FRACTION,
              progress: bool = False, inner_bootstrap: int = INNER_BOOTSTRAP):
    """Measure ``law``'s extrapolation error on ``df`` (the table it was fitted on) by nested backtests and attach
    it (``law.calibration``); returns the law. A law fitted on too few budgets to backtest gets ``kappa`` from no
    data: it is refused (``AnalysisError``) rather than given a fit-only interval under a calibrated name."""
    from analysis.errors import FitError

    if law.theta is None:
        law.fit(df)
    C = compute_of(df)
    sigma0 = float(law.resid_scale or 0.0)
    min_fit = max(law.n_params + 2, int(np.ceil(min_fit_fraction * len(df))))
    cuts = internal_cutoffs(C, min_fit, max_cutoffs)
    rows = []
    used = []
    refits = []
    for cut in cuts:
        below = df[C <= cut].reset_index(drop=True)
        above = df[C > cut].reset_index(drop=True)
        below.attrs["notes"] = list(df.attrs.get("notes", []))
        inner = type(law)(**law.config())
        if getattr(inner, "top_starts", None) is None and hasattr(inner, "top_starts"):
            inner.top_starts = 256  # the best-scoring starts only: the same optimum on every table tried, ~8x faster
        try:
            inner.fit(below)
            above = inner.targets_above(df, above, cut)  # the frontier law's: the minima above the cut
            pred = inner.predict(above)
        except (FitError, AnalysisError, ValueError):
            continue  # a cut that leaves this law underdetermined (e.g. too few budgets) is not a backtest
        c_fit = float(np.max(compute_of(below)))
        d = np.log10(compute_of(above) / c_fit)
        r = np.log(above["loss"].to_numpy(float) / pred)
        s_in = np.zeros(len(r))
        se = {}
        if inner_bootstrap:
            from analysis.uncertainty import bootstrap

            try:
                bootstrap(inner, below, n=inner_bootstrap, seed=len(used))
                with np.errstate(all="ignore"):
                    s_in = np.nanstd(np.log(inner.predict_samples(above)), axis=0, ddof=1)
                s_in = np.where(np.isfinite(s_in), s_in, 0.0)
                se = {k: iv["se"] for k, iv in inner.intervals().items()}
            except (FitError, AnalysisError, ValueError, RuntimeError):
                s_in = np.zeros(len(r))
        ok = np.isfinite(r) & np.isfinite(d)
        used.append(float(cut))
        refits.append({"cutoff": float(cut), "n_runs": len(below), "params": dict(inner.params), "se": se})
        rows += [{"cutoff": float(cut), "C": float(c), "d": float(x), "r": float(y), "s_inner": float(si)}
                 for c, x, y, si in zip(compute_of(above)[ok], d[ok], r[ok], s_in[ok])]
    if not rows:
        raise AnalysisError(
            f"cannot calibrate the {law.name} law's extrapolation on this table: no internal cut-off leaves the law "
            f"determined below it (tried {len(cuts)}); its intervals would only measure the fit, not the extrapolation"
        )
    res = pd.DataFrame(rows)
    kappa = fit_kappa(res["r"].to_numpy(), res["d"].to_numpy(), sigma0, res["s_inner"].to_numpy())
    law.calibration = Calibration(sigma0=sigma0, kappa=kappa, c_max=float(np.max(C)), n_backtests=len(used), n_residuals=len(res),
                                  cutoffs=used, max_distance=float(res["d"].max()), residuals=rows, refits=refits)
    verdict = floor_verdict(law)
    law.notes = [n for n in law.notes if not n.startswith("E not determined:")]
    if verdict is not None and not verdict["determined"]:
        law.notes.append(verdict["note"])
    return law


__all__ = ["calibrate"]
