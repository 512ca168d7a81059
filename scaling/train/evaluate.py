"""Evaluation: the mean next-token loss over a fixed set of held-out windows, each scored once, and the
micro-batch it is scored in."""

from __future__ import annotations

import math

import jax
import numpy as np

from scaling.config import RunConfig
from scaling.parallel import InFlight, Parallel


def window_losses(eval_fn, params, rest, windows: np.ndarray, micro: int, par: Parallel) -> np.ndarray:
    """Each window's mean next-token loss (float64, in the order given), scored in micro-batches of ``micro``: the
    last micro-batch is padded with copies of the first window whose losses are dropped, so every window counts
    exactly once whatever ``micro`` is."""
    n, L1 = windows.shape
    losses = []
    in_flight = InFlight(par.max_in_flight)
    for start in range(0, n, micro):
        chunk = windows[start : start + micro]
        if len(chunk) < micro:
            chunk = np.concatenate([chunk, np.repeat(windows[:1], micro - len(chunk), axis=0)])
        losses.append(eval_fn(params, rest, par.put_batch(chunk[par.local_rows(micro)], (micro, L1))))
        in_flight.add(losses[-1])
    return np.concatenate([np.asarray(x, np.float64) for x in jax.device_get(losses)])[:n]


def evaluate(eval_fn, params, rest, windows: np.ndarray, micro: int, par: Parallel, bytes_per_token: float | None) -> dict:
    """Mean next-token loss over a fixed set of held-out windows, each scored once (``window_losses``); the standard
    error is over windows (std / sqrt(n))."""
    n, L1 = windows.shape
    per_window = window_losses(eval_fn, params, rest, windows, micro, par)
    out = {
        "eval_loss": float(per_window.mean()),
        "eval_loss_stderr": float(per_window.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "eval_windows": int(n),
        "eval_tokens": int(n * (L1 - 1)),
    }
    if bytes_per_token:
        out["eval_bpb"] = out["eval_loss"] / math.log(2) / bytes_per_token
    return out


EVAL_CPU_FLOATS = 2**17  # CPU evaluation: micro-batch x seq_len x d_model near this many floats (512 KiB, L2-sized)


def eval_micro_batch(cfg: RunConfig, par: Parallel) -> int:
    """Sequences per evaluation call: ``train.eval_batch_size`` when set; else, on a CPU, the power of two (a
    multiple of the batch shards, at most 256) nearest EVAL_CPU_FLOATS / (seq_len x d_model), so one call's
    activations stay in cache; elsewhere the training micro-batch. Every window is scored once whatever the size:
    it changes speed and memory, not the windows (float rounding only); with a large vocabulary the logits cap it. Measured on 2 cores, 2-layer models,
    seq 64: 1.2x (d16) to 2.0x (d64) the tokens/s of 256-sequence calls (benchmarks/RESULTS.md)."""
    if cfg.train.eval_batch_size is not None or jax.default_backend() != "cpu":
        return cfg.eval_batch_size
    L, V = cfg.model.seq_len, cfg.model.vocab_size
    target = EVAL_CPU_FLOATS / (L * cfg.model.d_model)
    micro = 2 ** max(0, min(8, round(math.log2(max(target, 1.0)))))
    # a large vocabulary: no more float32 logits per call than 2^24 (64 MiB) or the training micro-batch's
    micro = min(micro, max(cfg.eval_batch_size, 2**24 // (L * V)))
    return max(par.batch_shards, micro - micro % par.batch_shards)


__all__ = ["EVAL_CPU_FLOATS", "eval_micro_batch", "evaluate", "window_losses"]
