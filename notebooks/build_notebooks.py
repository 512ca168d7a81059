"""Regenerate the analysis notebooks from this script (``python notebooks/build_notebooks.py``), so they stay
reviewable as code; the tests execute them top to bottom."""

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent


def chinchilla_walkthrough() -> nbf.NotebookNode:
    md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
    cells = [
        md(
            "# Scaling laws from published runs\n\n"
            "A tour of the `analysis` package on shipped public data: the Chinchilla refit (Hoffmann et al. 2022, as "
            "replicated by Besiroglu et al. 2024), bootstrap intervals, compute-optimal allocation, an IsoFLOP analysis "
            "(Llama 3 points), and an extrapolation check. Sources: `analysis/data/SOURCES.md`."
        ),
        code(
            "import time\n"
            "import numpy as np\n"
            "from analysis import ChinchillaLaw, bootstrap, chinchilla_runs, isoflop_analysis, llama3_isoflop_runs, plots, validate_extrapolation\n"
            "%matplotlib inline"
        ),
        md("## 1. Load, fit, plot — three lines\n\nThe 5 highest-loss points are dropped, as in Besiroglu et al."),
        code(
            "runs = chinchilla_runs()\n"
            "law = ChinchillaLaw().fit(runs)\n"
            "print(len(runs), 'runs;', law, f'objective {law.objective:.8f}; fit in {law.fit_time_s:.2f}s')"
        ),
        code(
            "published = dict(E=1.81724, A=477.84, B=2143.86, alpha=0.347313, beta=0.367183)\n"
            "for k, v in published.items():\n"
            "    print(f'{k:6s} fitted {law.params[k]:10.4f}   published {v:10.4f}')\n"
            "assert abs(law.params['E'] - 1.81724) < 2e-3 and abs(law.params['alpha'] - 0.347313) < 2e-3"
        ),
        md("## 2. Bootstrap intervals\n\nResample the runs, refit, take percentiles (published 95%: E (1.769, 1.871), α (0.317, 0.373), β (0.331, 0.415))."),
        code(
            "t = time.perf_counter()\n"
            "bootstrap(law, runs, n=200, seed=0)\n"
            "print(f'200 resamples in {time.perf_counter() - t:.1f}s')\n"
            "for k, iv in law.intervals().items():\n"
            "    print(f\"{k:6s} {law.params[k]:10.4f}  95% [{iv['lo']:.4f}, {iv['hi']:.4f}]\")"
        ),
        md("## 3. Compute-optimal allocation\n\nFrom the fitted law with C = 6ND; at Gopher's budget (5.76e23 FLOPs) Chinchilla chose 70B parameters and 1.4T tokens."),
        code("law.compute_optimal_interval([1e21, 1e23, 5.76e23, 1e25])"),
        code("plots.law_contours(law, runs);"),
        code("plots.loss_vs_compute(runs, law, target_C=5.76e23);"),
        md("## 4. IsoFLOP analysis (Hoffmann's approach 2) on Llama 3's points\n\nThe paper reports D_opt = 0.29 C^0.53."),
        code(
            "iso_runs = llama3_isoflop_runs()\n"
            "iso = isoflop_analysis(iso_runs, n_bootstrap=300)\n"
            "print(f'N_opt ∝ C^{iso.a:.3f}, D_opt = {10**iso.b_intercept:.3f} C^{iso.b:.4f}', iso.intervals())\n"
            "assert abs(iso.b - 0.537) < 0.01"
        ),
        code("plots.isoflop_curves(iso_runs, iso);"),
        code("plots.optimal_allocation(iso, C_range=(1e18, 1e25));"),
        md("## 5. Would we have trusted the extrapolation?\n\nFit below 1e21 FLOPs, predict the larger runs (prediction intervals for single runs)."),
        code(
            "check = validate_extrapolation(runs, 'chinchilla', cutoff_flops=1e21, n_bootstrap=100)\n"
            "print(check['summary'])\n"
            "plots.predicted_vs_actual(check['predictions']);"
        ),
    ]
    nb = nbf.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


if __name__ == "__main__":
    nbf.write(chinchilla_walkthrough(), HERE / "chinchilla_walkthrough.ipynb")
    print("wrote", HERE / "chinchilla_walkthrough.ipynb")
