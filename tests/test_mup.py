"""muP (``model.parametrization: mup``): equal to sp at its base width, the standard coordinate check (Yang et al.
2022, Tensor Programs V, fig. 5) against sp, and its settings checked."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling.config import ConfigError, load_config
from scaling.model.transformer import Transformer
from scaling.train import train

from .conftest import tiny_overrides
from .support.steps import train_steps

WIDTHS = (32, 64, 128, 256)
STEPS = 10


def _cfg(width: int, parametrization: str, **extra):
    over = tiny_overrides(**{"model.d_model": width, "model.n_heads": 2, "model.n_layers": 2, "train.tokens": 8 * 32 * STEPS,
                             "train.warmup_steps": 0, "train.schedule": "constant", "train.eval_tokens": 512, **extra})
    if parametrization == "mup":
        over += ["model.parametrization=mup", f"model.mup_base_width={WIDTHS[0]}"]
    return load_config(None, over)


def test_mup_at_its_base_width_is_sp_bit_for_bit(tmp_path):
    a = train(_cfg(32, "sp"), tmp_path / "sp")
    b = train(_cfg(32, "mup"), tmp_path / "mup")
    assert a["params_digest"] == b["params_digest"] and a["final_eval_loss"] == b["final_eval_loss"]
    assert (a["parametrization"], a["mup_width_mult"], b["parametrization"], b["mup_width_mult"]) == ("sp", 1.0, "mup", 1.0)
    assert a["run_id"] != b["run_id"]  # a different config, a different id (sp's id unchanged by the new fields)


def _slope(widths, values) -> float:
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


@pytest.fixture(scope="module")
def coordinates():
    """Mean |change| per coordinate of the residual stream after the embedding and after each block, and of the
    logits, after 10 Adam steps at lr 1e-2 (the same for every width), on one fixed batch."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 32)))
    out = {}
    for par in ("sp", "mup"):
        for w in WIDTHS:
            cfg = _cfg(w, par)
            # the step loop alone (train_steps): the parameters a train run reaches, bit for bit, without its
            # checkpoints and evaluation (a third of the time)
            graphdef, state, _ = train_steps(cfg, STEPS)
            after = nnx.merge(graphdef, state.params, state.rest).activations(tokens)
            before = Transformer(cfg.model, rngs=nnx.Rngs(cfg.init_seed)).activations(tokens)
            out[par, w] = {k: float(jnp.mean(jnp.abs(after[k] - before[k]))) for k in before}
    return out


def test_coordinate_check_flat_in_width_under_mup_and_growing_under_sp(coordinates):
    """The log-log slope of each layer's update size against width (4 widths, 3 octaves). Theory: muP keeps every
    update Theta(1), slope 0; sp with Adam moves a fan-in-d matrix's output by ~ lr * d, slope 1 for the hidden
    stream (more once it feeds back through the blocks) and for the logits. Measured here (seed 0): muP hidden
    -0.025 to -0.019, embedding -0.007, logits -0.19 (the initial logits, ~ m^-1/2 under muP's 1/m multiplier, are
    a shrinking part of the change; bounded by that exponent); sp hidden 3.35-3.41, embedding -0.03, logits 0.59. Tolerances: muP hidden |slope| < 0.1
    (a 23% change over 8x width), logits in (-0.5, 0.1); sp hidden > 1 and logits > 0.4 (sp must fail muP's bounds
    by a margin, not just differ)."""
    c = coordinates
    layers = [k for k in c["sp", WIDTHS[0]] if k != "logits"]
    for layer in layers:
        mup = _slope(WIDTHS, [c["mup", w][layer] for w in WIDTHS])
        sp = _slope(WIDTHS, [c["sp", w][layer] for w in WIDTHS])
        assert abs(mup) < 0.1, (layer, mup)
        if layer != "embed":  # the embedding's update is lr-sized in both (vector-like: no fan-in sum)
            assert sp > 1.0, (layer, sp)
        else:
            assert abs(sp) < 0.1, (layer, sp)
    mup = _slope(WIDTHS, [c["mup", w]["logits"] for w in WIDTHS])
    sp = _slope(WIDTHS, [c["sp", w]["logits"] for w in WIDTHS])
    assert -0.5 < mup < 0.1 and sp > 0.4, (mup, sp)
    # at the base width the two are the same model
    assert c["sp", WIDTHS[0]] == c["mup", WIDTHS[0]]


@pytest.mark.parametrize("override,message", [
    (["model.parametrization=mup"], "needs model.mup_base_width"),
    (["model.parametrization=mup", "model.mup_base_width=33"], "not a width this model can have"),
    (["model.parametrization=mup", "model.mup_base_width=32", "model.mup_base_head_dim=0"], "positive head dim"),
    (["model.parametrization=mup", "model.mup_base_width=32", "model.tie_embeddings=true"], "unties the embeddings"),
    (["model.parametrization=mup", "model.mup_base_width=32", "model.moe.n_experts=4"], "dense models only"),
    (["model.mup_base_width=32"], "set model.parametrization=mup"),
])
def test_mup_settings_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, tiny_overrides() + override)


def test_sweep_plan_says_where_each_runs_lr_comes_from(tmp_path):
    import yaml

    from .conftest import ROOT, run_cli

    raw = yaml.safe_load((ROOT / "sweeps" / "tiny_isoflop.yaml").read_text())
    raw["base"]["model"].update(parametrization="mup", mup_base_width=16, mup_base_head_dim=16)
    raw["recipe"] = {"lr_base": 1e-2, "lr_exponent": 0}  # muP: one lr for every width
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    p = run_cli("sweep", "plan", str(tmp_path / "s.yaml"))
    assert "learning rate: recipe lr = 0.01; per-run overrides win" in p.stdout
    assert "parametrization: muP relative to d_model 16" in p.stdout
    assert p.stdout.count("1.00e-02") == 6  # every run of the plan table
