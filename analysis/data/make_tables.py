"""Rebuild the shipped tables in this folder from the published files (see SOURCES.md for each source).

    python analysis/data/make_tables.py SRC_DIR

SRC_DIR holds the published files under the names SOURCES.md lists. Every output has the canonical columns N, D,
C, loss (plus ``budget`` for IsoFLOP sweeps) so ``scaling fit|validate`` read it without column mapping; values
are as published, only renamed, selected or (where SOURCES.md says so) reduced.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.isoflop import assign_budgets

HERE = Path(__file__).resolve().parent


def llama3(src: Path) -> None:
    d = pd.read_csv(src / "llama3_isoflops_points_extracted.csv")
    out = pd.DataFrame({"budget": d["compute_budget"], "C": d["compute_budget"], "D": d["training_tokens"], "loss": d["validation_loss"]})
    out.to_csv(HERE / "llama3_isoflop_tidy.csv", index=False)


def marin(src: Path) -> None:
    optimal = []
    for name in ("comma", "dclm", "nemotron"):
        d = pd.read_csv(src / f"marin2026_isoflop_{name}.csv")
        t = pd.DataFrame(
            {
                "run": d["Name"],
                "N": d["parameter_count"].astype(float),
                "D": d["throughput/total_tokens"].astype(float),
                "C": d["throughput/total_gflops"].astype(float) * 1e9,
                "loss": d["eval/paloma/macro_loss"].astype(float),
            }
        )
        t["label"] = t["run"].str.extract(r"(?:optimal|isoflop)-([0-9.e+]+)-")[0].astype(float)
        is_opt = t["run"].str.contains("validation-optimal")
        grid = t[~is_opt].copy()
        # The budget in a run's name is about 2ND; the table's own FLOPs (total_gflops) are 3x it. Budgets are
        # the clusters of the table's C.
        grid["budget"] = assign_budgets(grid[["C"]]).to_numpy()  # clusters of log10 C, labelled by their geometric mean
        grid.drop(columns=["run"]).sort_values(["budget", "N"]).to_csv(HERE / f"marin2026_isoflop_{name}.csv", index=False)
        o = t[is_opt].drop(columns=["run"]).assign(dataset=name)
        optimal.append(o)
    pd.concat(optimal).sort_values(["dataset", "C"]).to_csv(HERE / "marin2026_validation_optimal.csv", index=False)


PORIAN = {
    "porian2024_isoflop_rw_reproducing_kaplan.csv": ("rw", "Reproducing Kaplan et al."),
    "porian2024_isoflop_rw_optimizer_tuning.csv": ("rw", "Optimizer tuning (no decay)"),
}


def porian(src: Path) -> None:
    d = pd.read_csv(src / "porian2024_isoflop_points.csv")
    for file, (ds, label) in PORIAN.items():
        g = d[(d["dataset"] == ds) & (d["label"] == label)]
        out = pd.DataFrame({"budget": g["flops"], "N": g["n"], "D": g["t"], "C": g["flops"], "loss": g["loss"]})
        out.sort_values(["budget", "N"]).to_csv(HERE / file, index=False)


def gadre(src: Path) -> None:
    d = pd.read_csv(src / "gadre2024_overtraining_runs.csv")
    g = d[d["dataset_name"] == "rpj"]
    out = pd.DataFrame(
        {"model": g["model_name"], "N": g["N"], "D": g["D"], "C": g["flops_6ND"].astype(float), "tok_mult": g["tok_mult"], "loss": g["loss_c4_val"]}
    )
    out.sort_values(["N", "D"]).to_csv(HERE / "gadre2024_overtraining_rpj.csv", index=False)


def misfitting(src: Path) -> None:
    d = pd.read_csv(src / "misfitting2025_scaling_results_last_ckpt_only.csv")
    best = d.loc[d.groupby(["N", "D"])["C4 Eval Loss"].idxmin()]
    out = pd.DataFrame({"model": best["model"], "N": best["N"].astype(float), "D": best["D"].astype(float), "C": best["C"].astype(float), "peak_lr": best["peak_lr"], "loss": best["C4 Eval Loss"]})
    out.sort_values(["N", "D"]).to_csv(HERE / "misfitting2025_best_lr.csv", index=False)


if __name__ == "__main__":
    src = Path(sys.argv[1])
    for f in (llama3, marin, porian, gadre, misfitting):
        f(src)
        print("done:", f.__name__)
