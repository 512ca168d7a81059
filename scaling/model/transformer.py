"""Decoder-only transformer in Flax NNX: pre-norm RMSNorm, rotary embeddings, causal (grouped-query) attention,
SwiGLU or GELU feed-forward or a mixture of experts, optional tied embeddings and QK-norm.

Layers are in ``scaling.model.layers`` and ``scaling.model.moe``; shape letters and logical axes in
``scaling.model.axes``; init and dtypes are described in ``scaling.model.layers``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.model.accounting import moe_layer_indices
from scaling.model.config import ModelConfig
from scaling.model.layers import MLP, Attention, RMSNorm, compute_dtype, normal, rope_tables
from scaling.model.moe import MoE


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, use_moe: bool, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model)
        self.mlp = MoE(cfg, rngs) if use_moe else MLP(cfg, cfg.ff_dim, rngs)
        self.is_moe = use_moe

    def __call__(self, x_BLD, sin_LR, cos_LR):
        x_BLD = x_BLD + self.attn(self.attn_norm(x_BLD), sin_LR, cos_LR)
        h_BLD = self.mlp_norm(x_BLD)
        if self.is_moe:
            y_BLD, aux = self.mlp(h_BLD)
        else:
            y_BLD, aux = self.mlp(h_BLD), {}
        return x_BLD + y_BLD, aux


# What the backward pass may keep of a block's forward (the rest is recomputed, block by block).
REMAT_POLICIES = {
    "block": jax.checkpoint_policies.dots_saveable,  # matmul outputs; norms, activations and softmax recomputed
    "full": jax.checkpoint_policies.nothing_saveable,  # only the block's input
}


def _run_block(block: Block, x_BLD, sin_LR, cos_LR):
    return block(x_BLD, sin_LR, cos_LR)


class Transformer(nnx.Module):
    """``model(tokens_BL) -> (logits_BLV float32, aux)`` where ``aux`` holds per-MoE-layer losses and metrics."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_VD = normal(rngs, "VD", (cfg.vocab_size, cfg.d_model), cfg.init_std)
        moe_layers = set(moe_layer_indices(cfg))
        self.blocks = nnx.List([Block(cfg, i in moe_layers, rngs) for i in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model)
        self.unembed_DV = None if cfg.tie_embeddings else normal(rngs, "DV", (cfg.d_model, cfg.vocab_size), cfg.init_std)

    def __call__(self, tokens_BL: jax.Array, remat: str = "none") -> tuple[jax.Array, dict]:
        """``remat`` (``train.remat``): none, block (keep matmul outputs) or full (keep only block inputs)."""
        return self._forward(tokens_BL, remat, None)

    def activations(self, tokens_BL: jax.Array) -> dict[str, jax.Array]:
        """The residual stream after the embedding and after each block, and the logits (the coordinate check of
        ``model.parametrization``)."""
        seen: dict[str, jax.Array] = {}
        seen["logits"] = self._forward(tokens_BL, "none", seen)[0]
        return seen

    def _forward(self, tokens_BL, remat, seen):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        L = tokens_BL.shape[1]
        sin_LR, cos_LR = rope_tables(L, cfg.head_dim, cfg.rope_theta)
        x_BLD = jnp.take(self.embed_VD[...], tokens_BL, axis=0).astype(dt)
        if seen is not None:
            seen["embed"] = x_BLD
        run = _run_block if remat == "none" else nnx.remat(_run_block, policy=REMAT_POLICIES[remat])
        aux_layers = []
        for i, block in enumerate(self.blocks):
            x_BLD, aux = run(block, x_BLD, sin_LR, cos_LR)
            if seen is not None:
                seen[f"block{i}"] = x_BLD
            if aux:
                aux_layers.append(aux)
        x_BLD = self.final_norm(x_BLD)
        w_DV = self.embed_VD[...].T if self.unembed_DV is None else self.unembed_DV[...]
        # logits accumulate in float32 whatever the compute dtype: the softmax over V is where bf16 would hurt
        logits_BLV = jnp.einsum("bld,dv->blv", x_BLD, w_DV.astype(dt), preferred_element_type=jnp.float32)
        if cfg.width_mult != 1.0:  # muP's output multiplier: logits stay O(1) as the width grows
            logits_BLV = logits_BLV * (1.0 / cfg.width_mult)
        return logits_BLV.astype(jnp.float32), stack_aux(aux_layers)


def stack_aux(aux_layers: list[dict]) -> dict:
    """Per-layer MoE aux dicts -> one dict of arrays with a leading layer axis (empty for dense models)."""
    if not aux_layers:
        return {}
    return {k: jnp.stack([a[k] for a in aux_layers]) for k in aux_layers[0]}


def count_model_params(model: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = ["Block", "Transformer", "compute_dtype", "count_model_params", "stack_aux"]
