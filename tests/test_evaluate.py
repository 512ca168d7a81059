"""Evaluation (``scaling.train.evaluate``): one fixed set of held-out windows whatever the batch size, each window
scored once, micro-batches that respect gradient accumulation."""

import jax
import numpy as np
import pytest
from flax import nnx

from scaling.config import load_config
from scaling.train import train

from .conftest import tiny_overrides


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


def test_eval_micro_batch_respects_grad_accum():
    cfg = load_config(None, tiny_overrides(**{"train.batch_size": 16, "train.grad_accum": 4}))
    assert cfg.eval_batch_size == 4
