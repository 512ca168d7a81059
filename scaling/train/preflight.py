"""Phases 1 and 3 of the train loop: everything that can refuse a run before its record is touched (data,
epochs, eval windows, whether a checkpoint may be resumed), and the state it starts from (a verified checkpoint,
another run's via ``train.init_from``, or a fresh init); damaged checkpoints are set aside, never loaded."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scaling.config import ConfigError, RunConfig
from scaling.data import build_dataset
from scaling.parallel import Parallel
from scaling.train import record as rec
from scaling.train.checkpoint import CheckpointDamaged, Checkpointer
from scaling.train.state import TrainState, init_state, restore_init_from, restore_state
from scaling.train.errors import CheckpointError
from scaling.train.evaluate import eval_micro_batch


def check_epochs(epochs: float, cfg: RunConfig, train_tokens: int, warn: Callable[[str], None]) -> None:
    """Refuse a run above ``data.max_epochs`` passes over its training split; warn above one."""
    cap = cfg.data.max_epochs
    what = f"{epochs:.3g} epochs over the {train_tokens:,}-token training split (train.tokens={cfg.steps * cfg.tokens_per_step:,})"
    if cap is not None and epochs > cap:
        raise ConfigError(f"the run would make {what}, above data.max_epochs={cap:g}; use a larger corpus or raise data.max_epochs")
    if epochs > 1:
        warn(f"repeated data: {what}")


def check_resume(meta: dict, step: int, train_cfg: dict, steps: int, run_dir: Path, resume_anyway: bool) -> str | None:
    """Refuse to resume a checkpoint written under another training config (or past this config's last step).
    Returns the warning to record when ``resume_anyway`` overrides a config mismatch."""
    if step > steps:
        raise ConfigError(
            f"{run_dir} holds a checkpoint at step {step}, past this config's {steps} steps; use a new --out directory"
        )
    old = meta.get("train_config")
    if old is None or old == train_cfg:
        return None  # checkpoints from before config hashes were stored carry none
    changed = rec.diff_configs(old, train_cfg)
    msg = f"{run_dir} holds a checkpoint (step {step}) of a different config ({'; '.join(changed[:4])}{' ...' if len(changed) > 4 else ''})"
    if not resume_anyway:
        raise ConfigError(msg + ": use a new --out directory, or --resume-anyway to continue from it under the new config")
    return f"resumed from a checkpoint of another config: {'; '.join(changed)}"


@dataclass
class Preflight:
    """What phase 1 found: the data, the eval windows, the checkpoint to resume (if any) and the warnings."""

    ds: Any
    epochs: float | None
    eval_windows: np.ndarray
    eval_micro: int
    ckpt: Checkpointer
    latest: int | None
    warnings: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)  # warnings that travel with the checkpoints
    set_aside: list[dict] = field(default_factory=list)  # damaged checkpoints renamed out of the way
    resume: Callable[[dict, int], str | None] | None = None  # check_resume for a candidate checkpoint


def preflight(cfg: RunConfig, run_dir: Path, par: Parallel, train_cfg: dict, resume_anyway: bool, warn) -> Preflight:
    """Phase 1: everything that can refuse the run, before the record is touched."""
    L, B, steps = cfg.model.seq_len, cfg.train.batch_size, cfg.steps
    par.check_batch(B // cfg.train.grad_accum, "train.batch_size / train.grad_accum")
    ds = build_dataset(cfg.data, cfg.model, progress=cfg.log.progress)
    per_epoch = ds.train_windows_per_epoch(L)
    epochs = steps * B / per_epoch if per_epoch else None
    if per_epoch:
        check_epochs(epochs, cfg, per_epoch * L, warn)
    eval_windows, eval_available = ds.eval_windows(max(1, cfg.train.eval_tokens // L), L)
    if eval_available is not None and eval_available * L < cfg.train.eval_tokens:
        warn(
            f"the eval split has {eval_available} windows of {L} tokens ({eval_available * L:,} tokens), fewer than "
            f"train.eval_tokens={cfg.train.eval_tokens:,}: every window is scored once"
        )
    eval_micro = eval_micro_batch(cfg, par)
    par.check_batch(eval_micro, "train.eval_batch_size")
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.train.keep_checkpoints, cfg.train.keep_steps)
    pre = Preflight(ds, epochs, eval_windows, eval_micro, ckpt, None)
    pre.resume = lambda meta, step: check_resume(meta, step, train_cfg, steps, run_dir, resume_anyway)
    _newest_readable(pre, warn)
    return pre


def _newest_readable(pre: Preflight, warn) -> None:
    """Point ``pre`` at the newest checkpoint whose metadata reads (damaged ones are set aside, with a warning) and
    check that it may be resumed under this config."""
    pre.latest = pre.ckpt.latest_step()
    while pre.latest is not None:
        try:
            meta = pre.ckpt.read_meta(pre.latest)
        except CheckpointDamaged as e:
            _set_aside(pre, pre.latest, str(e), warn)
            continue
        mismatch = pre.resume(meta, pre.latest)
        pre.carried = list(meta.get("carried_warnings", [])) + ([mismatch] if mismatch else [])
        for w in pre.carried:  # warnings about how the checkpoint came about stay with the run
            warn(w)
        return


def _set_aside(pre: Preflight, step: int, reason: str, warn) -> None:
    where = pre.ckpt.set_aside(step)
    pre.set_aside.append({"step": step, "reason": reason, "moved_to": str(where)})
    warn(f"{reason}: set aside as {where.name} (kept, never loaded); falling back to the newest intact checkpoint")
    pre.latest = pre.ckpt.latest_step()


def restore_or_init(cfg: RunConfig, pre: Preflight, target: TrainState, shardings: TrainState, warn=lambda m: None) -> tuple[TrainState, dict, str]:
    """Phase 3: (state, loop state, where it came from). A checkpoint that fails its verification is set aside and
    the next newest tried; when checkpoints existed but none is intact the run is refused (``CheckpointError``)."""
    fresh_loop = {"recent_losses": [], "train_time_s": 0.0, "tokens_per_sec": None}
    while pre.latest is not None:
        try:
            state, loop_state = restore_state(pre.ckpt, pre.latest, target)
            return state, loop_state, f"checkpoint {pre.latest}"
        except CheckpointDamaged as e:
            _set_aside(pre, pre.latest, str(e), warn)
            _newest_readable(pre, warn)
    if pre.set_aside:
        raise CheckpointError(
            f"no intact checkpoint to resume from: {'; '.join(d['reason'] for d in pre.set_aside)} (set aside in "
            f"{Path(pre.set_aside[0]['moved_to']).parent}); rerun with a new --out to start over"
        )
    if cfg.train.init_from:
        state, meta = restore_init_from(cfg, target)
        # the source's recent losses describe the same trajectory up to its step: keep them for the final mean
        return state, {**fresh_loop, "recent_losses": list(meta.get("recent_losses", []))}, f"init_from {cfg.train.init_from}"
    return init_state(cfg, shardings), fresh_loop, "init"


__all__ = ["Preflight", "check_epochs", "check_resume", "preflight", "restore_or_init"]
