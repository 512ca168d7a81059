"""Optimizer: AdamW with global-norm clipping; learning rate = peak lr x schedule(step), linear warmup then cosine,
warmup-stable-decay (WSD) or constant.

The learning rate is an *array* that enters the train step each step (not a Python float or a schedule closed over
at compile time), so one compiled step serves runs that differ in lr, schedule or length, and a stack of models can
carry one lr each. ``lr_table`` evaluates the schedule for every step of a run once, before training; the schedules
are optax's own (the same arithmetic as ``optax.warmup_cosine_decay_schedule`` & co.). The update is optax's AdamW
chain with the lr applied last, exactly as ``optax.adamw`` does; under muP (``model.parametrization``) the lr of
each hidden matrix is divided by the width multiplier there (``lr_multiplier``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from scaling.config import TrainConfig


def warmup_steps(cfg: TrainConfig, steps: int) -> int:
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return int(round(cfg.warmup_fraction * steps))


def make_schedule(cfg: TrainConfig, steps: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``schedule(step, peak_lr) -> lr`` for a run of ``steps`` optimizer steps (step counts from 0)."""
    warmup = warmup_steps(cfg, steps)
    ratio = cfg.min_lr_ratio

    def schedule(step, peak):
        if cfg.schedule == "cosine":
            # optax.warmup_cosine_decay_schedule(0, peak, warmup, steps, end=peak * ratio): alpha = end / peak
            decay_steps = max(steps, warmup + 1)
            parts = [optax.linear_schedule(0.0, peak, warmup), optax.cosine_decay_schedule(peak, decay_steps - warmup, alpha=ratio)]
            return optax.join_schedules(parts, [warmup])(step)
        ramp = optax.linear_schedule(0.0, peak, warmup)
        if cfg.schedule == "constant":
            return optax.join_schedules([ramp, optax.constant_schedule(peak)], [warmup])(step)
        # WSD: constant after warmup, then a decay to peak * ratio over the last decay steps (linear, or 1-sqrt:
        # lr = peak * (1 - (1 - ratio) * sqrt(t / decay)), Hagele et al. 2024)
        decay = decay_steps_of(cfg, steps)
        stable = max(0, steps - warmup - decay)
        if cfg.decay_shape == "linear":
            tail = optax.linear_schedule(peak, peak * ratio, max(decay, 1))
        else:
            def tail(t):
                frac = jnp.clip(t / max(decay, 1), 0.0, 1.0)
                return peak * (1 - (1 - ratio) * jnp.sqrt(frac))
        return optax.join_schedules([ramp, optax.constant_schedule(peak), tail], [warmup, warmup + stable])(step)

    return schedule


def lr_table(cfg: TrainConfig, steps: int, peak: float) -> "np.ndarray":
    """The learning rate of every step 0 .. steps - 1 (float32), from ``make_schedule`` evaluated on the device."""
    import numpy as np

    schedule = make_schedule(cfg, steps)
    table = jax.jit(jax.vmap(schedule, in_axes=(0, None)))(jnp.arange(steps), jnp.asarray(peak, jnp.float32))
    return np.asarray(jax.device_get(table), np.float32)


def decay_steps_of(cfg: TrainConfig, steps: int) -> int:
    """WSD: optimizer steps of the final decay (``decay_steps`` when set, else ``decay_fraction`` of the run)."""
    if cfg.decay_steps is not None:
        return cfg.decay_steps
    return int(round(cfg.decay_fraction * steps))


def _decay_mask(params):
    """Weight decay on matrices (ndim >= 2) only: not on norm scales or biases."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Clipping and AdamW *without* the learning rate: ``apply_lr`` multiplies by -lr afterwards (as
    ``optax.scale_by_learning_rate`` would, so the arithmetic is optax.adamw's)."""
    parts = []
    if cfg.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts += [
        optax.scale_by_adam(b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps),
        optax.add_decayed_weights(cfg.weight_decay, _decay_mask),
    ]
    return optax.chain(*parts)


def lr_multiplier(path, x, width_mult: float) -> float:
    """muP's per-parameter learning-rate factor: 1 / m for the hidden matrices (the blocks' matrices: attention and
    MLP), 1 for embeddings, the unembedding and norm scales (whose fan-in or fan-out stays finite)."""
    hidden = x.ndim >= 2 and any(getattr(k, "key", None) == "blocks" for k in path)
    return 1.0 / width_mult if hidden else 1.0


def apply_lr(updates, lr: jax.Array, width_mult: float = 1.0):
    """Multiply by -lr (times muP's per-parameter factor when ``width_mult`` != 1; sp's arithmetic is unchanged)."""
    step_size = -1 * lr
    if width_mult == 1.0:
        return jax.tree.map(lambda u: jnp.array(step_size, dtype=u.dtype) * u, updates)
    return jax.tree_util.tree_map_with_path(
        lambda p, u: jnp.array(step_size * lr_multiplier(p, u, width_mult), dtype=u.dtype) * u, updates)
