"""The layers the decoder and the MoE block are built from: parameter init, RMSNorm, rotary embeddings, causal
(grouped-query) attention and the SwiGLU / GELU feed-forward. Shape letters and logical axes: ``scaling.model.axes``.

Init: every matrix ~ N(0, init_std^2); the two output projections of each block (attention out, MLP down) use
init_std / sqrt(2 * n_layers) (GPT-2); norms start at one. Under muP (``model.parametrization``) the hidden
matrices (all of attention and the MLP) are divided by sqrt(m), m = d_model / mup_base_width, and the queries are
scaled so that attention logits go as 1 / head_dim; ``hidden_std`` is the one place. Parameters are float32; matmuls run in the compute
dtype (bfloat16 on accelerators by default); attention softmax, logits and the loss are float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.configbase import ConfigError
from scaling.model.attention import BLOCKED_MIN_SEQ, blocked_causal
from scaling.model.axes import logical
from scaling.model.config import ModelConfig
from scaling.model.ffn import feed_forward


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    if cfg.dtype == "float32":
        return jnp.float32
    if cfg.dtype == "bfloat16":
        return jnp.bfloat16
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def param(value: jax.Array, letters: str, axes: tuple[str | None, ...] | None = None) -> nnx.Param:
    """A parameter annotated with the logical names of its axes (``letters``: its shape suffix; ``axes`` overrides
    the names). The annotation is metadata only (``eager_sharding=False``): shardings are derived from it in one
    place, ``scaling.parallel``."""
    assert value.ndim == len(letters), (value.shape, letters)
    return nnx.Param(value, out_sharding=axes if axes is not None else logical(letters), eager_sharding=False)


def normal(rngs: nnx.Rngs, letters: str, shape: tuple[int, ...], std: float, axes: tuple | None = None) -> nnx.Param:
    # The barrier stops XLA from folding `std` into the sampler's own constants when init runs under jit (sharded
    # init): without it the product differs from the eager one in the last bit.
    value = std * jax.lax.optimization_barrier(jax.random.normal(rngs.params(), shape, jnp.float32))
    return param(value, letters, axes)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, letter: str = "D", eps: float = 1e-6):
        self.scale = param(jnp.ones((dim,), jnp.float32), letter)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """sin and cos of position x frequency, (L, R) with R = head_dim / 2 frequencies."""
    inv_freq_R = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_LR = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq_R[None, :]
    return jnp.sin(angles_LR), jnp.cos(angles_LR)


def attention_implementation(cfg: ModelConfig) -> str:
    """The kernel ``model.attention`` runs on this backend: ``blocked`` (``scaling.model.attention``) or the
    ``implementation`` argument of jax.nn.dot_product_attention (``xla``, ``cudnn``)."""
    if cfg.attention == "cudnn":
        if jax.default_backend() != "gpu":
            raise ConfigError(f"model.attention=cudnn needs a GPU; this backend is {jax.default_backend()} (use xla or auto)")
        if compute_dtype(cfg) == jnp.float32:
            raise ConfigError("model.attention=cudnn needs bfloat16 compute (model.dtype auto or bfloat16 on a GPU), not float32")
        return "cudnn"
    if cfg.attention == "auto":
        return "blocked" if jax.default_backend() == "cpu" and cfg.seq_len >= BLOCKED_MIN_SEQ else "xla"
    return cfg.attention


def apply_rope(x_BLNH: jax.Array, sin_LR: jax.Array, cos_LR: jax.Array) -> jax.Array:
    """Rotate the two halves of each head's vector by position-dependent angles (the "rotate half" layout)."""
    x1, x2 = jnp.split(x_BLNH.astype(jnp.float32), 2, axis=-1)
    sin, cos = sin_LR[None, :, None, :], cos_LR[None, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BLNH.dtype)


