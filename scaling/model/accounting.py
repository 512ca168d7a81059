"""Parameter and training-FLOPs accounting: the one place the conventions live.

Conventions (recorded in every run's ``record.json`` as ``flops_convention``):

* ``n_params``: every parameter, all experts included, embeddings included (tied embeddings counted once).
* ``n_params_nonembedding``: ``n_params`` minus the input embedding and the output projection (Kaplan et al.).
* ``n_params_active``: parameters a token actually uses: for MoE layers the router, the shared experts and ``top_k``
  routed experts instead of all of them; equal to ``n_params`` for dense models.
* Training FLOPs per token = 6 x (active matmul parameters, the output projection included, the embedding lookup
  and norms excluded) + attention, where attention = 12 * n_layers * seq_len * d_attn (QK^T and AV, forward and
  backward), halved for causal masking by default (``flops_attention``: causal | full | none).
  C = FLOPs per token x D. Dense models: C ~= 6 N D plus the attention term.
"""

from __future__ import annotations

from dataclasses import dataclass

from scaling.model.config import ModelConfig
from scaling.model.ffn import feed_forward


@dataclass(frozen=True)
class ParamCounts:
    total: int
    nonembedding: int
    active: int
    active_nonembedding: int
    embedding: int  # input embedding + untied output projection
    matmul_active: int  # what the 6N term multiplies: active matmul weights incl. the output projection

    def as_dict(self) -> dict:
        return {
            "n_params": self.total,
            "n_params_nonembedding": self.nonembedding,
            "n_params_active": self.active,
            "n_params_active_nonembedding": self.active_nonembedding,
            "n_params_embedding": self.embedding,
        }


def moe_layer_indices(cfg: ModelConfig) -> list[int]:
    """Which blocks carry an MoE feed-forward: every ``every_n_layers``-th, counting so the last block is MoE."""
    if cfg.moe is None:
        return []
    n = cfg.moe.every_n_layers
    return [i for i in range(cfg.n_layers) if (cfg.n_layers - 1 - i) % n == 0]


def expert_ff_dim(cfg: ModelConfig) -> int:
    assert cfg.moe is not None
    return cfg.ff_dim // cfg.moe.granularity


def count_params(cfg: ModelConfig) -> ParamCounts:
    d, V, L = cfg.d_model, cfg.vocab_size, cfg.n_layers
    dh, H, K = cfg.head_dim, cfg.n_heads, cfg.kv_heads
    mult = feed_forward(cfg.mlp).n_matrices  # D x F matrices per MLP (scaling.model.ffn)

    attn = d * H * dh + 2 * d * K * dh + H * dh * d
    norms_per_layer = 2 * d + (2 * dh if cfg.qk_norm else 0)
    dense_mlp = mult * d * cfg.ff_dim

    moe_layers = set(moe_layer_indices(cfg))
    total_layers = active_layers = matmul_layers = 0
    for i in range(L):
        base = attn + norms_per_layer
        if i in moe_layers:
            m = cfg.moe
            assert m is not None
            expert = mult * d * expert_ff_dim(cfg)
            router = d * m.n_experts
            total_ff = router + (m.n_experts + m.n_shared_experts) * expert
            active_ff = router + (m.top_k + m.n_shared_experts) * expert
        else:
            total_ff = active_ff = dense_mlp
        total_layers += base + total_ff
        active_layers += base + active_ff
        matmul_layers += attn + active_ff

    embedding = V * d + (0 if cfg.tie_embeddings else V * d)
    final_norm = d
    total = embedding + total_layers + final_norm
    active = embedding + active_layers + final_norm
    return ParamCounts(
        total=total,
        nonembedding=total - embedding,
        active=active,
        active_nonembedding=active - embedding,
        embedding=embedding,
        matmul_active=matmul_layers + V * d,
    )


ATTENTION_FACTOR = {"causal": 0.5, "full": 1.0, "none": 0.0}


def flops_convention(attention: str = "causal") -> str:
    return f"6*N_active_matmul + 12*n_layers*seq_len*d_attn*{ATTENTION_FACTOR[attention]:g} ({attention} attention)"


def flops_per_token(cfg: ModelConfig, attention: str = "causal") -> float:
    """Training FLOPs per token (forward + backward) under the convention in this module's docstring."""
    if attention not in ATTENTION_FACTOR:
        raise ValueError(f"attention must be one of {sorted(ATTENTION_FACTOR)}, got {attention!r}")
    counts = count_params(cfg)
    d_attn = cfg.n_heads * cfg.head_dim
    attn = 12 * cfg.n_layers * cfg.seq_len * d_attn * ATTENTION_FACTOR[attention]
    return 6.0 * counts.matmul_active + attn


def training_flops(cfg: ModelConfig, tokens: int, attention: str = "causal") -> float:
    return flops_per_token(cfg, attention) * tokens
