"""Optimizer: AdamW with linear warmup then cosine, warmup-stable-decay (WSD) or constant; global-norm clipping."""

from __future__ import annotations

import jax
import optax

from scaling.config import TrainConfig


def make_schedule(cfg: TrainConfig, steps: int) -> optax.Schedule:
    warmup = int(round(cfg.warmup_fraction * steps))
    final = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(steps, warmup + 1), end_value=final)
    rest = steps - warmup
    if cfg.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)], [warmup])
    decay = int(round(cfg.decay_fraction * steps))
    stable = max(0, rest - decay)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, cfg.lr, warmup),
            optax.constant_schedule(cfg.lr),
            optax.linear_schedule(cfg.lr, final, max(decay, 1)),
        ],
        [warmup, warmup + stable],
    )


def _decay_mask(params):
    """Weight decay on matrices (ndim >= 2) only: not on norm scales or biases."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig, steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(cfg, steps)
    parts = []
    if cfg.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(
        optax.adamw(schedule, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=_decay_mask)
    )
    return optax.chain(*parts), schedule
