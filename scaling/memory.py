"""Memory planner: the bytes one device holds to train a config, before anything is compiled or allocated.

Per device, for the mesh of ``parallel:`` on ``n_devices`` devices:

* **parameters**: float32, each sharded by its logical axes (``scaling.parallel``); all experts of MoE layers are
  stored although only ``top_k`` are used per token. Computed exactly from the model's abstract shapes.
* **gradients**: float32, the parameters' shapes and shardings (with ``fsdp`` each device reduces its own shard).
* **optimizer state**: AdamW's two float32 moments, sharded like the parameters.
* **activations** kept for the backward pass, per layer and per local token (t = micro-batch per batch shard x
  seq_len, ``a`` = bytes of the compute dtype; heads and MLP width are divided by ``tensor``):

  - ``none``: t (10 D + s F) a for a dense block (D-sized: block input, norm outputs, q, k, v, attention output,
    residual; s F-sized arrays, the feed-forward kind's ``saved_F`` in ``scaling.model.ffn``: 5 for swiglu's gate,
    up, silu(gate), their product and one more for its gradient); an MoE block replaces s F by k c (s F_e + 2 D)
    for its k c expert slots per token (c: capacity factor, 1 when dropless) plus the router's few t E floats;
    attention with materialised scores (XLA's kernel: TPU, CPU below seq_len 128) adds 3 B N L^2 x 4 bytes
    (scores, probabilities, the causal select), the blocked kernel (CPU from seq_len 128) the same for its blocks
    on and below the diagonal (about half), a fused kernel (cuDNN on GPU) only B N L x 4;
  - ``block`` (matmul outputs kept): t (5 D + s_b F) a + 1 B N L^2 x 4 per layer (s_b: the kind's ``kept_F``, 2),
    plus one layer's recomputation;
  - ``full`` (block inputs kept): t D a per layer, plus one layer's recomputation;
  - outside the blocks: 11 t V x 4 (float32 logits, their log-softmax, probabilities and gradient);
  - with ``fsdp`` > 1, the all-gathered weights (twice, compute dtype) and unsharded float32 gradients, as XLA:CPU
    keeps them for the whole step (an upper bound for schedulers that gather layer by layer).

The coefficients are counts of the arrays the backward pass reads; on CPU they reproduce XLA's own buffer
assignment within a few percent (``benchmarks/RESULTS.md``). XLA:CPU does not realise rematerialisation's savings
(its scheduler runs the recomputed blocks early and keeps them), so on CPU the ``block``/``full`` estimates are
what a memory-aware scheduler (GPU, TPU) achieves, not what XLA:CPU allocates.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from scaling.model.accounting import expert_ff_dim, moe_layer_indices
from scaling.config import RunConfig
from scaling.devices import DEVICES, GB  # noqa: F401
from scaling.model.attention import BLOCKED_MIN_SEQ, block_size
from scaling.model.ffn import feed_forward
from scaling.parallel import LOGICAL_RULES, mesh_shape, partition_spec, shard_shape

def host_memory() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    n_devices: int
    mesh: dict
    params: int
    grads: int
    optimizer: int
    activations: dict  # remat -> bytes
    remat: str
    device_memory: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations[self.remat]

    @property
    def fits(self) -> bool:
        return self.total <= self.device_memory

    def as_dict(self) -> dict:
        return {
            "device": self.device, "n_devices": self.n_devices, "mesh": self.mesh, "params": self.params,
            "grads": self.grads, "optimizer": self.optimizer, "activations": self.activations, "remat": self.remat,
            "total": self.total, "device_memory": self.device_memory, "fits": self.fits,
        }


def _param_shards(cfg: RunConfig, sizes: dict[str, int]) -> int:
    """float32 bytes per device of the parameters, from the model's abstract shapes and logical axes."""
    import jax
    from flax import nnx

    from scaling.train.state import abstract_state

    _, abstract = abstract_state(cfg)
    total = 0
    for v in jax.tree.leaves(abstract.params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        shape = tuple(v.get_value().shape)
        spec = partition_spec(tuple(v.get_metadata()["out_sharding"]), shape, sizes)
        total += 4 * math.prod(shard_shape(shape, spec, sizes))
    return total


def activation_bytes(cfg: RunConfig, sizes: dict[str, int], dtype_bytes: int, attention: str) -> dict[str, float]:
    """Activation bytes per device for each remat policy (see the module docstring for the counts)."""
    m = cfg.model
    batch_shards = math.prod(sizes[a] for a in LOGICAL_RULES["batch"])
    b = max(1, cfg.train.batch_size // cfg.train.grad_accum // batch_shards)  # sequences per device per micro-batch
    L, D, V = m.seq_len, m.d_model, m.vocab_size
    T = sizes["tensor"]
    t = b * L
    heads = m.n_heads // T if m.n_heads % T == 0 else m.n_heads
    F = m.ff_dim // T if m.ff_dim % T == 0 else m.ff_dim
    if attention == "materialised":
        scores = 4.0 * b * heads * L * L
    elif attention == "blocked":  # each query block's scores against its key prefix only
        bs = block_size(L)
        scores = 4.0 * b * heads * sum(min(bs, L - s) * min(s + bs, L) for s in range(0, L, bs))
    else:
        scores = 4.0 * b * heads * L
    moe_layers = set(moe_layer_indices(m))
    kind = feed_forward(m.mlp)  # F-sized arrays saved per token (scaling.model.ffn)
    s, s_b = kind.saved_F, kind.kept_F

    def layer(i: int, kept: str) -> float:
        if i in moe_layers:
            mo = m.moe
            slots = mo.top_k * (mo.capacity_factor or 1.0)
            Fe = expert_ff_dim(m)
            ff = slots * (s * Fe + 2 * D) + s * Fe * mo.n_shared_experts + 4 * mo.n_experts
            ff_kept = slots * (s_b * Fe + D) + s_b * Fe * mo.n_shared_experts
        else:
            ff, ff_kept = s * F, s_b * F
        full_layer = t * (10 * D + ff) * dtype_bytes + 3 * scores
        if kept == "none":
            return full_layer
        if kept == "block":
            return t * (5 * D + ff_kept) * dtype_bytes + scores
        return t * D * dtype_bytes

    outside = 11.0 * t * V * 4 + 2.0 * t * D * dtype_bytes
    if attention in ("materialised", "blocked") and m.moe is not None and m.moe.capacity_factor is None:
        # dropless experts run through jax.lax.ragged_dot, which XLA:CPU lowers to one dense product per expert
        # group: the gate and up outputs exist for every (assignment, expert) pair
        outside += len(moe_layers) * t * m.moe.top_k * m.moe.n_experts * 2 * expert_ff_dim(m) * dtype_bytes
    out = {}
    for kept in ("none", "block", "full"):
        per_layer = [layer(i, kept) for i in range(m.n_layers)]
        recompute = 0.0 if kept == "none" else max(layer(i, "none") for i in range(m.n_layers))
        out[kept] = sum(per_layer) + recompute + outside
    return out


def plan_memory(cfg: RunConfig, device: str = "cpu", n_devices: int | None = None) -> MemoryPlan:
    """The per-device memory of training ``cfg`` on ``n_devices`` of ``device`` (default: the devices the
    ``parallel:`` section names, -1 counting as 1)."""
    if device not in DEVICES:
        from scaling.config import ConfigError

        raise ConfigError(f"--device {device!r} is not known; known: {', '.join(DEVICES)}")
    memory, dtype_bytes, attention = DEVICES[device]
    if cfg.model.attention == "blocked" or (device == "cpu" and cfg.model.attention == "auto" and cfg.model.seq_len >= BLOCKED_MIN_SEQ):
        attention = "blocked"
    if device == "cpu":
        memory = host_memory()
    if cfg.model.dtype != "auto":
        dtype_bytes = 4 if cfg.model.dtype == "float32" else 2
    p = cfg.parallel
    if n_devices is None:
        n_devices = math.prod(max(1, getattr(p, a)) for a in ("data", "fsdp", "tensor", "expert"))
    sizes = mesh_shape(p, n_devices)
    params = _param_shards(cfg, sizes)
    acts = activation_bytes(cfg, sizes, dtype_bytes, attention)
    if sizes["fsdp"] > 1:
        # fsdp all-gathers the weights where they are used and reduce-scatters their gradients: count the gathered
        # copies (forward and backward, compute dtype) and the unsharded float32 gradients as live for the whole
        # step, as XLA:CPU keeps them; a scheduler that gathers layer by layer needs less (an upper bound).
        full = _param_shards(cfg, {**sizes, "fsdp": 1})  # what one device holds once its fsdp shards are gathered
        acts = {k: v + full * (2 * dtype_bytes / 4 + 1) for k, v in acts.items()}
    return MemoryPlan(
        device=device, n_devices=n_devices, mesh=sizes, params=params, grads=params, optimizer=2 * params,
        activations=acts, remat=cfg.train.remat, device_memory=memory,
    )


def xla_memory(cfg: RunConfig) -> dict:
    """XLA's own accounting of the compiled train step on this machine's devices (per device): argument bytes
    (state + batch) and temp bytes (everything else at peak)."""
    import jax
    import jax.numpy as jnp

    from scaling.parallel import Parallel
    from scaling.train.state import build
    from scaling.train.step import make_train_step

    par = Parallel.create(cfg.parallel)
    graphdef, target, shardings = build(cfg, par)
    B, L = cfg.train.batch_size, cfg.model.seq_len
    batch = jax.ShapeDtypeStruct((B, L + 1), jnp.int32, sharding=par.batch)
    with par.activation_rules():
        lowered = make_train_step(graphdef, cfg, par, shardings).lower(target, batch, jax.ShapeDtypeStruct((), jnp.float32))
    m = lowered.compile().memory_analysis()
    return {"argument": int(m.argument_size_in_bytes), "temp": int(m.temp_size_in_bytes),
            "total": int(m.argument_size_in_bytes + m.temp_size_in_bytes)}
