"""Scaling-law analysis: load runs, fit laws, bootstrap intervals, IsoFLOP exponents, extrapolation checks, plots.

    from analysis import load_runs, ChinchillaLaw, bootstrap, plots
    runs = load_runs("runs.csv")
    law = bootstrap(ChinchillaLaw().fit(runs), runs, n=200)
    plots.law_contours(law, runs)

Names are imported on first use, so ``import analysis`` (and the ``scaling`` command line) stays fast and
matplotlib is loaded only when a plot is drawn. The package needs numpy, scipy, pandas and matplotlib only.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "plots": ("analysis.plots", None),
    "AnalysisError": ("analysis.errors", "AnalysisError"),
    "FitError": ("analysis.errors", "FitError"),
    "RunsError": ("analysis.errors", "RunsError"),
    "IsoFLOPResult": ("analysis.isoflop", "IsoFLOPResult"),
    "isoflop_analysis": ("analysis.isoflop", "isoflop_analysis"),
    "LAWS": ("analysis.laws", "LAWS"),
    "ChinchillaLaw": ("analysis.laws", "ChinchillaLaw"),
    "FrontierLaw": ("analysis.laws", "FrontierLaw"),
    "SurfaceLaw": ("analysis.laws", "SurfaceLaw"),
    "KaplanLaw": ("analysis.laws", "KaplanLaw"),
    "Law": ("analysis.laws", "Law"),
    "PowerLaw": ("analysis.laws", "PowerLaw"),
    "law_names": ("analysis.laws", "law_names"),
    "load_fit": ("analysis.laws", "load_fit"),
    "make_law": ("analysis.laws", "make_law"),
    "register": ("analysis.laws", "register"),
    "json_safe": ("analysis.jsonutil", "json_safe"),
    "chinchilla_runs": ("analysis.runs", "chinchilla_runs"),
    "compute_frontier": ("analysis.runs", "compute_frontier"),
    "example_path": ("analysis.runs", "example_path"),
    "example_runs": ("analysis.runs", "example_runs"),
    "llama3_isoflop_runs": ("analysis.runs", "llama3_isoflop_runs"),
    "load_runs": ("analysis.runs", "load_runs"),
    "bootstrap": ("analysis.uncertainty", "bootstrap"),
    "calibrate": ("analysis.backtest", "calibrate"),
    "Calibration": ("analysis.calibration", "Calibration"),
    "seed_scatter": ("analysis.uncertainty", "seed_scatter"),
    "compare_laws": ("analysis.validate", "compare_laws"),
    "leave_largest_out": ("analysis.validate", "leave_largest_out"),
    "validate_extrapolation": ("analysis.validate", "validate_extrapolation"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
