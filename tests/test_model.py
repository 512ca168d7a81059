import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling.config import ModelConfig, MoEConfig
from scaling.model import Transformer


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(d_model=32, n_layers=2, n_heads=4, seq_len=16),
        ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, qk_norm=True, tie_embeddings=True, mlp="gelu", seq_len=16),
        ModelConfig(d_model=32, n_layers=2, n_heads=4, seq_len=16, moe=MoEConfig(n_experts=4, top_k=2, capacity_factor=None)),
    ],
    ids=["dense", "gqa-tied-gelu-qknorm", "moe-dropless"],
)
def test_causality(cfg):
    """Changing token t+1 leaves the logits at positions <= t unchanged."""
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    t = 9
    changed = tokens.at[:, t + 1].set((tokens[:, t + 1] + 7) % cfg.vocab_size)
    a, _ = model(tokens)
    b, _ = model(changed)
    # masked keys contribute exp(-inf) = 0 exactly; only a different batching of the same float32 ops could differ
    np.testing.assert_allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not np.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_logits_are_float32_and_init_loss_is_ln_vocab():
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, seq_len=32)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (4, 32), 0, 256)
    logits, aux = model(tokens)
    assert logits.dtype == jnp.float32 and aux == {}
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1))
    # logits ~ N(0, s^2) with s ~ 0.02 * sqrt(64) = 0.16 give loss ~ ln V + s^2 / 2 ~ ln V + 0.013
    assert abs(float(loss) - np.log(256)) < 0.05


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, seq_len=8, dtype="bfloat16")
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    logits, _ = model(jnp.zeros((1, 8), jnp.int32))
    assert logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
