"""Golden values: parameter and FLOP counts against hand counts, the model's real parameters and 6ND."""

import numpy as np
import pytest
from flax import nnx

from scaling.model.accounting import count_params, flops_per_token, training_flops
from scaling.config import ModelConfig, MoEConfig
from scaling.model import Transformer, count_model_params
from scaling.model.presets import PRESETS, config_for_params


def test_dense_param_count_by_hand():
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=256, mlp="swiglu")
    embed = 256 * 64 * 2  # input embedding + untied output projection
    attn = 4 * 64 * 64
    mlp = 3 * 64 * 256
    norms = 2 * 64
    per_layer = attn + mlp + norms
    total = embed + 2 * per_layer + 64  # + final norm
    c = count_params(cfg)
    assert c.total == total == 32768 + 2 * (16384 + 49152 + 128) + 64 == 164160
    assert c.nonembedding == total - embed
    assert c.active == c.total
    assert count_model_params(Transformer(cfg, rngs=nnx.Rngs(0))) == total


def test_gqa_tied_gelu_qknorm_count_matches_model():
    cfg = ModelConfig(d_model=64, n_layers=3, n_heads=8, n_kv_heads=2, mlp="gelu", tie_embeddings=True, qk_norm=True)
    dh = 8
    attn = 64 * 64 + 2 * 64 * 2 * dh + 64 * 64
    per_layer = attn + 2 * 64 * 256 + 2 * 64 + 2 * dh
    assert count_params(cfg).total == 256 * 64 + 3 * per_layer + 64
    assert count_model_params(Transformer(cfg, rngs=nnx.Rngs(0))) == count_params(cfg).total


def test_flops_per_token_by_hand():
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=256, seq_len=128)
    matmul = 2 * (4 * 64 * 64 + 3 * 64 * 256) + 64 * 256  # blocks + output projection; no embedding lookup
    attn_full = 12 * 2 * 128 * 64
    assert flops_per_token(cfg, "none") == 6 * matmul
    assert flops_per_token(cfg, "full") == 6 * matmul + attn_full
    assert flops_per_token(cfg) == 6 * matmul + attn_full / 2  # causal halved is the default
    assert training_flops(cfg, 1000) == 1000 * flops_per_token(cfg)


def test_flops_approach_6ND_for_large_models():
    cfg = PRESETS["1b"]
    c = count_params(cfg)
    # Attention is a few percent at L=2048; the matmul term is 6 x (non-embedding + output projection).
    assert flops_per_token(cfg, "none") == pytest.approx(6 * (c.nonembedding + cfg.vocab_size * cfg.d_model), rel=1e-3)
    assert flops_per_token(cfg) == pytest.approx(6 * c.total, rel=0.1)


def test_moe_counts_by_hand_8_experts_top2():
    m = MoEConfig(n_experts=8, top_k=2)
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128, vocab_size=256, moe=m)
    expert = 3 * 64 * 128
    router = 64 * 8
    attn, norms, embed = 4 * 64 * 64, 2 * 64, 2 * 256 * 64
    total = embed + 2 * (attn + norms + router + 8 * expert) + 64
    active = embed + 2 * (attn + norms + router + 2 * expert) + 64
    c = count_params(cfg)
    assert (c.total, c.active) == (total, active) == (460096, 165184)
    assert count_model_params(Transformer(cfg, rngs=nnx.Rngs(0))) == total
    matmul = 2 * (attn + router + 2 * expert) + 256 * 64
    assert flops_per_token(cfg, "none") == 6 * matmul  # active parameters only


def test_moe_shared_and_fine_grained_and_every_n():
    m = MoEConfig(n_experts=16, top_k=4, n_shared_experts=1, granularity=4, every_n_layers=2)
    cfg = ModelConfig(d_model=32, n_layers=4, n_heads=2, d_ff=128, moe=m)
    expert = 3 * 32 * 32  # d_ff / granularity
    dense_ff, router = 3 * 32 * 128, 32 * 16
    c = count_params(cfg)
    base = 2 * 256 * 32 + 32 + 4 * (4 * 32 * 32 + 2 * 32)
    assert c.total == base + 2 * dense_ff + 2 * (router + 17 * expert)
    assert c.active == base + 2 * dense_ff + 2 * (router + 5 * expert)
    assert count_model_params(Transformer(cfg, rngs=nnx.Rngs(0))) == c.total


@pytest.mark.parametrize("target", [1e4, 1e5, 1e6, 1e7, 1e8])
def test_config_for_params_hits_target(target):
    cfg = config_for_params(target)
    assert 0.6 < count_params(cfg).total / target < 1.6


@pytest.mark.parametrize("target", np.logspace(4, 9, 41))
def test_config_for_params_is_always_valid(target):
    from scaling.config import load_config

    cfg = config_for_params(float(target), vocab_size=8192, seq_len=512)
    load_config(None, [f"model.target_params={target}", "model.vocab_size=8192"])  # validates
    assert cfg.d_model % cfg.n_heads == 0


def test_presets_span_1e4_to_1e9():
    sizes = sorted(count_params(c).total for c in PRESETS.values())
    assert sizes[0] < 2e4 and sizes[-1] > 8e8
