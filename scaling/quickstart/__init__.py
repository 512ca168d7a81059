"""``scaling quickstart``: the end-to-end job on the embedded default data.

1. Train an IsoFLOP sweep of dense models on the Python standard-library code corpus (byte-level) as WSD
   branches (Hagele et al. 2024): one constant-lr trunk per size, and at every compute budget a branch that
   decays the lr over its last 20%, for the sizes nearest that budget's expected optimum (sizes <= 1.6x apart).
   A few points are repeated with two more seeds to measure the run-to-run scatter. Two worker processes share
   the sweep (both cores).
2. Fit the IsoFLOP surface (the GPT-4 frontier E + A C^-gamma fitted with each budget's parabola in log N: the
   headline), the frontier on per-budget minima, the Chinchilla law and the IsoFLOP exponents, with bootstrap
   intervals.
3. Choose a held-out run at 10x the largest budget at the compute-optimal size the IsoFLOP fit predicts, and
   *predict* its loss with a 95% interval (fit uncertainty and the measured seed scatter) before training it
   (written to ``prediction.json`` first).
4. Train the held-out run and report predicted vs measured in ``report/report.md``: the extrapolation figure,
   the runs table, the fits as JSON and the plots.

``--seed`` changes the data order and the initialisation of every run. Rerunning the same command reuses
completed runs and resumes interrupted ones.
"""

from scaling.quickstart.pipeline import run_quickstart  # noqa: E402
from scaling.quickstart.processes import QuickstartError  # noqa: E402
from scaling.quickstart.sizes import FULL, TINY, noise_dict, sweep_dict  # noqa: E402

__all__ = ["FULL", "QuickstartError", "TINY", "noise_dict", "run_quickstart", "sweep_dict"]
