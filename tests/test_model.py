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


def _attention_f64(q, k, v):
    """Causal grouped-query attention in float64 numpy: the reference both kernels are held to."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    B, L, N, H = q.shape
    k, v = (np.repeat(t, N // t.shape[2], axis=2) for t in (k, v))
    s = np.einsum("blnh,bsnh->bnls", q, k) / np.sqrt(H)
    s = np.where(np.tril(np.ones((L, L), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnls,bsnh->blnh", p, v)


@pytest.mark.parametrize("L,N,G,block", [(200, 4, 4, 64), (256, 4, 2, 64), (96, 2, 1, 32)],
                         ids=["ragged-last-block", "gqa", "multi-query"])
def test_blocked_attention_matches_float64_and_the_xla_kernel(L, N, G, block):
    from scaling.model.attention import blocked_causal

    H = 32
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, L, n, H)), jnp.float32) for n in (N, G, G))
    ref = _attention_f64(q, k, v)
    # jitted, as the model runs them (eagerly, each of the blocked kernel's per-block ops compiles on its own)
    got = jax.jit(blocked_causal, static_argnums=3)(q, k, v, block)
    xla = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"))(q, k, v)
    # float32 logits of H = 32 unit-variance products over sqrt(H): |logit| <~ 6, each off by <~ H * eps * 6 =
    # 1.1e-5 at worst; the softmax-weighted mean of unit-variance values carries that absolute error: atol 2e-5
    np.testing.assert_allclose(np.asarray(got), ref, atol=2e-5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(xla), atol=2e-5)

    w = jnp.asarray(rng.standard_normal((2, L, N, H)), jnp.float32)  # a fixed random cotangent

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

    g_blk = jax.jit(jax.grad(loss(lambda q, k, v: blocked_causal(q, k, v, block)), argnums=(0, 1, 2)))(q, k, v)
    g_xla = jax.jit(jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")),
                             argnums=(0, 1, 2)))(q, k, v)
    # the gradients sum up to L of those terms per key: atol L * 2e-5 / sqrt(L) (random signs) ~ 3e-4 at L 256
    for a, b in zip(g_blk, g_xla):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=3e-4)


def test_blocked_attention_model_is_causal_and_auto_picks_it_on_cpu_from_seq_128():
    from scaling.model.layers import attention_implementation

    assert attention_implementation(ModelConfig(seq_len=64)) == "xla"
    assert attention_implementation(ModelConfig(seq_len=128)) == ("blocked" if jax.default_backend() == "cpu" else "xla")
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, seq_len=160, attention="blocked")
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 160), 0, cfg.vocab_size)
    t = 100  # in the second query block: its prefix spans two key blocks
    changed = tokens.at[:, t + 1].set((tokens[:, t + 1] + 7) % cfg.vocab_size)
    a, _ = model(tokens)
    b, _ = model(changed)
    np.testing.assert_allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not np.allclose(a[:, t + 1 :], b[:, t + 1 :])
