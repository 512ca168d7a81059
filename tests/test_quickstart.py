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
    for f in ("report.md", "runs.csv", "noise_runs.csv", "fit_chinchilla.json", "fit_frontier.json", "fit_isoflop.json",
              "prediction.json", "summary.json", "extrapolation.png", "loss_vs_compute.png", "contours.png"):
        assert (rep / f).exists(), f
    iso = json.loads((rep / "fit_isoflop.json").read_text())
    assert ("a" in iso and (rep / "isoflop.png").exists()) or "error" in iso  # tiny sweeps can be too noisy for it
    runs = pd.read_csv(rep / "runs.csv")
    # WSD branches: 4 budgets x the 4 ladder sizes nearest each budget's prior optimum, each from its size's trunk
    assert len(runs) == 16 and (runs["role"] == "branch").all() and runs["trunk_id"].notna().all()
    assert runs.groupby("budget")["N"].nunique().eq(4).all() and runs["N"].max() / runs["N"].min() > 3
    sweep = pd.read_csv(out / "sweep" / "runs.csv")
    assert set(sweep.loc[sweep["role"] == "trunk", "run_id"]) == set(runs["trunk_id"])
    assert sweep["C_spent"].sum() < runs["C"].sum()  # branches cost less than separate runs
    noise = pd.read_csv(rep / "noise_runs.csv")
    assert len(noise) == 3 and set(noise["seed"]) == {1000}
    summary = json.loads((rep / "summary.json").read_text())
    pred = json.loads((rep / "prediction.json").read_text())
    assert pred["C"] / runs["C"].max() == pytest.approx(10, rel=0.05)
    assert pred["predicted_lo"] < pred["predicted_loss"] < pred["predicted_hi"]
    assert pred["seed_scatter"]["dof"] == 3 and pred["seed_scatter"]["sigma"] > 0  # 3 points x 2 seeds
    assert summary["measured_eval_loss"] > 0 and summary["rel_error"] == pytest.approx(
        (pred["predicted_loss"] - summary["measured_eval_loss"]) / summary["measured_eval_loss"])
    text = (rep / "report.md").read_text()
    assert "(before training)" in text and "Chinchilla law" in text
    # the report says what the interval is: calibrated (kappa from backtests inside the sweep) or fit-only
    calibrated = pred["kappa"][pred["headline"]] is not None
    assert pred["interval_kind"] == ("calibrated" if calibrated else "fit-only")
    assert ("the extrapolation error its backtests inside the sweep measured" in text) == calibrated
    assert ("not calibrated" in text) == (not calibrated)
    # the loss floor: each calibrated law's E with its verdict, in the summary and the report (stdlib: no entropy rate)
    floor = summary["floor"]
    assert floor["entropy_rate"] is None and "## The loss floor E" in text
    for name in ("surface", "chinchilla"):
        f = floor[name]
        assert f["determined"] in (True, False) and (f["determined"] or f["note"].startswith("E not determined:"))
        assert f"| {name} | {f['E']:.4f} |" in text
    # the prediction was written before the held-out run trained
    held = json.loads((out / "heldout").glob("*/record.json").__next__().read_text())
    assert held["config"]["train"]["schedule"] == "wsd"
    # one recipe for every run: muP relative to width 16, the lr law at the run's own N and D (exact: the same
    # float64 arithmetic), and the report says which recipe and that it was not tuned for the tiny size
    from scaling.quickstart.sizes import TINY, recipe_for
    from scaling.sweep.recipe import Recipe

    law = Recipe(**recipe_for(TINY, "stdlib"))
    sweep_recs = [json.loads(f.read_text()) for f in (out / "sweep" / "runs").glob("*/record.json")]
    for rec in [held, *sweep_recs]:
        m = rec["config"]["model"]
        assert (m["parametrization"], m["mup_base_width"], m["mup_base_head_dim"]) == ("mup", 16, 8)
    assert held["config"]["train"]["lr"] == law.lr(held["n_params"], held["tokens"]) == summary["recipe"]["heldout_lr"]
    assert "muP relative to d_model 16" in text and "not tuned for the --tiny size" in text
    # one set of eval windows for every run the fit and the check compare (branches, repeat seeds, held-out run),
    # and the directory's manifest names it
    noise_recs = [json.loads(f.read_text()) for f in (out / "noise" / "runs").glob("*/record.json")]
    scored = [held, *(r for r in noise_recs if r["run_id"] in set(noise["run_id"])), *(r for r in sweep_recs if r["run_id"] in set(runs["run_id"]))]
    assert len(scored) == 1 + 3 + 16 and {r["eval_tokens"] for r in scored} == {TINY.eval_tokens}
    assert json.loads((out / "quickstart.json").read_text())["eval_tokens"] == TINY.eval_tokens
    # one W&B group for the sweep, its repeat seeds and the held-out run (the fits log there too), told apart by tags
    noise_rec = json.loads(next((out / "noise" / "runs").glob("*/record.json")).read_text())
    assert held["config"]["log"]["wandb_group"] == noise_rec["config"]["log"]["wandb_group"] == "quickstart"
    assert "heldout" in held["config"]["log"]["wandb_tags"] and "repeat-seed" in noise_rec["config"]["log"]["wandb_tags"]
    assert (rep / "prediction.json").stat().st_mtime <= pd.Timestamp(held["started_at"]).timestamp() + 1
    # rerunning reuses every completed run
    events = (out / "sweep" / "events.jsonl").read_text()
    p2 = run_cli("quickstart", "--tiny", "--out", str(out), "--no-progress", "--wandb", "disabled", timeout=900)
    assert (out / "sweep" / "events.jsonl").read_text() == events
    assert json.loads((rep / "summary.json").read_text())["measured_eval_loss"] == summary["measured_eval_loss"]
    assert "held-out loss: predicted" in p.stdout + p2.stdout
    # another seed into the same directory is refused (its prediction would be mixed with this one's)
    p3 = run_cli("quickstart", "--tiny", "--seed", "1", "--out", str(out), "--no-progress", "--wandb", "disabled", check=False)
    assert p3.returncode == 2 and "seed 0 -> 1" in p3.stderr and "pass another --out" in p3.stderr


