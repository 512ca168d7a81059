"""Pure, jit-compiled train and eval steps over ``(graphdef, TrainState)``; the state buffers are donated.

The training loss is the language-model cross-entropy (float32) plus, when enabled, the output-logit z-loss and,
for MoE models, ``aux_loss_coef * sum_layers aux`` and ``router_z_loss_coef * sum_layers z`` (``scaling.model.moe``).
Gradient accumulation scans over micro-batches; the batch is split so each micro-batch stays evenly sharded.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from scaling.config import RunConfig
from scaling.model.moe import update_router_biases
from scaling.train.optim import apply_lr, make_optimizer
from scaling.train.state import TrainState


def make_loss_fn(graphdef: nnx.GraphDef, cfg: RunConfig) -> Callable:
    moe = cfg.model.moe
    z_coef = cfg.train.z_loss_coef

    remat = cfg.train.remat

    def loss_fn(params, rest, tokens_BL1):
        model = nnx.merge(graphdef, params, rest)
        logits_BLV, aux = model(tokens_BL1[:, :-1], remat=remat)
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


def train_step_fn(graphdef: nnx.GraphDef, cfg: RunConfig) -> Callable:
    """``step(state, tokens_BL1, lr) -> (state, {"metrics", "aux"})``, not yet jitted (so it can be vmapped
    over a stack of models). ``lr`` is this step's learning rate, an array from the run's schedule
    (``scaling.train.optim.lr_table``): nothing in the program depends on the lr, the schedule or the run's length,
    so runs of one model shape and optimizer (a WSD trunk and its branches, runs at other budgets or learning rates)
    share one compiled program, and the persistent compilation cache serves it to every later run."""
    loss_fn = make_loss_fn(graphdef, cfg)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    tx = make_optimizer(cfg.train)
    A = cfg.train.grad_accum
    width_mult = cfg.model.width_mult  # muP: hidden matrices step lr / m (scaling.train.optim.lr_multiplier)
    bias_rate = cfg.model.moe.bias_update_rate if cfg.model.moe is not None and cfg.model.moe.bias_balancing else None

    def step(state: TrainState, tokens_BL1, lr):
        params, rest = state.params, state.rest
        if A == 1:
            (_, (metrics, aux)), grads = grad_fn(params, rest, tokens_BL1)
        else:
            # micro-batch a takes rows a, a + A, ...: each micro-batch keeps an even share of every batch shard
            B = tokens_BL1.shape[0]
            micro_MBL1 = jnp.swapaxes(tokens_BL1.reshape(B // A, A, -1), 0, 1)

            def body(acc, tokens):
                (_, out), g = grad_fn(params, rest, tokens)
                return jax.tree.map(jnp.add, acc, g), out

            zeros = jax.tree.map(jnp.zeros_like, params)
            grads, (metrics, aux) = jax.lax.scan(body, zeros, micro_MBL1)
            grads = jax.tree.map(lambda g: g / A, grads)
            metrics, aux = jax.tree.map(lambda x: jnp.mean(x, axis=0), (metrics, aux))
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["lr"] = lr
        updates, opt = tx.update(grads, state.opt, params)
        params = optax.apply_updates(params, apply_lr(updates, lr, width_mult))
        if bias_rate is not None:
            rest = update_router_biases(rest, aux["load"], bias_rate)
        return TrainState(state.step + 1, params, rest, opt), {"metrics": metrics, "aux": aux}

    return step


def make_train_step(graphdef: nnx.GraphDef, cfg: RunConfig, par=None, state_shardings=None, k: int | None = None) -> Callable:
    """The jitted step; its state buffers are donated. With a ``Parallel`` and the state's shardings, the state
    keeps its layout across steps, the batch arrives split over the batch axes, and the metrics come back
    replicated (readable by every process).

    ``k = None``: one model, ``(state, batch, lr) -> (state, out)``. ``k`` an int: one step over ``k`` models of one
    shape, ``(states, batches, lrs) -> (states, outs)``, each a tuple of ``k``. Every model's step is the
    single-model step, unrolled in one program (not vmapped): XLA compiles each model's ops as it would alone, so
    every model's numbers are bit-identical to training it alone (a vmapped step is not, on CPU: batched matmuls
    round differently), and the models' independent ops run concurrently."""
    step = train_step_fn(graphdef, cfg)
    if k is None:
        fn, each = step, (lambda x: x)
    else:
        def fn(states, batches, lrs):
            outs = [step(s, b, lr) for s, b, lr in zip(states, batches, lrs)]
            return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

        def each(x):
            return (x,) * k
    if par is None:
        return jax.jit(fn, donate_argnums=(0,))
    return jax.jit(
        fn,
        in_shardings=(each(state_shardings), each(par.batch), each(par.replicated)),
        out_shardings=(each(state_shardings), each(par.replicated)),
        donate_argnums=(0,),
    )


def make_eval_step(graphdef: nnx.GraphDef, out_sharding=None) -> Callable:
    """Per-sequence mean next-token loss (B,), float32. ``out_sharding`` (e.g. replicated) lets every process of a
    multi-host job read all of it."""

    def eval_step(params, rest, tokens_BL1):
        model = nnx.merge(graphdef, params, rest)
        logits_BLV, _ = model(tokens_BL1[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL1[:, 1:]).mean(axis=1)

    return jax.jit(eval_step, out_shardings=out_sharding)
