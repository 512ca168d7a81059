"""Pure, jit-compiled train and eval steps over (graphdef, params, rest) with donated buffers.

The training loss is the language-model cross-entropy (float32) plus, when enabled, the output-logit z-loss and,
for MoE models, ``aux_loss_coef * sum_layers aux`` and ``router_z_loss_coef * sum_layers z`` (``scaling.model.moe``).
Gradient accumulation scans over micro-batches; the batch is split so each micro-batch stays evenly sharded.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from scaling.config import RunConfig


def make_loss_fn(graphdef: nnx.GraphDef, cfg: RunConfig) -> Callable:
    moe = cfg.model.moe
    z_coef = cfg.train.z_loss_coef

    def loss_fn(params, rest, tokens_BL1):
        model = nnx.merge(graphdef, params, rest)
        logits_BLV, aux = model(tokens_BL1[:, :-1])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL1[:, 1:]).mean()
        total = ce
        metrics = {"lm_loss": ce}
        if z_coef:
            logit_z = jnp.mean(jax.nn.logsumexp(logits_BLV, axis=-1) ** 2)
            total = total + z_coef * logit_z
            metrics["logit_z_loss"] = logit_z
        if aux:
            total = total + moe.aux_loss_coef * jnp.sum(aux["aux_loss"]) + moe.router_z_loss_coef * jnp.sum(aux["z_loss"])
        metrics["loss"] = total
        return total, (metrics, aux)

    return loss_fn


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule, cfg: RunConfig) -> Callable:
    loss_fn = make_loss_fn(graphdef, cfg)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    A = cfg.train.grad_accum
    bias_balancing = cfg.model.moe is not None and cfg.model.moe.bias_balancing

    def train_step(params, rest, opt_state, tokens_BL1):
        if A == 1:
            (_, (metrics, aux)), grads = grad_fn(params, rest, tokens_BL1)
        else:
            B = tokens_BL1.shape[0]
            micro_ABL1 = jnp.swapaxes(tokens_BL1.reshape(B // A, A, -1), 0, 1)

            def body(acc, tokens):
                (_, out), g = grad_fn(params, rest, tokens)
                return jax.tree.map(jnp.add, acc, g), out

            zeros = jax.tree.map(jnp.zeros_like, params)
            grads, (metrics, aux) = jax.lax.scan(body, zeros, micro_ABL1)
            grads = jax.tree.map(lambda g: g / A, grads)
            metrics, aux = jax.tree.map(lambda x: jnp.mean(x, axis=0), (metrics, aux))
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["lr"] = schedule(_adam_count(opt_state))
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if bias_balancing:
            from scaling.model.moe import update_router_biases

            model = nnx.merge(graphdef, params, rest)
            update_router_biases(model, aux["load"])
            _, _, rest = nnx.split(model, nnx.Param, ...)
        return params, rest, opt_state, {"metrics": metrics, "aux": aux}

    return jax.jit(train_step, donate_argnums=(0, 1, 2))


def _adam_count(opt_state: Any) -> jax.Array:
    for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)):
        if isinstance(leaf, optax.ScaleByAdamState):
            return leaf.count
    raise ValueError("optimizer state has no Adam count")


def make_eval_step(graphdef: nnx.GraphDef, out_sharding=None) -> Callable:
    """Per-sequence mean next-token loss (B,), float32. ``out_sharding`` (e.g. replicated) lets every process of a
    multi-host job read all of it."""

    def eval_step(params, rest, tokens_BL1):
        model = nnx.merge(graphdef, params, rest)
        logits_BLV, _ = model(tokens_BL1[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL1[:, 1:]).mean(axis=1)

    return jax.jit(eval_step, out_shardings=out_sharding)
