"""Stage 2 of the quickstart: the laws fitted to the sweep (surface, frontier, Chinchilla, IsoFLOP exponents) with
bootstrap intervals and the run-to-run scatter the repeat seeds measured; and the calibrated prediction of one
run from a fitted law."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from scaling.quickstart.sizes import QuickstartSize


@dataclass
class Fits:
    law: Any  # the Chinchilla law (always fitted)
    frontier: Optional[Any]  # the frontier law on per-budget minima (None: too few bracketed budgets)
    surface: Optional[Any]  # the IsoFLOP surface law (None: too few budgets with 3 sizes)
    iso: Optional[Any]  # the IsoFLOP exponents (None: too few budgets with an interior minimum)
    scatter: dict  # the seed scatter (analysis.seed_scatter)

    @property
    def sigma(self) -> Optional[float]:
        return self.scatter["sigma"]


def clean(o):
    from analysis import json_safe

    return json_safe(o)


def fit_laws(size: QuickstartSize, runs, noise, report: Path, say) -> Fits:
    """Every law the report shows, each saved to ``report/fit_<law>.json`` (a law that cannot be fitted on this
    sweep saves its reason instead and is None)."""
    import pandas as pd

    from analysis import bootstrap, isoflop_analysis, seed_scatter
    from analysis.errors import FitError
    from analysis.laws import HUBER_K, ChinchillaLaw, FrontierLaw, SurfaceLaw

    keys = ("d_model", "n_layers", "budget")
    repeats = pd.concat([runs.merge(noise[list(keys)].drop_duplicates(), on=list(keys)), noise], ignore_index=True)
    scatter = seed_scatter(repeats, keys=keys)
    sigma = scatter["sigma"]
    law = ChinchillaLaw().fit(runs)
    bootstrap(law, runs, n=size.bootstrap, seed=0)
    law.save(report / "fit_chinchilla.json")
    try:
        frontier = FrontierLaw().fit(runs)
        bootstrap(frontier, runs, n=size.bootstrap, seed=0)
        frontier.save(report / "fit_frontier.json")
    except FitError as e:  # fewer bracketed budgets than the law has parameters: the Chinchilla law is the headline
        frontier = None
        (report / "fit_frontier.json").write_text(json.dumps({"law": "frontier", "error": str(e)}, indent=1))
        say(f"      frontier law not fitted on this sweep: {e}")
    try:
        # Huber's delta at 1.345 times the measured run-to-run scatter (95% efficient for Gaussian scatter); without
        # repeats, the first fit's own residual scatter. Ungrouped: the trunk random-intercept fit
        # (groups="trunk_id") gave narrower intervals but missed seed 2's measurement (benchmarks/RESULTS.md).
        scale = sigma or SurfaceLaw().fit(runs).resid_scale
        surface = SurfaceLaw(delta=HUBER_K * scale).fit(runs)
        bootstrap(surface, runs, n=size.bootstrap, seed=0)
        surface.save(report / "fit_surface.json")
    except FitError as e:
        surface = None
        (report / "fit_surface.json").write_text(json.dumps({"law": "surface", "error": str(e)}, indent=1))
        say(f"      surface law not fitted on this sweep: {e}")
    try:
        iso = isoflop_analysis(runs, n_bootstrap=1000, seed=0)
        (report / "fit_isoflop.json").write_text(json.dumps(clean(iso.to_dict()), indent=1))
    except ValueError as e:  # too few budgets with an interior minimum: noisy or badly bracketed sizes
        iso = None
        (report / "fit_isoflop.json").write_text(json.dumps({"law": "isoflop", "error": str(e)}, indent=1))
        say(f"      IsoFLOP analysis not possible on this sweep: {e}")
    return Fits(law, frontier, surface, iso, scatter)


def predict(law, runs, sigma, path: Path, say, **cols):
    """The held-out prediction with the law's calibrated interval (the fit-only one where the sweep cannot be
    backtested, said), the law re-saved with its calibration."""
    from analysis.backtest import calibrate
    from analysis.errors import AnalysisError

    try:
        calibrate(law, runs)
        law.save(path)
    except AnalysisError as e:
        say(f"      {law.name} law: intervals not calibrated ({e})")
    inputs = {k: v for k, v in cols.items() if k in law.inputs or (k == "C" and law.calibration is not None)}
    if law.calibration is not None:
        return law.predict_calibrated(noise_scale=sigma, **inputs).iloc[0]
    return law.predict_interval(noise_scale=sigma, **{k: v for k, v in inputs.items() if k in law.inputs}).iloc[0]
