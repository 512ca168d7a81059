"""Mixture-of-experts feed-forward: float32 top-k router, capacity-factor or dropless dispatch, load-balancing and
router z losses, auxiliary-loss-free bias balancing, per-layer expert metrics.

Conventions (tested):

* Load-balancing loss (Switch/GShard): ``aux = E * sum_i f_i * P_i`` where ``f_i`` is the fraction of the T*k
  token-to-expert assignments that go to expert i and ``P_i`` the mean over tokens of the softmax probability of
  expert i. Perfectly uniform routing gives exactly 1 for any k; the training loss adds
  ``aux_loss_coef * aux`` for every MoE layer (summed over layers).
* Router z-loss (ST-MoE): ``z = mean over tokens of logsumexp(router logits)^2``; the training loss adds
  ``router_z_loss_coef * z`` per layer.
* Capacity: a routing group is one sequence of T tokens; each expert takes at most
  ``ceil(k * T / E * capacity_factor)`` assignments per group, first choices before second choices, earlier tokens
  first. Dropped assignments contribute nothing (the token keeps its residual). ``capacity_factor: null`` is
  dropless: assignments are sorted by expert and run through ``jax.lax.ragged_dot`` grouped matmuls.

Shape letters (``scaling.model.axes``): B batch, L sequence, D d_model, E experts, F expert hidden width, K top-k
choices, C capacity slots per expert, S = E x C slots, T = B x L tokens, A = T x K assignments.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.model.accounting import expert_ff_dim
from scaling.model.axes import constrain
from scaling.model.config import ModelConfig
from scaling.model.ffn import feed_forward
from scaling.model.layers import MLP, normal


class RouterBias(nnx.Variable):
    """Per-expert selection bias of auxiliary-loss-free balancing: not a parameter, updated outside the gradient."""


def capacity(tokens_per_group: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    return int(math.ceil(top_k * tokens_per_group / n_experts * capacity_factor))


def load_balancing_loss(probs_TE: jax.Array, expert_idx_TK: jax.Array, n_experts: int) -> tuple[jax.Array, jax.Array]:
    """(E * sum_i f_i P_i, f) over T tokens with K choices each; f_i counts assignments, so sum_i f_i = 1."""
    f_E = jnp.mean(jax.nn.one_hot(expert_idx_TK, n_experts, dtype=jnp.float32), axis=(0, 1))
    P_E = jnp.mean(probs_TE, axis=0)
    return n_experts * jnp.sum(f_E * P_E), f_E


def router_z_loss(logits_TE: jax.Array) -> jax.Array:
    return jnp.mean(jax.nn.logsumexp(logits_TE, axis=-1) ** 2)


class MoE(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        assert cfg.moe is not None
        m = cfg.moe
        self.cfg, self.m = cfg, m
        D, E, F = cfg.d_model, m.n_experts, expert_ff_dim(cfg)
        std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
        # The router's expert axis is not sharded with the experts: every token needs every expert's logit.
        self.router_DE = normal(rngs, "DE", (D, E), std, axes=("embed", None))
        self.kind = feed_forward(cfg.mlp)
        self.w_gate_EDF = normal(rngs, "EDF", (E, D, F), std) if self.kind.gated else None
        self.w_up_EDF = normal(rngs, "EDF", (E, D, F), std)
        self.w_down_EFD = normal(rngs, "EFD", (E, F, D), out_std)
        if m.n_shared_experts:
            self.shared = MLP(cfg, m.n_shared_experts * F, rngs)
        else:
            self.shared = None
        self.bias_E = RouterBias(jnp.zeros((E,), jnp.float32)) if m.bias_balancing else None

    # -- routing ----------------------------------------------------------------------------------------------
    def route(self, x_BLD: jax.Array):
        """Router logits/probs (float32), the chosen experts and their gate weights."""
        m = self.m
        logits_BLE = jnp.einsum("bld,de->ble", x_BLD.astype(jnp.float32), self.router_DE[...])
        probs_BLE = jax.nn.softmax(logits_BLE, axis=-1)
        scores = probs_BLE if self.bias_E is None else probs_BLE + self.bias_E[...]
        _, idx_BLK = jax.lax.top_k(scores, m.top_k)
        gates_BLK = jnp.take_along_axis(probs_BLE, idx_BLK, axis=-1)
        # At k = 1 renormalising would make every gate p / p = 1 and cut the router off from the LM loss's
        # gradient (Switch keeps the raw probability); renormalise only from k = 2.
        if m.renormalize and m.top_k > 1:
            gates_BLK = gates_BLK / jnp.sum(gates_BLK, axis=-1, keepdims=True)
        return logits_BLE, probs_BLE, idx_BLK, gates_BLK

    # -- experts ----------------------------------------------------------------------------------------------
    def _expert_ffn_batched(self, x_ECD: jax.Array) -> jax.Array:
        """x (..., E, C, D) -> (..., E, C, D), expert e applied to its own slots."""
        dt = x_ECD.dtype
        up = jnp.einsum("...ecd,edf->...ecf", x_ECD, self.w_up_EDF[...].astype(dt))
        h = self.kind.hidden(up, lambda: jnp.einsum("...ecd,edf->...ecf", x_ECD, self.w_gate_EDF[...].astype(dt)))
        return jnp.einsum("...ecf,efd->...ecd", h, self.w_down_EFD[...].astype(dt))

    def _dispatch_capacity(self, x_BLD, idx_BLK, gates_BLK):
        B, L, D = x_BLD.shape
        E, K = self.m.n_experts, self.m.top_k
        C = capacity(L, E, K, self.m.capacity_factor)
        # Position of each assignment in its expert's buffer: first choices of all tokens, then second choices.
        onehot_BKLE = jax.nn.one_hot(jnp.swapaxes(idx_BLK, 1, 2), E, dtype=jnp.int32)
        flat = onehot_BKLE.reshape(B, K * L, E)
        pos_BKL = (jnp.sum((jnp.cumsum(flat, axis=1) - 1) * flat, axis=-1)).reshape(B, K, L)
        pos_BLK = jnp.swapaxes(pos_BKL, 1, 2)
        keep_BLK = pos_BLK < C
        slot_BLK = jnp.where(keep_BLK, idx_BLK * C + pos_BLK, E * C)  # E*C = out of range -> dropped
        # Slot -> token index (gather form: cheaper than a one-hot dispatch einsum).
        token_BLK = jnp.broadcast_to(jnp.arange(L)[None, :, None], (B, L, K))
        b_idx = jnp.arange(B)[:, None, None]
        token_for_slot = jnp.zeros((B, E * C), jnp.int32).at[b_idx, slot_BLK].set(token_BLK, mode="drop")
        slot_used = jnp.zeros((B, E * C), jnp.bool_).at[b_idx, slot_BLK].set(True, mode="drop")
        x_BSD = jnp.take_along_axis(x_BLD, token_for_slot[..., None], axis=1)
        x_BSD = constrain(jnp.where(slot_used[..., None], x_BSD, 0), ("batch", None, None))  # gathered locally
        # Expert parallelism: the slots move from their sequence's batch shard to their expert's shard (XLA inserts
        # an all-to-all between these constraints; without an expert mesh axis they are no-ops), each device runs
        # only its experts, and the results travel back before being combined per token.
        x_BECD = constrain(x_BSD.reshape(B, E, C, D), ("batch_no_expert", "expert", None, None))
        y_BECD = constrain(self._expert_ffn_batched(x_BECD), ("batch_no_expert", "expert", None, None))
        y_BSD = constrain(y_BECD.reshape(B, E * C, D), ("batch", None, None))
        y_BLKD = jnp.take_along_axis(y_BSD, jnp.minimum(slot_BLK, E * C - 1).reshape(B, L * K)[..., None], axis=1)
        y_BLKD = y_BLKD.reshape(B, L, K, D)
        w_BLK = jnp.where(keep_BLK, gates_BLK, 0.0).astype(y_BLKD.dtype)
        y_BLD = jnp.einsum("blkd,blk->bld", y_BLKD, w_BLK)
        # the mean of the drop indicators (exact: 0 when nothing drops); 1 - mean(kept) rounds to -7e-9 under jit
        dropped = jnp.mean((~keep_BLK).astype(jnp.float32))
        return y_BLD, dropped

    def _dispatch_dropless(self, x_BLD, idx_BLK, gates_BLK):
        B, L, D = x_BLD.shape
        E, K = self.m.n_experts, self.m.top_k
        dt = x_BLD.dtype
        expert_A = idx_BLK.reshape(-1)  # A = B*L*K assignments
        token_A = jnp.repeat(jnp.arange(B * L), K)
        order = jnp.argsort(expert_A, stable=True)
        group_sizes = jnp.bincount(expert_A, length=E).astype(jnp.int32)
        x_AD = x_BLD.reshape(B * L, D)[token_A[order]]
        up = jax.lax.ragged_dot(x_AD, self.w_up_EDF[...].astype(dt), group_sizes)
        h = self.kind.hidden(up, lambda: jax.lax.ragged_dot(x_AD, self.w_gate_EDF[...].astype(dt), group_sizes))
        y_sorted_AD = jax.lax.ragged_dot(h, self.w_down_EFD[...].astype(dt), group_sizes)
        y_AD = jnp.zeros_like(y_sorted_AD).at[order].set(y_sorted_AD)
        y_BLD = jnp.einsum("blkd,blk->bld", y_AD.reshape(B, L, K, D), gates_BLK.astype(dt))
        return y_BLD, jnp.zeros((), jnp.float32)

    def __call__(self, x_BLD: jax.Array) -> tuple[jax.Array, dict]:
        m = self.m
        logits_BLE, probs_BLE, idx_BLK, gates_BLK = self.route(x_BLD)
        if m.capacity_factor is None:
            y_BLD, dropped = self._dispatch_dropless(x_BLD, idx_BLK, gates_BLK)
        else:
            y_BLD, dropped = self._dispatch_capacity(x_BLD, idx_BLK, gates_BLK)
        if self.shared is not None:
            y_BLD = y_BLD + self.shared(x_BLD)

        E = m.n_experts
        probs_TE = probs_BLE.reshape(-1, E)
        aux, load_E = load_balancing_loss(probs_TE, idx_BLK.reshape(-1, m.top_k), E)
        z = router_z_loss(logits_BLE.reshape(-1, E))
        entropy = -jnp.mean(jnp.sum(probs_TE * jnp.log(probs_TE + 1e-9), axis=-1))
        metrics = {
            "aux_loss": aux,
            "z_loss": z,
            "load": load_E,
            "max_load_ratio": jnp.max(load_E) * E,  # max / mean load
            "dropped_frac": dropped,
            "router_entropy": entropy,
        }
        return y_BLD, metrics


def update_router_biases(rest: nnx.State, loads_LE: jax.Array, rate: float) -> nnx.State:
    """Auxiliary-loss-free balancing, outside the gradient: bias_i += rate * sign(mean load - load_i).

    ``rest`` is the model's non-parameter state; its ``RouterBias`` variables are found by type and, sorted by
    path (block index), are the MoE layers in forward order, the order of ``loads_LE``'s rows."""
    flat = list(rest.flat_state())
    biases = [i for i, (_, v) in enumerate(flat) if isinstance(v, RouterBias)]
    for j, i in enumerate(biases):
        path, var = flat[i]
        load_E = loads_LE[j]
        flat[i] = (path, var.replace(var[...] + rate * jnp.sign(jnp.mean(load_E) - load_E)))
    return nnx.State.from_flat_path(flat)
