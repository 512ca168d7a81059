"""Measurements that used to come out wrong without a warning: each test here failed on the code before its fix."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from scaling.config import ConfigError, ModelConfig, MoEConfig, load_config
from scaling.sweep.spec import parse_sweep, plan_sweep
from scaling.train import DivergedError, train

from .conftest import ROOT, run_cli, tiny_overrides



@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> dict:
    """60 documents of 2 KB of Python source: ~96k training and ~24k held-out byte tokens (20% held out)."""
    from itertools import islice

    from scaling.data.sources import iter_pieces

    d = tmp_path_factory.mktemp("corpus")
    text = "".join(p.text for p in islice(iter_pieces("stdlib"), 40))
    for i in range(60):
        (d / f"doc{i:02d}.py").write_text(text[i * 2000 : (i + 1) * 2000])
    return {"data.source": str(d), "data.eval_fraction": 0.2}


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "record.json").read_text())


# -- 1. repeated data ------------------------------------------------------------------------------------------


def test_epochs_are_recorded_warned_about_and_capped(tmp_path, cache_dir, small_corpus):
    from scaling.data import build_dataset
    from scaling.train.errors import MeasurementWarning

    cfg0 = load_config(None, tiny_overrides(**small_corpus))
    windows = build_dataset(cfg0.data, cfg0.model).train_windows_per_epoch(cfg0.model.seq_len)
    tokens_1_5 = int(1.5 * windows) * cfg0.model.seq_len  # 1.5 epochs (to within one step)
    with pytest.warns(MeasurementWarning, match="repeated data"):
        rec = train(load_config(None, tiny_overrides(**small_corpus, **{"train.tokens": tokens_1_5})), tmp_path / "r1")
    steps = tokens_1_5 // (8 * 32)
    assert rec["epochs"] == pytest.approx(steps * 8 / windows)  # exact: samples seen / windows per epoch
    assert 1.4 < rec["epochs"] <= 1.5 and any("repeated data" in w for w in rec["warnings"])
    # above the cap the run is refused before anything is trained, and nothing is left behind but the refusal
    with pytest.raises(ConfigError, match=r"above data\.max_epochs=4"):
        train(load_config(None, tiny_overrides(**small_corpus, **{"train.tokens": 5 * windows * 32})), tmp_path / "r5")
    assert _record(tmp_path / "r5")["status"] == "failed" and not (tmp_path / "r5" / "checkpoints").exists()
    # sweep plans count epochs too and refuse the same runs
    raw = {"name": "e", "base": {"data": {"source": small_corpus["data.source"], "eval_fraction": 0.2},
                                 "model": {"seq_len": 32}, "train": {"batch_size": 8}},
           "grid": {"kind": "explicit", "sizes": [{"d_model": 32, "n_layers": 1, "n_heads": 2}], "tokens": [tokens_1_5]}}
    (run,) = plan_sweep(parse_sweep(raw), check_data=True)
    assert run.epochs == pytest.approx(run.steps * 8 / windows) and abs(run.steps - steps) <= 1  # plan rounds steps
    raw["grid"]["tokens"] = [5 * windows * 32]
    need = 5 * windows * 32 / 4  # the largest run's D over the epoch cap
    with pytest.raises(ConfigError, match=rf"more than data\.max_epochs=4 times \(up to 5 epochs over its {windows * 32:,}-token training split.*"
                                          rf"needs a training split of at least {need:.3g} tokens".replace("+", r"\+")):
        plan_sweep(parse_sweep(raw), check_data=True)


# -- 2. top-1 routers learn from the LM loss -------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 4])
def test_router_gets_lm_loss_gradient_for_every_k(k):
    from scaling.train.step import make_loss_fn

    cfg = load_config(None, tiny_overrides(**{"model.moe.n_experts": 4, "model.moe.top_k": k, "model.moe.renormalize": True,
                                              "model.moe.aux_loss_coef": 0.0, "model.moe.router_z_loss_coef": 0.0}))
    from scaling.model import Transformer

    graphdef, params, rest = nnx.split(Transformer(cfg.model, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tokens = jax.random.randint(jax.random.key(1), (4, 33), 0, 256)
    g = jax.grad(lambda p: make_loss_fn(graphdef, cfg)(p, rest, tokens)[0])(params)
    router = float(jnp.linalg.norm(g["blocks"][0]["mlp"]["router_DE"][...]))
    # With aux and z losses off the router's only gradient is the LM loss's. Renormalising a single gate gives
    # p / p = 1 and a gradient of float32 rounding noise only (~1e-10, measured); a real one is ~1e-4 here.
    assert router > 1e-6, router


# -- 3 and 4. one fixed eval set, each window once ---------------------------------------------------------------


def test_eval_set_is_fixed_and_independent_of_the_batch_size(tmp_path, cache_dir, small_corpus):
    from scaling.data import build_dataset
    from scaling.parallel import Parallel
    from scaling.train.evaluate import evaluate
    from scaling.train.loop import load_params
    from scaling.train.step import make_eval_step

    over = tiny_overrides(**small_corpus, **{"train.eval_tokens": 4096})
    cfg = load_config(None, over)
    rec = train(cfg, tmp_path / "run")
    assert rec["eval_tokens"] == 4096 and rec["eval_windows"] == 128
    model = load_params(tmp_path / "run", cfg)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ds = build_dataset(cfg.data, cfg.model)
    dp = Parallel.create()
    fn = make_eval_step(graphdef, dp.replicated)
    windows, _ = ds.eval_windows(128, 32)
    n_dev = jax.device_count()
    by_micro = {m: evaluate(fn, params, rest, windows, m, dp, ds.bytes_per_token) for m in (n_dev, 8 * n_dev, 24 * n_dev)}
    # The same 128 windows whatever the micro-batch (24 does not divide 128: the padded rows are dropped); only the
    # float64 summation of identical per-window losses is shared, so the means agree to float32 rounding.
    ref = by_micro[8 * n_dev]
    for out in by_micro.values():
        assert out["eval_windows"] == 128
        assert out["eval_loss"] == pytest.approx(ref["eval_loss"], rel=1e-6)
        assert out["eval_loss_stderr"] == pytest.approx(ref["eval_loss_stderr"], rel=1e-5)
    assert ref["eval_loss"] == pytest.approx(rec["final_eval_loss"], rel=1e-6)
    # a run with another batch size is scored on exactly the same windows
    w16, _ = ds.eval_windows(128, 32)
    np.testing.assert_array_equal(windows, w16)
    syn = build_dataset(load_config(None, tiny_overrides()).data, cfg.model)
    np.testing.assert_array_equal(syn.eval_windows(100, 32)[0], syn.eval_windows(130, 32)[0][:100])


def test_a_small_eval_split_is_scored_once_per_window_with_a_warning(tmp_path, cache_dir, small_corpus):
    from scaling.data import build_dataset

    cfg = load_config(None, tiny_overrides(**small_corpus, **{"train.eval_tokens": 10**7}))
    available = build_dataset(cfg.data, cfg.model).eval_windows(1, 32)[1]
    assert available * 32 < 10**7
    rec = train(cfg, tmp_path / "run")
    assert rec["eval_windows"] == available and rec["eval_tokens"] == available * 32
    assert any("eval split has" in w for w in rec["warnings"])


# -- 5. dense vs MoE at matched active parameters ---------------------------------------------------------------


def test_dense_and_moe_twins_get_the_same_tokens_and_lr():
    plan = plan_sweep(parse_sweep(yaml.safe_load((ROOT / "sweeps" / "dense_vs_moe_gpu.yaml").read_text())))
    dense = {(r.size_index, round(r.tokens / r.n_params_active)): r for r in plan if r.variant == "dense"}
    moe = [r for r in plan if r.variant == "moe"]
    assert len(moe) == len(dense) == 9
    for r in moe:
        twin = dense[(r.size_index, round(r.tokens / r.n_params_active))]
        # Active counts differ only by the router (d_model x 8 per layer, < 0.2%); D = ratio x N_active is
        # rounded to whole steps (< 1 step = 32k tokens of >= 44M).
        assert r.n_params_active == pytest.approx(twin.n_params_active, rel=2e-3)
        assert r.tokens == pytest.approx(twin.tokens, rel=3e-3)
        assert r.flops == pytest.approx(twin.flops, rel=5e-3)
        assert r.config.train.lr == pytest.approx(twin.config.train.lr, rel=1e-3)
        assert r.n_params > 1.5 * twin.n_params  # while the MoE stores far more parameters


# -- 6. multi-host start ----------------------------------------------------------------------------------------


def test_train_starts_under_a_coordinator_environment(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}
    run_cli("train", "--out", str(tmp_path / "r"), *sum((["--set", o] for o in tiny_overrides(**{"train.tokens": 8 * 32 * 5})), []), env=env)
    assert _record(tmp_path / "r")["status"] == "completed"


# -- 7. a changed config never silently reuses a checkpoint -------------------------------------------------------


def test_changed_config_refuses_the_old_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = lambda **kw: ["train", "--out", str(run), *sum((["--set", o] for o in tiny_overrides(**kw)), [])]  # noqa: E731
    run_cli(*args(**{"train.tokens": 8 * 32 * 30}))
    done = _record(run)
    assert done["status"] == "completed" and done["steps"] == 30
    # fewer steps: the 30-step checkpoint is past the end, always an error; the completed record is untouched
    p = run_cli(*args(**{"train.tokens": 8 * 32 * 20}), check=False)
    assert p.returncode == 2 and "past this config's 20 steps" in p.stderr and "Traceback" not in p.stderr
    assert _record(run) == done
    # more steps and another lr: refused, naming the fields, unless --resume-anyway
    p = run_cli(*args(**{"train.tokens": 8 * 32 * 40, "train.lr": 5e-3}), check=False)
    assert p.returncode == 2 and "train.lr 0.01 -> 0.005" in p.stderr and "--resume-anyway" in p.stderr
    assert _record(run) == done
    run_cli(*args(**{"train.tokens": 8 * 32 * 40, "train.lr": 5e-3}), "--resume-anyway")
    rec = _record(run)
    assert rec["status"] == "completed" and rec["steps"] == 40 and rec["resumed_from_step"] == 30
    assert any("another config" in w and "train.lr" in w for w in rec["warnings"])
    # changing only how often it is evaluated or logged is not a different run
    run_cli(*args(**{"train.tokens": 8 * 32 * 40, "train.lr": 5e-3, "train.log_every": 5}))


# -- 8 and 10. the recipe sees the resolved config and the device count --------------------------------------------


def test_recipe_uses_the_resolved_seq_len_and_keeps_batches_divisible_by_devices():
    raw = {
        "name": "r",
        "base": {"model": {"preset": "100m"}, "train": {"batch_size": 64}, "data": {"source": "synthetic"}},
        "grid": {"kind": "explicit", "sizes": [{"n_layers": 14}], "tokens": [16 * 1024 * 226]},
        "recipe": {"min_steps": 200, "min_batch_size": 8, "min_warmup_steps": 100},
    }
    (run,) = plan_sweep(parse_sweep(raw), n_devices=1)
    assert run.config.model.seq_len == 1024  # from the preset, not a default of 128
    assert (run.config.train.batch_size, run.steps) == (16, 226)
    assert run.config.train.warmup_fraction == pytest.approx(100 / 226)
    raw = yaml.safe_load((ROOT / "sweeps" / "tiny_isoflop.yaml").read_text())
    raw["recipe"] |= {"min_steps": 10**6, "min_batch_size": 1}  # halve as far as allowed
    for n in (1, 8):
        assert all(r.config.train.batch_size % n == 0 for r in plan_sweep(parse_sweep(raw), n_devices=n))
    assert {r.config.train.batch_size for r in plan_sweep(parse_sweep(raw), n_devices=8)} == {8}


def test_eval_micro_batch_respects_grad_accum():
    cfg = load_config(None, tiny_overrides(**{"train.batch_size": 16, "train.grad_accum": 4}))
    assert cfg.eval_batch_size == 4


# -- 9. overrides that change the model keep the budget -----------------------------------------------------------


def test_overrides_that_change_the_model_are_applied_before_the_budget():
    raw = yaml.safe_load((ROOT / "sweeps" / "tiny_isoflop.yaml").read_text())
    raw["overrides"] = [{"match": {"size": 0}, "set": {"model.n_layers": 3}}]
    plan = plan_sweep(parse_sweep(raw), n_devices=1)
    assert {r.config.model.n_layers for r in plan if r.size_index == 0} == {3}
    for r in plan:  # whole steps of 256 tokens: |C / budget - 1| <= 0.5 / steps < 1% for >= 50 steps
        assert abs(r.flops / r.budget - 1) <= 0.5 / r.steps + 1e-12


# -- 10. the smaller ones --------------------------------------------------------------------------------------------


def test_diverged_at_step_is_the_first_non_finite_step(tmp_path):
    cfg = load_config(None, tiny_overrides(**{"train.lr": 1e30, "train.grad_clip": None, "train.warmup_fraction": 0, "train.log_every": 10}))
    with pytest.raises(DivergedError) as e:
        train(cfg, tmp_path / "run")
    # step 1 runs on the initial parameters (finite loss); its lr-1e30 update makes step 2's loss non-finite
    assert e.value.step == 2 and _record(tmp_path / "run")["diverged_at_step"] == 2


def test_concurrent_processes_build_the_data_cache_once(tmp_path):
    code = ("from scaling.config import DataConfig, ModelConfig; from scaling.data import build_dataset; "
            "build_dataset(DataConfig(source='stdlib', tokenizer='bpe', max_bytes=300_000), ModelConfig(vocab_size=400))")
    env = dict(os.environ, SCALING_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT) for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    builds = [json.loads(l) for l in (tmp_path / "cache" / "builds.jsonl").read_text().splitlines()]
    assert len(builds) == 1  # the second process waited for the first and reused its tokenizer and arrays


@pytest.mark.parametrize("seed", [27, 0, 1234])
def test_synthetic_successors_are_distinct_and_the_entropy_rate_exact(seed):
    from scaling.data import SyntheticMarkov

    src = SyntheticMarkov(64, branching=4, seed=seed)
    assert all(len(set(row)) == 4 for row in src.successors.tolist())
    x = src.train_batch(0, 256, 512, seed=0).astype(int)
    nll = -np.log(src.transition[x[:, :-1], x[:, 1:]])
    # 130k transitions, per-transition std ~0.8 nats -> standard error ~0.003 even with some autocorrelation;
    # 1% (~0.01) is > 3 standard errors. Seed 27 used to report 1.075 for a true 1.037 (3.6% off).
    assert nll.mean() == pytest.approx(src.entropy_rate, rel=0.01)


def test_swiglu_width_is_uniform_across_the_size_rule():
    from scaling.model.presets import widths

    for d in widths(4096):
        ratio = ModelConfig(d_model=d, n_heads=1).ff_dim / d
        # the multiple of 8 nearest 8d/3 is at most 4 away: relative deviation <= 4 / (8d/3) = 1.5 / d
        assert abs(ratio / (8 / 3) - 1) <= 1.5 / d + 1e-12, (d, ratio)