def hidden_std(cfg: ModelConfig) -> tuple[float, float]:
    """Init std of a hidden matrix and of a block's output projection: init_std (/ sqrt(2 n_layers) for the
    output ones), divided by sqrt(m) under muP (variance ~ 1 / fan_in: the same at every width relative to the
    base)."""
    std = cfg.init_std / math.sqrt(cfg.width_mult) if cfg.width_mult != 1.0 else cfg.init_std
    return std, std / math.sqrt(2 * cfg.n_layers)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        D, N, G, H = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        std, out_std = hidden_std(cfg)
        self.q_mult = cfg.attn_q_mult
        self.wq_DNH = normal(rngs, "DNH", (D, N, H), std)
        self.wk_DGH = normal(rngs, "DGH", (D, G, H), std)
        self.wv_DGH = normal(rngs, "DGH", (D, G, H), std)
        self.wo_NHD = normal(rngs, "NHD", (N, H, D), out_std)
        self.q_norm = RMSNorm(H, "H") if cfg.qk_norm else None
        self.k_norm = RMSNorm(H, "H") if cfg.qk_norm else None
        self.implementation = attention_implementation(cfg)

    def __call__(self, x_BLD: jax.Array, sin_LR: jax.Array, cos_LR: jax.Array) -> jax.Array:
        dt = x_BLD.dtype
        # The einsum subscripts are not the shape letters: jnp.einsum orders dimensions by subscript, which picks
        # the matmul layout and so the float32 rounding; these are the subscripts every recorded run used.
        q_BLNH = jnp.einsum("bld,dhk->blhk", x_BLD, self.wq_DNH[...].astype(dt))
        k_BLGH = jnp.einsum("bld,dhk->blhk", x_BLD, self.wk_DGH[...].astype(dt))
        v_BLGH = jnp.einsum("bld,dhk->blhk", x_BLD, self.wv_DGH[...].astype(dt))
        if self.q_norm is not None:
            q_BLNH, k_BLGH = self.q_norm(q_BLNH), self.k_norm(k_BLGH)
        q_BLNH, k_BLGH = apply_rope(q_BLNH, sin_LR, cos_LR), apply_rope(k_BLGH, sin_LR, cos_LR)
        if self.q_mult != 1.0:  # muP: the kernels divide by sqrt(head_dim); this makes it sqrt(base) / head_dim
            q_BLNH = q_BLNH * jnp.asarray(self.q_mult, q_BLNH.dtype)
        if self.implementation == "blocked":
            o_BLNH = blocked_causal(q_BLNH, k_BLGH, v_BLGH)
        else:
            # jax.nn.dot_product_attention broadcasts the G key/value heads over the N query heads (grouped-query
            # attention) and computes the softmax in float32.
            o_BLNH = jax.nn.dot_product_attention(q_BLNH, k_BLGH, v_BLGH, is_causal=True, implementation=self.implementation)
        return jnp.einsum("blhk,hkd->bld", o_BLNH, self.wo_NHD[...].astype(dt))


class MLP(nnx.Module):
    """The feed-forward of kind ``model.mlp`` (``scaling.model.ffn``): gate, up, down or up, down, without biases."""

    def __init__(self, cfg: ModelConfig, d_ff: int, rngs: nnx.Rngs):
        D, (std, out_std) = cfg.d_model, hidden_std(cfg)
        self.kind = feed_forward(cfg.mlp)
        self.w_gate_DF = normal(rngs, "DF", (D, d_ff), std) if self.kind.gated else None
        self.w_up_DF = normal(rngs, "DF", (D, d_ff), std)
        self.w_down_FD = normal(rngs, "FD", (d_ff, D), out_std)

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        dt = x_BLD.dtype
        up_BLF = x_BLD @ self.w_up_DF[...].astype(dt)
        h_BLF = self.kind.hidden(up_BLF, lambda: x_BLD @ self.w_gate_DF[...].astype(dt))
        return h_BLF @ self.w_down_FD[...].astype(dt)
