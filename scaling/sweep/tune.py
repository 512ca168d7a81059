"""``scaling sweep fit-lr DIR``: the best learning rate of an ``lr_scan`` sweep as a law of N and D, written as a
recipe other sweeps name (``recipe: {from: DIR}``).

Reads the sweep's ``sweep.yaml`` and runs table (every completed run that is a scaling point: WSD trunks are left
out), fits ``analysis.lr_law``, and writes ``DIR/recipe.json`` (the law, what it was tuned under, the per-point best
lrs and the fit's errors) and ``DIR/lr_scan.png`` (loss against lr per horizon, the law's lr marked).
"""

from __future__ import annotations

import math
from pathlib import Path

from scaling.config import ConfigError
from scaling.sweep.recipe import LAW_FIELDS, RECIPE_FILE, RECIPE_VERSION, provenance_values
from scaling.train.record import write_json_atomic

# the fitted law is clipped to [smallest lr scanned / LR_FLOOR_FACTOR, largest lr scanned]: it is not trusted above
# any lr a run tried (a higher one may diverge), and may go below the scan (longer horizons want smaller steps)
LR_FLOOR_FACTOR = 4.0


def fit_recipe(sweep_dir: str | Path, say=print) -> dict:
    """Fit the lr law of the sweep in ``sweep_dir`` and write its recipe file; returns the file's content.
    ConfigError (one line) for a directory that is not an lr_scan sweep or cannot determine the law."""
    import numpy as np
    import pandas as pd

    from analysis.errors import AnalysisError
    from analysis.lr_law import fit_lr_law
    from scaling.sweep.collect import collect
    from scaling.sweep.spec import load_sweep, plan_sweep

    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "sweep.yaml").exists():
        raise ConfigError(f"{str(sweep_dir)!r} has no sweep.yaml (not a sweep directory)")
    spec = load_sweep(sweep_dir / "sweep.yaml")
    if len(spec.lr_scan) < 3:
        raise ConfigError(f"{str(sweep_dir)!r} is not an lr tuning sweep: its lr_scan lists {len(spec.lr_scan)} multipliers (at least 3 needed)")
    if len(spec.variants) > 1:
        raise ConfigError(f"{str(sweep_dir)!r} has {len(spec.variants)} variants: one recipe is fitted per setting (a run's "
                          "best lr depends on its variant); tune each variant in a sweep of its own")
    plan = plan_sweep(spec, sweep_dir=sweep_dir, n_devices=1)
    df = collect(spec, sweep_dir, plan)
    N_col = "N_active" if spec.grid.params == "active" else "N"
    status = dict(zip(df["run_id"], df["status"]))
    points = df[(df["role"] != "trunk") & df["in_plan"]]
    # a diverged run is a loss of +inf at its lr (and so is a branch whose trunk diverged): it marks the scan's upper
    # end without being a usable point
    diverged = (points["status"] == "diverged") | ((points["status"] == "failed") & points["trunk_id"].map(lambda t: status.get(t) == "diverged"))
    completed = points["status"] == "completed"
    if not completed.any():
        raise ConfigError(f"{str(sweep_dir)!r} has no completed runs yet: run the sweep first ('scaling sweep run')")
    table = pd.DataFrame({"N": points[N_col].astype(float), "D": points["D"].astype(float), "lr": points["lr"].astype(float),
                          "loss": np.where(diverged, np.inf, points["loss"].astype(float))})[completed | diverged]
    try:
        law = fit_lr_law(table)
    except AnalysisError as e:
        raise ConfigError(f"{sweep_dir}: {e}") from None
    lr_min, lr_max = law.lr_range[0] / LR_FLOOR_FACTOR, float(table.loc[np.isfinite(table["loss"]), "lr"].max())
    recipe = {"lr_base": law.lr_base, "lr_ref_params": law.N_ref, "lr_exponent": law.a, "lr_ref_tokens": law.D_ref,
              "lr_tokens_exponent": law.b, "lr_min": lr_min, "lr_max": lr_max}
    assert set(recipe) == set(LAW_FIELDS)
    pending = int(len(points) - len(table))
    notes = list(law.notes) + ([f"{pending} planned runs are not completed: the fit uses the completed ones"] if pending > 0 else [])
    doc = {
        "kind": "lr_recipe",
        "version": RECIPE_VERSION,
        "recipe": recipe,
        "provenance": provenance_values(r.config for r in plan),
        "basis": f"N_{spec.grid.params}",
        "fit": {
            "summary": law.summary(),
            "se": law.se,
            "residual_sd_log_lr": law.residual_sd,
            "points": law.points.to_dict(orient="records"),
            "lr_scan": [float(m) for m in spec.lr_scan],
            "notes": notes,
        },
        "sweep": {"dir": str(sweep_dir.absolute()), "name": spec.name, "runs_completed": int(completed.sum()),
                  "runs_diverged": int(diverged.sum())},
    }
    write_json_atomic(sweep_dir / RECIPE_FILE, doc)
    try:
        from analysis import plots

        plots.save(plots.lr_scan(table, law), sweep_dir / "lr_scan.png")
    except Exception as e:  # a figure never costs the recipe
        notes.append(f"lr_scan.png not drawn: {e}")
    say(law.summary())
    for n in notes:
        say(f"note: {n}")
    say(f"recipe: {sweep_dir / RECIPE_FILE} (name it in a sweep as recipe: {{from: {sweep_dir}}}); figure: {sweep_dir / 'lr_scan.png'}")
    return doc


__all__ = ["LR_FLOOR_FACTOR", "fit_recipe"]
