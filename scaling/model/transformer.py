"""Decoder-only transformer in Flax NNX: pre-norm RMSNorm, rotary embeddings, causal (grouped-query) attention,
SwiGLU or GELU feed-forward (or a mixture of experts, ``scaling.model.moe``), optional tied embeddings and QK-norm.

Shape suffixes name tensor axes: B batch, L sequence, D d_model, H query heads, K key/value heads, Dh head dim,
F feed-forward hidden, V vocabulary.

Init: every matrix ~ N(0, init_std^2); the two output projections of each block (attention out, MLP down) use
init_std / sqrt(2 * n_layers) (GPT-2); norms start at one. Parameters are float32; matmuls run in the compute
dtype (bfloat16 on accelerators by default); attention softmax, logits and the loss are float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.accounting import moe_layer_indices
from scaling.config import ModelConfig


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    if cfg.dtype == "float32":
        return jnp.float32
    if cfg.dtype == "bfloat16":
        return jnp.bfloat16
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def _init(rngs: nnx.Rngs, shape: tuple[int, ...], std: float) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_LF = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.sin(angles_LF), jnp.cos(angles_LF)


def apply_rope(x_BLHD: jax.Array, sin_LF: jax.Array, cos_LF: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x_BLHD.astype(jnp.float32), 2, axis=-1)
    sin, cos = sin_LF[None, :, None, :], cos_LF[None, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BLHD.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, H, K, Dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.wq_DHk = _init(rngs, (d, H, Dh), std)
        self.wk_DKk = _init(rngs, (d, K, Dh), std)
        self.wv_DKk = _init(rngs, (d, K, Dh), std)
        self.wo_HkD = _init(rngs, (H, Dh, d), out_std)
        self.q_norm = RMSNorm(Dh) if cfg.qk_norm else None
        self.k_norm = RMSNorm(Dh) if cfg.qk_norm else None

    def __call__(self, x_BLD: jax.Array, sin_LF: jax.Array, cos_LF: jax.Array) -> jax.Array:
        dt = x_BLD.dtype
        q_BLHk = jnp.einsum("bld,dhk->blhk", x_BLD, self.wq_DHk[...].astype(dt))
        k_BLKk = jnp.einsum("bld,dhk->blhk", x_BLD, self.wk_DKk[...].astype(dt))
        v_BLKk = jnp.einsum("bld,dhk->blhk", x_BLD, self.wv_DKk[...].astype(dt))
        if self.q_norm is not None:
            q_BLHk, k_BLKk = self.q_norm(q_BLHk), self.k_norm(k_BLKk)
        q_BLHk, k_BLKk = apply_rope(q_BLHk, sin_LF, cos_LF), apply_rope(k_BLKk, sin_LF, cos_LF)
        # jax.nn.dot_product_attention handles grouped-query heads and computes the softmax in float32.
        o_BLHk = jax.nn.dot_product_attention(q_BLHk, k_BLKk, v_BLKk, is_causal=True)
        return jnp.einsum("blhk,hkd->bld", o_BLHk, self.wo_HkD[...].astype(dt))


class MLP(nnx.Module):
    """SwiGLU (gate, up, down) or GELU (up, down) feed-forward without biases."""

    def __init__(self, cfg: ModelConfig, d_ff: int, rngs: nnx.Rngs):
        d, std, out_std = cfg.d_model, cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.kind = cfg.mlp
        self.w_gate_DF = _init(rngs, (d, d_ff), std) if cfg.mlp == "swiglu" else None
        self.w_up_DF = _init(rngs, (d, d_ff), std)
        self.w_down_FD = _init(rngs, (d_ff, d), out_std)

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        dt = x_BLD.dtype
        up = x_BLD @ self.w_up_DF[...].astype(dt)
        if self.w_gate_DF is not None:
            h = jax.nn.silu(x_BLD @ self.w_gate_DF[...].astype(dt)) * up
        else:
            h = jax.nn.gelu(up)
        return h @ self.w_down_FD[...].astype(dt)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, use_moe: bool, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model)
        if use_moe:
            from scaling.model.moe import MoE

            self.mlp = MoE(cfg, rngs)
        else:
            self.mlp = MLP(cfg, cfg.ff_dim, rngs)
        self.is_moe = use_moe

    def __call__(self, x_BLD, sin_LF, cos_LF):
        x_BLD = x_BLD + self.attn(self.attn_norm(x_BLD), sin_LF, cos_LF)
        h_BLD = self.mlp_norm(x_BLD)
        if self.is_moe:
            y_BLD, aux = self.mlp(h_BLD)
        else:
            y_BLD, aux = self.mlp(h_BLD), {}
        return x_BLD + y_BLD, aux


class Transformer(nnx.Module):
    """``model(tokens_BL) -> (logits_BLV float32, aux)`` where ``aux`` holds per-MoE-layer losses and metrics."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_VD = _init(rngs, (cfg.vocab_size, cfg.d_model), cfg.init_std)
        moe_layers = set(moe_layer_indices(cfg))
        self.blocks = nnx.List([Block(cfg, i in moe_layers, rngs) for i in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model)
        self.unembed_DV = None if cfg.tie_embeddings else _init(rngs, (cfg.d_model, cfg.vocab_size), cfg.init_std)

    def __call__(self, tokens_BL: jax.Array) -> tuple[jax.Array, dict]:
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        L = tokens_BL.shape[1]
        sin_LF, cos_LF = rope_tables(L, cfg.head_dim, cfg.rope_theta)
        x_BLD = jnp.take(self.embed_VD[...], tokens_BL, axis=0).astype(dt)
        aux_layers = []
        for block in self.blocks:
            x_BLD, aux = block(x_BLD, sin_LF, cos_LF)
            if aux:
                aux_layers.append(aux)
        x_BLD = self.final_norm(x_BLD)
        w_DV = self.embed_VD[...].T if self.unembed_DV is None else self.unembed_DV[...]
        logits_BLV = jnp.einsum("bld,dv->blv", x_BLD, w_DV.astype(dt), preferred_element_type=jnp.float32)
        return logits_BLV.astype(jnp.float32), stack_aux(aux_layers)


def stack_aux(aux_layers: list[dict]) -> dict:
    """Per-layer MoE aux dicts -> one dict of arrays with a leading layer axis (empty for dense models)."""
    if not aux_layers:
        return {}
    return {k: jnp.stack([a[k] for a in aux_layers]) for k in aux_layers[0]}


def count_model_params(model: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
