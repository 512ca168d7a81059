"""Fits on the dashboard: `scaling fit/validate --wandb` write a W&B run (offline) whose summary holds the law's
parameters and intervals, with the predictions as a Table and the plots as images, in the sweep's group."""

import json
import shutil

import pandas as pd
import pytest

from .conftest import ROOT, run_cli
from .wandb_reader import read_records

TABLE = ROOT / "analysis" / "data" / "llama3_isoflop_tidy.csv"


def _decode(run_dir):
    """(run record, summary {key: value}, history {key: value}) of an offline W&B run directory."""
    run, summary, history = None, {}, {}
    for r in read_records(next(run_dir.glob("run-*.wandb"))):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
        elif kind == "summary":
            summary.update({it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in r.summary.update})
        elif kind == "history":
            history.update({it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in r.history.item})
    return run, summary, history


def test_fit_and_validate_log_their_results_to_wandb(tmp_path):
    df = pd.read_csv(TABLE).assign(sweep="llama3_ladder")
    path = tmp_path / "runs.csv"
    df.to_csv(path, index=False)
    fit = json.loads(run_cli("fit", "chinchilla", str(path), "--bootstrap", "50", "--wandb", "--json").stdout)
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run, summary, history = _decode(run_dir)
    assert run.run_group == "llama3_ladder" and run.job_type == "fit" and run.display_name == "fit-chinchilla"
    for k, v in fit["params"].items():  # the same numbers as the fit's JSON (JSON floats round-trip exactly)
        assert summary[f"param/{k}"] == v
        assert summary[f"param/{k}/lo"] == fit["intervals"][k]["lo"] and summary[f"param/{k}/hi"] == fit["intervals"][k]["hi"]
    assert summary["objective"] == fit["objective"]
    # predictions as a W&B Table (one row per fitted run), the plots as images
    assert history["predictions/_type"] == "table-file" and history["predictions/nrows"] == len(df)
    table = json.loads((run_dir / "files" / history["predictions/path"]).read_text())
    rows = pd.DataFrame(table["data"], columns=table["columns"])
    assert rows["loss"].tolist() == pytest.approx(df["loss"].tolist(), rel=1e-12)
    assert (rows["predicted"] > 0).all()
    for img in ("contours", "loss_vs_compute"):
        assert history[f"{img}/_type"] == "image-file" and (run_dir / "files" / history[f"{img}/path"]).stat().st_size > 1000

    shutil.rmtree(tmp_path / "wandb")
    val = json.loads(run_cli("validate", str(path), "--law", "chinchilla", "--bootstrap", "20", "--wandb", "--wandb-group", "g", "--json").stdout)
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run, summary, history = _decode(run_dir)
    assert run.run_group == "g" and run.job_type == "validate"
    for k in ("mean_abs_rel_error", "max_abs_rel_error", "bias"):
        assert summary[f"chinchilla/{k}"] == val["summary"][k]
    assert history["predictions/chinchilla/nrows"] == val["summary"]["n_heldout"]
    assert history["heldout/chinchilla/_type"] == "image-file"


def test_isoflop_fit_logs_its_minima(tmp_path):
    path = tmp_path / "llama3.csv"
    shutil.copy(TABLE, path)
    out = json.loads(run_cli("fit", "isoflop", str(path), "--bootstrap", "50", "--wandb", "--json").stdout)
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run, summary, history = _decode(run_dir)
    assert run.run_group == "llama3" and summary["a"] == out["a"] and summary["param/a/lo"] == out["intervals"]["a"]["lo"]
    assert history["minima/nrows"] == len(out["minima"]) and history["isoflop/_type"] == "image-file"
