"""The ``--wandb`` option of ``scaling fit`` and ``scaling validate``: the result as one W&B run in the sweep's group
(parameters and intervals in the summary, predictions as Tables, plots as images)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def wandb_target(args, df) -> tuple[str, Path, str | None]:
    from analysis.wandb_log import default_group, sweep_project

    runs_path = args.runs if isinstance(args.runs, (str, Path)) else None
    group = args.wandb_group or default_group(df, runs_path)
    directory = Path(args.wandb_dir) if args.wandb_dir else (Path(runs_path).parent if runs_path else Path("."))
    return group, directory, args.wandb_project or sweep_project(runs_path)


def log_fit_to_wandb(args, df, label, out: dict, law, save_path: Path | None) -> None:
    """One W&B run for this fit: parameters and intervals in the summary, predictions as a Table, plots as images."""
    import matplotlib.pyplot as plt

    from analysis import plots
    from analysis.wandb_log import lock_artifact, log_fit, predictions_table, summary_of

    group, directory, project = wandb_target(args, df)
    name = f"fit-{args.law}" + (f"-{label}" if label is not None else "")
    artifacts = {f"runs-{group}": ("runs", Path(args.runs) if not isinstance(args.runs, list) else None), **lock_artifact()}
    if save_path is not None:
        artifacts[name] = ("fit", save_path)
    figures: dict = {}
    if law is None:  # isoflop
        res = args._isoflop_result
        summary = summary_of(out)
        tables = {"minima": res.minima_table()}
        figures = {"isoflop": plots.isoflop_curves(df, res), "allocation": plots.optimal_allocation(res)}
    else:
        summary = summary_of(law.to_dict())
        if law.name == "frontier":
            m = law.minima.rename(columns={"loss_opt": "loss"}).assign(C=law.minima["budget"])
            tables = {"predictions": m.assign(predicted=law.predict(m))[["budget", "N_opt", "loss", "predicted"]]}
            figures = {"frontier": plots.frontier(law, df)}
        else:
            tables = {"predictions": predictions_table(law, df)}
            if law.name == "chinchilla":
                figures = {"contours": plots.law_contours(law, df), "loss_vs_compute": plots.loss_vs_compute(df, law)}
        if "compute_optimal" in out:
            import pandas as pd

            tables["compute_optimal"] = pd.DataFrame(out["compute_optimal"])
    where = log_fit(name, summary, tables=tables, figures=figures, group=group, mode=args.wandb, directory=directory, project=project,
                    config={"law": args.law, "runs": str(args.runs), "n_runs": len(df), "by": args.by, "label": label}, artifacts=artifacts)
    for f in figures.values():
        plt.close(f)
    if not args.json:
        print(f"W&B ({args.wandb}): {name} in group {group} -> {where}", file=sys.stderr)


def log_validation_to_wandb(args, df, label, res: dict, cut: dict) -> None:
    import matplotlib.pyplot as plt

    from analysis import plots
    from analysis.jsonutil import json_safe
    from analysis.wandb_log import log_fit

    group, directory, project = wandb_target(args, df)
    summary, tables, figures = {"cutoff/" + k: v for k, v in cut.items()}, {}, {}
    for name, r in res.items():
        if "skipped" in r:
            summary[f"{name}/skipped"] = r["skipped"]
            continue
        for k in ("n_fit", "n_heldout", "mean_abs_rel_error", "max_abs_rel_error", "bias", "coverage"):
            summary[f"{name}/{k}"] = r["summary"].get(k)
        tables[f"predictions/{name}"] = r["predictions"]
        figures[f"heldout/{name}"] = plots.predicted_vs_actual(r["predictions"])
    name = "validate" + (f"-{label}" if label is not None else "")
    where = log_fit(name, json_safe(summary), tables=tables, figures=figures, group=group, mode=args.wandb, directory=directory, project=project,
                    job_type="validate", config={"laws": list(res), "runs": str(args.runs), "cutoff": cut, "label": label})
    for f in figures.values():
        plt.close(f)
    if not args.json:
        print(f"W&B ({args.wandb}): {name} in group {group} -> {where}", file=sys.stderr)


def add_wandb_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wandb", nargs="?", const="offline", choices=["offline", "online"], default=None,
                   help="also log the result as a W&B run in the sweep's group (offline unless 'online'): summary, tables, plots")
    p.add_argument("--wandb-group", default=None, help="W&B group (default: the table's sweep column, else its file name)")
    p.add_argument("--wandb-dir", default=None, help="where W&B writes (default: the runs table's directory)")
    p.add_argument("--wandb-project", default=None, help="W&B project (default: the sweep's, from sweep.yaml beside the table; else $WANDB_PROJECT or scaling)")
