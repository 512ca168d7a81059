"""The main job end to end at reduced size: sweep, fits, a prediction made before the held-out run, the report."""

import json

import pandas as pd
import pytest

from .conftest import run_cli


@pytest.mark.slow
def test_quickstart_tiny_end_to_end_and_resume(tmp_path, cache_dir):
    out = tmp_path / "qs"
    p = run_cli("quickstart", "--tiny", "--out", str(out), "--no-progress", "--wandb", "disabled", timeout=900)
    rep = out / "report"
    for f in ("report.md", "runs.csv", "fit_chinchilla.json", "fit_isoflop.json", "prediction.json", "summary.json",
              "loss_vs_compute.png", "contours.png", "heldout.png"):
        assert (rep / f).exists(), f
    iso = json.loads((rep / "fit_isoflop.json").read_text())
    assert ("a" in iso and (rep / "isoflop.png").exists()) or "error" in iso  # tiny sweeps can be too noisy for it
    runs = pd.read_csv(rep / "runs.csv")
    assert len(runs) == 9 and runs["N"].max() / runs["N"].min() > 10
    summary = json.loads((rep / "summary.json").read_text())
    pred = json.loads((rep / "prediction.json").read_text())
    assert pred["C"] / runs["C"].max() == pytest.approx(10, rel=0.05)
    assert pred["predicted_lo"] < pred["predicted_loss"] < pred["predicted_hi"]
    assert summary["measured_eval_loss"] > 0 and summary["rel_error"] == pytest.approx(
        (pred["predicted_loss"] - summary["measured_eval_loss"]) / summary["measured_eval_loss"])
    assert "predicted (before training)" in (rep / "report.md").read_text()
    # the prediction was written before the held-out run trained
    held = json.loads((out / "heldout").glob("*/record.json").__next__().read_text())
    assert (rep / "prediction.json").stat().st_mtime <= pd.Timestamp(held["started_at"]).timestamp() + 1
    # rerunning reuses every completed run
    events = (out / "sweep" / "events.jsonl").read_text()
    p2 = run_cli("quickstart", "--tiny", "--out", str(out), "--no-progress", "--wandb", "disabled", timeout=900)
    assert (out / "sweep" / "events.jsonl").read_text() == events
    assert json.loads((rep / "summary.json").read_text())["measured_eval_loss"] == summary["measured_eval_loss"]
    assert "held-out loss: predicted" in p.stdout + p2.stdout


def test_report_renders_an_isoflop_result():
    """The full-size quickstart reaches the IsoFLOP section of its report (the tiny one does not: its fit is not
    well-posed): render it from a real IsoFLOP analysis of a synthetic ladder."""
    import numpy as np

    from analysis.isoflop import isoflop_analysis
    from scaling.quickstart import _iso_lines

    rows = []
    for C in (1e18, 1e19, 1e20):
        for N in np.geomspace(3e7, 3e9, 9):
            D = C / (6 * N)
            rows.append({"N": N, "D": D, "C": C, "budget": C, "loss": 1.69 + 406.4 * N**-0.34 + 410.7 * D**-0.28})
    iso = isoflop_analysis(pd.DataFrame(rows), n_bootstrap=20, seed=0)
    text = "\n".join(_iso_lines(iso))
    assert f"N_opt ∝ C^{iso.a:.3f}" in text and "curve_x" not in text and "N_opt" in text.split("```")[1]
