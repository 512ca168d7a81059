"""Scaling-law analysis: load runs, fit laws, bootstrap intervals, IsoFLOP exponents, extrapolation checks, plots.

    from analysis import load_runs, ChinchillaLaw, bootstrap, plots
    runs = load_runs("runs.csv")
    law = bootstrap(ChinchillaLaw().fit(runs), runs, n=200)
    plots.law_contours(law, runs)
"""

from analysis import plots
from analysis.isoflop import IsoFLOPResult, isoflop_analysis
from analysis.laws import LAWS, ChinchillaLaw, KaplanLaw, Law, PowerLaw, load_fit, register
from analysis.runs import RunsError, chinchilla_runs, compute_frontier, llama3_isoflop_runs, load_runs
from analysis.uncertainty import bootstrap
from analysis.validate import leave_largest_out, make_law, validate_extrapolation

__all__ = [
    "LAWS",
    "ChinchillaLaw",
    "IsoFLOPResult",
    "KaplanLaw",
    "Law",
    "PowerLaw",
    "RunsError",
    "bootstrap",
    "chinchilla_runs",
    "compute_frontier",
    "isoflop_analysis",
    "leave_largest_out",
    "llama3_isoflop_runs",
    "load_fit",
    "load_runs",
    "make_law",
    "plots",
    "register",
    "validate_extrapolation",
]
