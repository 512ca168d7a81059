"""Model architecture config: ``ModelConfig`` and its optional ``MoEConfig`` section (validated, documented once)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from scaling.configbase import ConfigError, _f, _positive
from scaling.model.ffn import feed_forward


@dataclass(frozen=True)
class MoEConfig:
    n_experts: int = _f(8, "Number of routed experts per MoE layer.")
    top_k: int = _f(2, "Experts each token is routed to (k >= 1).")
    capacity_factor: Optional[float] = _f(
        1.25,
        "Per-expert capacity = ceil(k * T / E * capacity_factor) tokens per routing group (one sequence); overflow "
        "tokens skip the expert through the residual. null selects the dropless path.",
    )
    every_n_layers: int = _f(1, "Every n-th block (counting from the last) uses an MoE feed-forward; others are dense.")
    n_shared_experts: int = _f(0, "Experts every token passes through in addition to its top-k routed experts.")
    granularity: int = _f(1, "Fine-grained experts: each expert's hidden size is d_ff / granularity.")
    aux_loss_coef: float = _f(0.01, "Load-balancing loss coefficient (Switch/GShard; equals the coefficient at uniform routing).")
    router_z_loss_coef: float = _f(0.001, "Router z-loss coefficient (ST-MoE): coef * mean(logsumexp(router logits)^2).")
    renormalize: bool = _f(True, "Renormalise the top-k gate weights to sum to one (k >= 2 only: at k = 1 the gate stays the router probability, as in Switch, so the router learns from the LM loss).")
    bias_balancing: bool = _f(False, "Auxiliary-loss-free balancing: a per-expert selection bias updated by the sign of the load error.")
    bias_update_rate: float = _f(1e-3, "Step size of the auxiliary-loss-free bias update.")

    def validate(self, where: str = "model.moe") -> None:
        _positive(self, where, "n_experts", "top_k", "every_n_layers", "granularity")
        if self.top_k > self.n_experts:
            raise ConfigError(f"{where}.top_k={self.top_k} must be <= {where}.n_experts={self.n_experts}")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise ConfigError(f"{where}.capacity_factor must be > 0 or null (dropless), got {self.capacity_factor}")
        if self.n_shared_experts < 0:
            raise ConfigError(f"{where}.n_shared_experts must be >= 0, got {self.n_shared_experts}")
        for name in ("aux_loss_coef", "router_z_loss_coef", "bias_update_rate"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = _f(128, "Residual stream width.")
    n_layers: int = _f(2, "Number of transformer blocks.")
    n_heads: int = _f(4, "Attention query heads; d_model must be divisible by n_heads.")
    n_kv_heads: Optional[int] = _f(None, "Key/value heads for grouped-query attention (null = n_heads); must divide n_heads.")
    d_ff: Optional[int] = _f(None, "Feed-forward hidden size (null: the kind's default, 4*d_model for gelu; for swiglu the multiple of 8 nearest 8/3*d_model, so d_ff is within a relative 1.5/d_model of 8/3*d_model at every width).")
    vocab_size: int = _f(256, "Vocabulary size (256 for the byte tokenizer; the BPE tokenizer is trained to this size).")
    seq_len: int = _f(128, "Context length in tokens.")
    mlp: str = _f("swiglu", "Feed-forward kind, one of those registered in scaling.model.ffn: swiglu (silu-gated) or gelu.")
    tie_embeddings: bool = _f(False, "Share the input embedding with the output projection.")
    qk_norm: bool = _f(False, "RMS-normalise queries and keys per head before attention.")
    rope_theta: float = _f(10000.0, "Rotary position embedding base.")
    init_std: float = _f(0.02, "Std of the normal init of every matrix; output projections get init_std / sqrt(2 * n_layers).")
    dtype: Literal["auto", "float32", "bfloat16"] = _f("auto", "Compute dtype (params stay float32; softmax and loss in float32). auto: bfloat16 on GPU/TPU, float32 on CPU.")
    moe: Optional[MoEConfig] = _f(None, "Mixture-of-experts feed-forward blocks (null: dense model).")
    parametrization: Literal["sp", "mup"] = _f(
        "sp",
        "sp: the standard parametrization (init_std everywhere, one learning rate). mup: the maximal update "
        "parametrization (Yang et al. 2022, Tensor Programs V) relative to a base width, so that the best lr and "
        "init_std found at the base transfer to every width: with m = d_model / mup_base_width, hidden matrices "
        "(attention, MLP) start at init_std / sqrt(m) and take Adam steps of lr / m; embeddings, norms and the "
        "unembedding keep init_std and lr; logits are multiplied by 1 / m; attention logits are q.k * "
        "sqrt(mup_base_head_dim) / head_dim (1 / head_dim scaling). At d_model = mup_base_width (and head_dim = "
        "mup_base_head_dim) the model, its init and its updates equal sp's exactly.",
    )
    mup_base_width: Optional[int] = _f(None, "muP: the base d_model, where muP equals sp (required with parametrization=mup).")
    mup_base_head_dim: Optional[int] = _f(None, "muP: the base model's head dim (null: mup_base_width / n_heads).")
    attention: Literal["auto", "xla", "cudnn", "blocked"] = _f(
        "auto",
        "Attention kernel: xla or cudnn (passed to jax.nn.dot_product_attention(implementation=...); cudnn is GPU "
        "only, bfloat16/float16 compute), or blocked (scaling.model.attention: causal blocks that skip the masked "
        "half; faster on CPUs from seq_len 128). auto: blocked on a CPU from seq_len 128, else xla (cuDNN is opt-in "
        "until it is measured on a GPU here). The kernel is passed explicitly (JAX runs it or raises) and recorded in "
        "record.json (attention_kernel).",
    )

    @property
    def width_mult(self) -> float:
        """muP's m = d_model / mup_base_width (1 under sp)."""
        return self.d_model / self.mup_base_width if self.parametrization == "mup" else 1.0

    @property
    def attn_q_mult(self) -> float:
        """Factor on the queries that turns the kernels' 1/sqrt(head_dim) into muP's sqrt(base head dim) / head_dim
        (1 under sp)."""
        if self.parametrization != "mup":
            return 1.0
        base = self.mup_base_head_dim or self.mup_base_width // self.n_heads
        return (base / self.head_dim) ** 0.5

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        return feed_forward(self.mlp).default_d_ff(self.d_model)

    def validate(self, where: str = "model") -> None:
        _positive(self, where, "d_model", "n_layers", "n_heads", "vocab_size", "seq_len")
        feed_forward(self.mlp, f"{where}.mlp")
        if self.d_model % self.n_heads:
            raise ConfigError(f"{where}.d_model={self.d_model} must be divisible by {where}.n_heads={self.n_heads}")
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise ConfigError(f"{where}.n_kv_heads={self.n_kv_heads} must be a positive divisor of n_heads={self.n_heads}")
        if self.d_ff is not None and self.d_ff <= 0:
            raise ConfigError(f"{where}.d_ff must be > 0 or null, got {self.d_ff}")
        if self.head_dim % 2:
            raise ConfigError(f"{where}: head dim d_model/n_heads={self.head_dim} must be even for rotary embeddings")
        if not self.init_std > 0:
            raise ConfigError(f"{where}.init_std must be > 0, got {self.init_std}")
        if self.parametrization == "mup":
            if self.mup_base_width is None or self.mup_base_width <= 0:
                raise ConfigError(f"{where}.parametrization=mup needs {where}.mup_base_width, a positive d_model (the width its lr was tuned at), got {self.mup_base_width}")
            if self.mup_base_head_dim is None and self.mup_base_width % self.n_heads:
                raise ConfigError(f"{where}.mup_base_width={self.mup_base_width} is not a width this model can have with n_heads={self.n_heads} "
                                  f"(not divisible); set {where}.mup_base_head_dim")
            if self.mup_base_head_dim is not None and self.mup_base_head_dim <= 0:
                raise ConfigError(f"{where}.mup_base_head_dim must be a positive head dim, got {self.mup_base_head_dim}")
            if self.tie_embeddings:
                raise ConfigError(f"{where}.parametrization=mup unties the embeddings (the input and output layers scale differently); set {where}.tie_embeddings=false")
            if self.moe is not None:
                raise ConfigError(f"{where}.parametrization=mup is defined here for dense models only (the router's scaling is not); use sp with {where}.moe")
        elif self.mup_base_width is not None or self.mup_base_head_dim is not None:
            raise ConfigError(f"{where}.mup_base_width / mup_base_head_dim are muP settings; set {where}.parametrization=mup or remove them")
        if self.moe is not None:
            self.moe.validate(f"{where}.moe")
            if self.ff_dim % self.moe.granularity:
                raise ConfigError(f"{where}.moe.granularity={self.moe.granularity} must divide d_ff={self.ff_dim}")
