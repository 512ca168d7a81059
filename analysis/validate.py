"""Extrapolation checks: fit on small runs, score predictions for the larger held-out runs, law by law.

This is the check that tells whether to trust an extrapolation: if a law fitted below 1e20 FLOPs misses the runs
above it, its 1e24 prediction deserves little trust. ``compare_laws`` runs it for several laws on the same split
and reports, per law: runs fitted / held out, mean and max |relative error|, signed bias, and the coverage of the
95% single-run prediction interval (bootstrap over the fitted runs plus their run-to-run scatter).

The frontier law predicts compute-optimal losses, so its held-out targets are the IsoFLOP minima of the budgets
above the cut-off (same method as its fit), not the individual runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError, FitError
from analysis.laws import LAW_ALIASES, LAWS, Law, make_law
from analysis.laws.registry import law_kwargs

__all__ = ["compare_laws", "default_cutoff_flops", "laws_in_all", "leave_largest_out", "make_law", "validate_extrapolation"]


def laws_in_all() -> list[str]:
    """Laws (and aliases) that ``--law all`` compares: those whose class sets ``validate_in_all``."""
    names = [n for n, c in LAWS.items() if getattr(c, "validate_in_all", False)]
    return names[:1] + [a for a, (base, _) in LAW_ALIASES.items() if base in names] + names[1:]


def default_cutoff_flops(df: pd.DataFrame, lo_frac: float = 0.1, hi_frac: float = 0.3) -> float:
    """A compute cut-off holding out the largest runs: of the gaps between consecutive distinct C values that leave
    between ``lo_frac`` and ``hi_frac`` of the runs above, the widest in log C (a budget boundary on an IsoFLOP
    sweep); the cut-off is the geometric mean of the two C values either side."""
    C = np.sort(df["C"].to_numpy(float))
    n = len(C)
    if n < 2 or C[0] == C[-1]:
        raise FitError("cannot choose a compute cut-off: every run has the same C")
    best, best_gap = None, -1.0
    for i in range(1, n):
        held = n - i
        if C[i] <= C[i - 1] or not (max(1, lo_frac * n) <= held <= max(1, hi_frac * n)):
            continue
        gap = np.log(C[i] / C[i - 1])
        if gap > best_gap:
            best, best_gap = i, gap
    if best is None:  # tiny tables: hold out the runs at the largest C
        best = int(np.searchsorted(C, C[-1]))
        if best == 0:
            raise FitError("cannot choose a compute cut-off: every run has the same C")
    return float(np.sqrt(C[best - 1] * C[best]))


def _split(df: pd.DataFrame, cutoff_flops: float | None, cutoff_params: float | None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    if (cutoff_flops is None) == (cutoff_params is None):
        raise AnalysisError("give exactly one of cutoff_flops or cutoff_params")
    if cutoff_flops is not None:
        col, cut, key = "C", cutoff_flops, "flops"
    else:
        col, cut, key = "N", cutoff_params, "params"
    train, test = df[df[col] <= cut].reset_index(drop=True), df[df[col] > cut].reset_index(drop=True)
    unit = "FLOPs" if key == "flops" else "parameters"
    if len(train) == 0:
        raise FitError(f"no runs at or below the cut-off {cut:.3g} {unit} to fit on")
    if len(test) == 0:
        raise FitError(f"no runs above the cut-off {cut:.3g} {unit} to validate on")
    train.attrs["notes"] = list(df.attrs.get("notes", []))
    return train, test, {key: float(cut)}


def validate_extrapolation(
    df: pd.DataFrame,
    law: str | Law = "chinchilla",
    cutoff_flops: float | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    cutoff_params: float | None = None,
    level: float = 0.95,
    calibrated: bool = True,
    **law_kw,
) -> dict:
    """Fit ``law`` on runs with C <= cutoff_flops (or N <= cutoff_params), predict the rest.

    Returns {"summary": {...}, "predictions": DataFrame, "law": fitted law}. The summary has n_fit, n_heldout,
    mean_abs_rel_error, max_abs_rel_error, bias (mean signed relative error), coverage (share of held-out runs
    inside the ``level`` single-run prediction interval: with ``calibrated`` (default) the interval widened by the
    extrapolation error that backtests inside the fitted runs measured, ``analysis.calibration``; else the
    bootstrap's, which needs n_bootstrap > 0), coverage_fit_only, coverage_68, median_half_width, mae, rmse,
    params, notes; calibrated: kappa, kappa_backtests, sigma0, n_backtests and width_from_backtests (the share of
    held-out runs whose width the per-backtest read set)."""
    model = make_law(law, **law_kw) if isinstance(law, str) else law
    name = law if isinstance(law, str) else model.name
    if cutoff_flops is None and cutoff_params is None:
        cutoff_flops = default_cutoff_flops(df)
    train, test, cut = _split(df, cutoff_flops, cutoff_params)
    train, test = model.holdout(df, train, test, cutoff_flops)
    target = model.target_kind
    model.fit(train)
    if n_bootstrap:
        from analysis.uncertainty import bootstrap

        bootstrap(model, train, n=n_bootstrap, seed=seed, level=level)
    from analysis.backtest import calibrate
    from analysis.calibration import calibrated_interval

    calibration_note = None
    if calibrated:
        try:  # backtests inside the fitted runs only: the held-out runs play no part in their interval
            calibrate(model, train)
        except AnalysisError as e:
            calibration_note = str(e)
    out = test[[c for c in ("budget", "N", "D", "C", "loss") if c in test.columns]].reset_index(drop=True).copy()
    cal = getattr(model, "calibration", None) if calibrated else None
    if cal is not None:  # single runs: parameters + run scatter + the extrapolation error the backtests measured
        pred = calibrated_interval(model, test, level=level, include_noise=True)
        p68 = calibrated_interval(model, test, level=0.68, include_noise=True)
        out["lo68"], out["hi68"] = p68["lo"].to_numpy(), p68["hi"].to_numpy()
    else:
        pred = model.predict_interval(test, level=level, include_noise=True)
    out["predicted"] = pred["loss"].to_numpy()
    out["abs_error"] = out["predicted"] - out["loss"]
    out["rel_error"] = out["abs_error"] / out["loss"]
    if "lo" in pred:
        out["lo"], out["hi"] = pred["lo"].to_numpy(), pred["hi"].to_numpy()
        out["inside_interval"] = (out["loss"] >= out["lo"]) & (out["loss"] <= out["hi"])
    if "fit_lo" in pred:
        out["fit_lo"], out["fit_hi"] = pred["fit_lo"].to_numpy(), pred["fit_hi"].to_numpy()
    if "read" in pred:
        out["read"] = pred["read"].to_numpy()  # which read of the backtests set the interval's width
    summary = _summary(name, model, cut, target, out, cal, level, calibration_note, cutoff_flops)
    return {"summary": summary, "predictions": out, "law": model}


def _summary(name: str, model: Law, cut: dict, target: str, out: pd.DataFrame, cal, level: float, calibration_note: str | None,
             cutoff_flops: float | None) -> dict:
    """The held-out check's figures: errors, bias, coverage of the reported interval (and of the fit-only and 68%
    ones), its median half-width, the calibration used."""
    rel = out["rel_error"].to_numpy(float)
    summary = {
        "law": name,
        "form": model.form,
        "cutoff": cut,
        "target": target,
        "n_fit": int(model.n_points),
        "n_heldout": int(len(out)),
        "mean_abs_rel_error": float(np.mean(np.abs(rel))),
        "max_abs_rel_error": float(np.max(np.abs(rel))),
        "bias": float(np.mean(rel)),
        "coverage": float(out["inside_interval"].mean()) if "inside_interval" in out else None,
        "interval": "calibrated" if cal is not None else "fit-only",
        "interval_level": level,
        "median_half_width": float(np.median((out["hi"] - out["lo"]) / 2 / out["predicted"])) if "lo" in out else None,
        "mean_rel_error": float(np.mean(rel)),
        "mae": float(np.mean(np.abs(out["abs_error"]))),
        "rmse": float(np.sqrt(np.mean(out["abs_error"] ** 2))),
        "params": model.params,
        "notes": list(model.notes),
    }
    if "fit_lo" in out:
        summary["coverage_fit_only"] = float(((out["loss"] >= out["fit_lo"]) & (out["loss"] <= out["fit_hi"])).mean())
    if "lo68" in out:
        summary["coverage_68"] = float(((out["loss"] >= out["lo68"]) & (out["loss"] <= out["hi68"])).mean())
    if cal is not None:
        summary |= {"kappa": cal.kappa, "kappa_backtests": cal.kappa_backtests, "sigma0": cal.sigma0, "n_backtests": cal.n_backtests}
        if "read" in out:
            summary["width_from_backtests"] = float((out["read"] == "backtest").mean())  # share of held-out runs
    if calibration_note:
        summary["notes"].append(calibration_note)
    if cutoff_flops is not None:
        summary["cutoff_flops"] = float(cutoff_flops)
    return summary


def compare_laws(
    df: pd.DataFrame,
    laws: list[str] | None = None,
    cutoff_flops: float | None = None,
    cutoff_params: float | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    method: str | None = None,
    top_starts: int | None = None,
    progress: bool = True,
    calibrated: bool = True,
) -> dict[str, dict]:
    """``validate_extrapolation`` for each law on the same split (default: ``laws_in_all()``); a law that refuses
    the table is reported as {"skipped": reason} instead of failing the comparison. ``top_starts`` limits each law's
    start grid to its best-scoring K starts (faster, may miss a global optimum). ``progress``: a line per law on
    stderr as it is done (with its time)."""
    import sys
    import time

    laws = laws or laws_in_all()
    if cutoff_flops is None and cutoff_params is None:
        cutoff_flops = default_cutoff_flops(df)
    out: dict[str, dict] = {}
    t0 = time.perf_counter()
    for i, name in enumerate(laws):
        kw: dict = {"method": method} if method and "method" in law_kwargs(name) else {}
        if top_starts:
            kw["top_starts"] = top_starts
        t = time.perf_counter()
        try:
            out[name] = validate_extrapolation(df, name, cutoff_flops=cutoff_flops, cutoff_params=cutoff_params, n_bootstrap=n_bootstrap,
                                               seed=seed, calibrated=calibrated, **kw)
        except AnalysisError as e:
            out[name] = {"skipped": str(e)}
        if progress:
            what = "skipped" if "skipped" in out[name] else f"mean |rel err| {100 * out[name]['summary']['mean_abs_rel_error']:.2f}%"
            print(f"compare_laws: {name} ({i + 1}/{len(laws)}) {what}, {time.perf_counter() - t:.1f}s "
                  f"(total {time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
    return out


def leave_largest_out(df: pd.DataFrame, law: str = "chinchilla", k: int | float = 0.1, n_bootstrap: int = 0, **law_kw) -> dict:
    """Hold out the ``k`` largest-compute runs (a count, or a fraction when < 1) and score their predictions."""
    n = int(round(k * len(df))) if k < 1 else int(k)
    n = max(1, min(n, len(df) - 1))
    C = np.sort(df["C"].to_numpy())
    cutoff = float(C[len(df) - n - 1])
    return validate_extrapolation(df, law, cutoff_flops=cutoff, n_bootstrap=n_bootstrap, **law_kw)