def test_report_renders_an_isoflop_result():
    """The full-size quickstart reaches the IsoFLOP section of its report (the tiny one does not: its fit is not
    well-posed): render it from a real IsoFLOP analysis of a synthetic ladder."""
    import numpy as np

    from analysis.isoflop import isoflop_analysis
    from scaling.quickstart.report import iso_lines as _iso_lines

    rows = []
    for C in (1e18, 1e19, 1e20):
        for N in np.geomspace(3e7, 3e9, 9):
            D = C / (6 * N)
            rows.append({"N": N, "D": D, "C": C, "budget": C, "loss": 1.69 + 406.4 * N**-0.34 + 410.7 * D**-0.28})
    iso = isoflop_analysis(pd.DataFrame(rows), n_bootstrap=20, seed=0)
    text = "\n".join(_iso_lines(iso))
    assert f"N_opt ∝ C^{iso.a:.3f}" in text and "curve_x" not in text and "N_opt" in text.split("```")[1]


def test_heldout_trains_data_parallel_in_a_child_and_resumes_after_a_stop(tmp_path):
    """The held-out run trains over the CPU cores as host devices in a child process; a stop of the quickstart
    checkpoints the child (KeyboardInterrupt here: rerun to resume) and the rerun finishes it with the same
    parameters as a run trained without the stop."""
    import os

    from scaling.config import load_config
    from scaling.quickstart.processes import train_heldout as _train_heldout

    from .conftest import tiny_overrides

    import jax

    if jax.default_backend() != "cpu" or not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the child process path: a CPU backend with 2 cores")
    cfg = load_config(None, tiny_overrides(**{"train.batch_size": 8, "train.tokens": 8 * 32 * 1500, "train.checkpoint_every": 50}))
    run = tmp_path / "held" / "r"

    def first_checkpoint() -> bool:  # stop once the child has trained and checkpointed, long before its end
        return any((run / "checkpoints").glob("*")) if (run / "checkpoints").exists() else False

    with pytest.raises(KeyboardInterrupt):
        _train_heldout(cfg, run, "r", False, first_checkpoint, 2)
    rec = json.loads((run / "record.json").read_text())
    assert rec["status"] == "preempted"  # SIGTERM from the parent: a preemption, checkpointed
    done = _train_heldout(cfg, run, "r", False, None, 2)
    assert done["status"] == "completed" and done["device_count"] == 2 and done["preemptions"] == 1
    assert 0 < done["resumed_from_step"] < cfg.steps
    again = _train_heldout(cfg, tmp_path / "held2" / "r", "r", False, None, 2)  # uninterrupted, same devices
    assert again["params_digest"] == done["params_digest"]


