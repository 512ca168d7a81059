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
