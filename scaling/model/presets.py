"""Named model presets from ~1e4 to ~1e9 parameters and the one depth/width rule that sizes a model.

The rule (``shape_for_width``): head dim 16 below d_model 64, 32 below 256, 64 from there (d_model a multiple of
its head dim); n_layers = max(1, round(d_model / 64)) (aspect ratio d_model / n_layers ~= 64, in Kaplan et al.'s
well-performing range). ``config_for_params`` picks the width whose total parameter count is nearest the target.
"""

from __future__ import annotations

import math

from scaling.model.accounting import count_params
from scaling.model.config import ModelConfig

ASPECT_RATIO = 64


def head_dim_for_width(d_model: int) -> int:
    return 16 if d_model < 64 else 32 if d_model < 256 else 64


def widths(max_width: int = 16384):
    """The widths the rule allows: multiples of their head dim."""
    return (d for d in range(16, max_width + 1, 16) if d % head_dim_for_width(d) == 0)


def shape_for_width(d_model: int) -> dict:
    head_dim = head_dim_for_width(d_model)
    if d_model % head_dim:
        raise ValueError(f"d_model={d_model} is not a multiple of its head dim {head_dim}")
    return {
        "d_model": d_model,
        "n_layers": max(1, round(d_model / ASPECT_RATIO)),
        "n_heads": max(1, d_model // head_dim),
    }


def config_for_params(target: float, **fixed) -> ModelConfig:
    """The config (by the rule above) whose total parameter count is nearest ``target`` (in log space)."""
    best, best_err = None, math.inf
    for d in widths():
        cfg = ModelConfig(**shape_for_width(d), **fixed)
        n = count_params(cfg).total
        err = abs(math.log(n / target))
        if err < best_err:
            best, best_err = cfg, err
        if n > target * 4:
            break
    assert best is not None
    return best


PRESETS: dict[str, ModelConfig] = {
    "10k": ModelConfig(d_model=16, n_layers=1, n_heads=1),
    "100k": ModelConfig(d_model=48, n_layers=2, n_heads=3),
    "1m": ModelConfig(d_model=128, n_layers=4, n_heads=4),
    "10m": ModelConfig(d_model=320, n_layers=8, n_heads=5),
    "100m": ModelConfig(d_model=768, n_layers=14, n_heads=12, vocab_size=32768, seq_len=1024),
    "1b": ModelConfig(d_model=2048, n_layers=20, n_heads=16, vocab_size=32768, seq_len=2048),
}