def test_a_corpus_too_small_to_hold_out_an_eval_split_gets_one_line_and_exit_2(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("def f():\n    return 1\n")
    p = run_cli("quickstart", "--tiny", "--data", str(small), "--out", str(tmp_path / "qs"), "--no-progress", "--wandb", "disabled", check=False)
    err = p.stderr.strip()
    assert p.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, (p.returncode, err)
    assert "too small to hold out an evaluation split" in err and not (tmp_path / "qs").exists()


def test_a_corpus_whose_eval_split_is_shorter_than_a_sequence_gets_one_line_and_exit_2(tmp_path):
    corpus = tmp_path / "two"
    corpus.mkdir()
    (corpus / "a.py").write_text("def f():\n    return 1\n")
    (corpus / "b.py").write_text("x = 2\n")
    p = run_cli("quickstart", "--tiny", "--data", str(corpus), "--out", str(tmp_path / "qs"), "--no-progress", "--wandb", "disabled", check=False)
    err = p.stderr.strip()
    assert p.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, (p.returncode, err)
    assert "fewer than one sequence" in err and str(corpus) in err


def test_a_directory_from_before_the_manifest_named_its_eval_tokens_is_read_as_what_it_was_scored_on(tmp_path):
    """Older manifests lack eval_tokens: --tiny ones were scored on 2^15 tokens (as now: accepted), full ones on the
    whole split (refused, naming both figures)."""
    from scaling.config import ConfigError
    from scaling.quickstart.pipeline import _check_manifest
    from scaling.quickstart.sizes import RECIPE_TAG

    for tiny, before, now in ((True, 2**15, 2**15), (False, 1_195_264, 2**18)):
        out = tmp_path / f"tiny{tiny}"
        out.mkdir()
        old = {"tiny": tiny, "data": "stdlib", "seed": 0, "recipe": RECIPE_TAG}
        (out / "quickstart.json").write_text(json.dumps(old))
        manifest = {**old, "eval_tokens": now}
        if before == now:
            _check_manifest(out, manifest, before={"eval_tokens": lambda: before})
        else:
            with pytest.raises(ConfigError, match=f"eval_tokens {before} -> {now}.*pass another --out"):
                _check_manifest(out, manifest, before={"eval_tokens": lambda: before})
        assert json.loads((out / "quickstart.json").read_text()) == old  # an older manifest is read, never rewritten


def test_every_quickstart_run_is_scored_on_a_fixed_share_of_the_eval_split():
    """The full size scores on 2^18 tokens of the stdlib eval split; with no cap, or a cap above the split, on all of
    it (the split's windows x seq_len, so no run warns that it asked for more than there is)."""
    import dataclasses

    from scaling.config import load_config
    from scaling.data import build_dataset
    from scaling.quickstart.sizes import FULL, eval_tokens_for

    cfg = load_config(base={"data": {"source": "stdlib", "eval_fraction": FULL.eval_fraction}, "model": {"seq_len": FULL.seq_len, "vocab_size": 256}})
    _, windows = build_dataset(cfg.data, cfg.model).eval_windows(1, FULL.seq_len)
    whole = windows * FULL.seq_len
    assert FULL.eval_tokens == 2**18 < whole
    assert eval_tokens_for(FULL, "stdlib") == 2**18
    assert eval_tokens_for(dataclasses.replace(FULL, eval_tokens=None), "stdlib") == whole
    assert eval_tokens_for(dataclasses.replace(FULL, eval_tokens=10 * whole), "stdlib") == whole
