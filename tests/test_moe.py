"""Mixture-of-experts: loss conventions against references, dispatch paths against each other, training balance."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling.config import ModelConfig, MoEConfig, load_config
from scaling.model.moe import MoE, capacity, load_balancing_loss, router_z_loss
from scaling.model.transformer import MLP

from .conftest import tiny_overrides

# Modules are called jitted, as training runs them: eagerly, each of the dispatch's many small ops compiles on its
# own (these tests took 3-7x longer).
call = nnx.jit(lambda module, x: module(x))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_aux_loss_is_one_at_uniform_routing(k):
    E, T = 8, 64
    # uniform router probabilities (a zero router): aux = E * sum_i f_i / E = 1 for any assignment
    probs = jnp.full((T, E), 1 / E)
    idx = jax.random.randint(jax.random.key(0), (T, k), 0, E)
    aux, f = load_balancing_loss(probs, idx, E)
    # E = 8 float32 products summed: rounding <= E * 2^-24 ~ 5e-7
    assert float(aux) == pytest.approx(1.0, abs=1e-6) and float(f.sum()) == pytest.approx(1.0, abs=1e-6)
    # balanced hard routing: token t prefers experts t, t+1, ..: f uniform and P uniform by symmetry
    logits = 10 * jax.nn.one_hot(jnp.arange(T) % E, E)
    probs = jax.nn.softmax(logits)
    idx = (jnp.arange(T)[:, None] + jnp.arange(k)[None]) % E
    aux, f = load_balancing_loss(probs, idx, E)
    np.testing.assert_allclose(f, 1 / E, atol=1e-7)  # counts / (T k): exact up to one float32 division
    # P_i averages T = 64 softmax rows (each 1/E only by symmetry over the batch): ~T * 2^-24 of rounding
    assert float(aux) == pytest.approx(1.0, abs=1e-5)


def test_aux_loss_grows_when_routing_collapses_and_its_gradient_reaches_the_router():
    E, k = 8, 2
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, moe=MoEConfig(n_experts=E, top_k=k))
    moe = MoE(cfg, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 16, 16))
    # collapse: a router that sends every token to expert 0 (and 1)
    collapsed = jnp.zeros((16, E)).at[:, 0].set(5.0).at[:, 1].set(4.0)
    moe.router_DE[...] = collapsed
    _, m = call(moe, jnp.abs(x))
    assert float(m["aux_loss"]) > 3.0  # uniform gives 1; full collapse onto k experts gives about E/k = 4
    assert float(m["max_load_ratio"]) == pytest.approx(E / k, rel=1e-5)

    graphdef, params, rest = nnx.split(moe, nnx.Param, ...)

    def aux_of(p):
        return nnx.merge(graphdef, p, rest)(x)[1]["aux_loss"]

    g = jax.jit(jax.grad(aux_of))(params)
    assert float(jnp.abs(g["router_DE"][...]).sum()) > 0


def test_router_z_loss_matches_float64_reference():
    logits = np.random.default_rng(0).normal(size=(37, 8)) * 3
    ref = np.mean(np.log(np.exp(logits.astype(np.float64)).sum(-1)) ** 2)
    # float32 logsumexp of 8 terms vs float64: a few float32 ulps (2^-24 ~ 6e-8 each) of a value ~30
    assert float(router_z_loss(jnp.asarray(logits, jnp.float32))) == pytest.approx(ref, rel=1e-6)


def _moe_and_input(E=4, k=2, cf=None, mlp="swiglu", seed=0, **kw):
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, mlp=mlp, moe=MoEConfig(n_experts=E, top_k=k, capacity_factor=cf, **kw))
    moe = MoE(cfg, nnx.Rngs(seed))
    x = jax.random.normal(jax.random.key(seed + 1), (3, 24, 16))
    return cfg, moe, x


@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
@pytest.mark.parametrize("cf", [None, 1.0])
def test_one_expert_top1_equals_the_dense_mlp(mlp, cf):
    cfg, moe, x = _moe_and_input(E=1, k=1, cf=cf, mlp=mlp)
    dense = MLP(cfg, 32, nnx.Rngs(5))
    dense.w_up_DF[...] = moe.w_up_EDF[...][0]
    dense.w_down_FD[...] = moe.w_down_EFD[...][0]
    if mlp == "swiglu":
        dense.w_gate_DF[...] = moe.w_gate_EDF[...][0]
    y, m = call(moe, x)
    # the same float32 products summed in another order (gather/scatter vs matmul): <= d_ff * 2^-24 relative
    np.testing.assert_allclose(y, call(dense, x), rtol=1e-5, atol=1e-6)
    assert float(m["dropped_frac"]) == 0.0


@pytest.mark.parametrize("k", [1, 2])
def test_capacity_path_equals_dropless_path_when_capacity_is_large(k):
    E = 4
    _, moe_cap, x = _moe_and_input(E=E, k=k, cf=E / k)  # capacity = T: nothing can drop
    _, moe_free, _ = _moe_and_input(E=E, k=k, cf=None)
    y1, m1 = call(moe_cap, x)
    y2, _ = call(moe_free, x)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-6)  # same products, other order (see above)
    assert float(m1["dropped_frac"]) == 0.0


def test_dropped_fraction_is_exact_on_a_hand_built_routing():
    E, k, T = 2, 1, 8
    cfg = ModelConfig(d_model=4, n_layers=1, n_heads=1, d_ff=8, moe=MoEConfig(n_experts=E, top_k=k, capacity_factor=1.0))
    moe = MoE(cfg, nnx.Rngs(0))
    moe.router_DE[...] = jnp.array([[10.0, 0.0]] * 4)  # positive inputs all choose expert 0
    x = jnp.abs(jax.random.normal(jax.random.key(0), (1, T, 4))) + 0.1
    assert capacity(T, E, k, 1.0) == 4
    y, m = call(moe, x)
    assert float(m["dropped_frac"]) == pytest.approx(0.5)  # 8 tokens, expert 0 takes 4
    np.testing.assert_allclose(y[0, 4:], 0.0, atol=0)  # the overflow tokens get nothing (residual only)
    assert np.abs(np.asarray(y[0, :4])).sum() > 0
    np.testing.assert_allclose(m["load"], [1.0, 0.0])  # load counts routing decisions, before dropping


def test_bias_balancing_moves_selection_toward_underloaded_experts():
    from scaling.model.moe import update_router_biases
    from scaling.model.transformer import Transformer

    cfg = ModelConfig(d_model=16, n_layers=2, n_heads=2, moe=MoEConfig(n_experts=4, top_k=1, bias_balancing=True, bias_update_rate=0.1))
    graphdef, params, rest = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    loads = jnp.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    model = nnx.merge(graphdef, params, update_router_biases(rest, loads, cfg.moe.bias_update_rate))
    np.testing.assert_allclose(model.blocks[0].mlp.bias_E[...], [-0.1, 0.1, 0.1, 0.1])
    np.testing.assert_allclose(model.blocks[1].mlp.bias_E[...], 0.0)


def _train_moe(tmp_path, name, **moe):
    from scaling.train import train

    over = tiny_overrides(**{"model.d_model": 32, "model.seq_len": 32, "train.batch_size": 16, "train.tokens": 16 * 32 * 150,
                              "train.lr": 1e-2, "train.log_every": 10, **{f"model.moe.{k}": v for k, v in moe.items()}})
    rec = train(load_config(None, over), tmp_path / name)
    metrics = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return rec, [m for m in metrics if m["kind"] == "train"]


def test_tiny_moe_trains_and_the_aux_loss_keeps_experts_balanced(tmp_path):
    rec, train_m = _train_moe(tmp_path, "aux", n_experts=8, top_k=2, aux_loss_coef=0.01)
    assert rec["n_experts"] == 8 and rec["top_k"] == 2 and rec["n_params_active"] < rec["n_params"]
    # Seeds 0-4 (measured): last/first logged loss 0.23-0.26, final eval 1.108-1.116 x the entropy rate, worst
    # late max/mean expert load 1.52-1.80. Bounds: 0.5, 1.25 x H (> 10 sd away) and 2.5, far below a collapse
    # onto k of E experts (E / k = 4) yet above every seed's extreme-value statistic.
    assert train_m[-1]["lm_loss"] < 0.5 * train_m[0]["lm_loss"]
    assert rec["final_eval_loss"] < 1.25 * rec["entropy_rate"]
    late = train_m[len(train_m) // 2 :]
    assert max(max(m["moe"]["max_load_ratio"]) for m in late) < 2.5
    assert {"aux_loss", "router_z_loss"} <= set(train_m[-1]) and len(train_m[-1]["moe"]["load"][0]) == 8


@pytest.mark.parametrize("k", [1, 2, 4])
def test_router_gets_lm_loss_gradient_for_every_k(k):
    from scaling.train.step import make_loss_fn

    cfg = load_config(None, tiny_overrides(**{"model.moe.n_experts": 4, "model.moe.top_k": k, "model.moe.renormalize": True,
                                              "model.moe.aux_loss_coef": 0.0, "model.moe.router_z_loss_coef": 0.0}))
    from scaling.model import Transformer

    graphdef, params, rest = nnx.split(Transformer(cfg.model, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tokens = jax.random.randint(jax.random.key(1), (4, 33), 0, 256)
    g = jax.jit(jax.grad(lambda p: make_loss_fn(graphdef, cfg)(p, rest, tokens)[0]))(params)  # jitted, as in training
    router = float(jnp.linalg.norm(g["blocks"][0]["mlp"]["router_DE"][...]))
    # With aux and z losses off the router's only gradient is the LM loss's. Renormalising a single gate gives
    # p / p = 1 and a gradient of float32 rounding noise only (~1e-10, measured); a real one is ~1e-4 here.
    assert router > 1e-6, router
