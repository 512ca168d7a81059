"""The training loop: one run directory in, ``record.json`` + metrics + checkpoints out; rerunning resumes.

Phases (``train``):

1. **preflight**: data, epochs, eval windows, whether an existing checkpoint may be resumed. A refusal here
   changes nothing on disk (a new run directory gets a record saying why).
2. **state layout**: the train state's shapes and logical axes (``jax.eval_shape``) and its shardings on the mesh.
3. **restore or init**: this run's newest checkpoint, else another run's (``train.init_from``, e.g. a WSD branch
   from its trunk), else a fresh init made in place with its shardings.
4. **steps**: the jitted step over the data, with logging, evaluation, checkpoints and a stop flag.
5. **finalize**: the final evaluation and the completed record.

Run directory layout::

    RUN_DIR/config.yaml     resolved config
    RUN_DIR/record.json     the run record (scaling.train.record), rewritten atomically
    RUN_DIR/metrics.jsonl   train / eval metrics, one JSON object per line
    RUN_DIR/checkpoints/    orbax checkpoints (train state + loop state)
    RUN_DIR/wandb/          the W&B run (offline by default)
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scaling.accounting import count_params, flops_convention, flops_per_token
from scaling.config import ConfigError, RunConfig, dump_yaml
from scaling.data import build_dataset
from scaling.model.layers import attention_implementation
from scaling.devices import peak_flops
from scaling.storage import storage_cause, storage_message
from scaling.parallel import InFlight, Parallel, enable_compilation_cache, maybe_initialize_distributed
from scaling.train import record as rec
from scaling.train.checkpoint import CheckpointDamaged, Checkpointer
from scaling.train.logger import MetricsLogger, last_logged_step
from scaling.train.optim import lr_table
from scaling.train.state import TrainState, build, init_state, restore_init_from, restore_state
from scaling.train.step import make_eval_step, make_stacked_step

FINAL_LOSS_WINDOW = 20  # final_train_loss: mean LM loss over the last this-many steps
PROGRESS_EVERY_S = 5.0  # how often the record notes the newest step reached (for the steps a kill makes us redo)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite (``step``: the first optimizer step whose metrics were not finite)."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class CheckpointError(ValueError):
    """The run has checkpoints but none is intact (each was set aside, named in the message): nothing to resume."""


class MeasurementWarning(UserWarning):
    """Something that can make a run's numbers misleading (repeated data, a small eval split, a resume under
    another config); it is also written to the record's ``warnings``."""


class StopRequested(Exception):
    """A stop was requested (a preemption signal or Ctrl-C, ``scaling.signals``); the run committed a checkpoint
    at ``step`` and can be resumed. ``status`` is what its record says: ``preempted`` or ``stopped``."""

    def __init__(self, message: str, step: int, status: str = "stopped", signal: str | None = None):
        super().__init__(message)
        self.step, self.status, self.signal = step, status, signal


def _every(n: int, steps: int) -> int:
    return n if n > 0 else max(1, steps // 10)


def run_id_for(cfg: RunConfig) -> str:
    return cfg.name or rec.config_hash(cfg.to_dict())


def evaluate(eval_fn, params, rest, windows: np.ndarray, micro: int, par: Parallel, bytes_per_token: float | None) -> dict:
    """Mean next-token loss over a fixed set of held-out windows, each scored once, in micro-batches of ``micro``.

    The standard error is over windows (std / sqrt(n)); the last micro-batch is padded with copies of the first
    window whose losses are dropped, so every window counts exactly once whatever ``micro`` is."""
    n, L1 = windows.shape
    losses = []
    in_flight = InFlight(par.max_in_flight)
    for start in range(0, n, micro):
        chunk = windows[start : start + micro]
        if len(chunk) < micro:
            chunk = np.concatenate([chunk, np.repeat(windows[:1], micro - len(chunk), axis=0)])
        losses.append(eval_fn(params, rest, par.put_batch(chunk[par.local_rows(micro)], (micro, L1))))
        in_flight.add(losses[-1])
    per_window = np.concatenate([np.asarray(x, np.float64) for x in jax.device_get(losses)])[:n]
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


def _moe_metrics(aux: dict) -> dict:
    if not aux:
        return {}
    return {
        "aux_loss": float(np.mean(aux["aux_loss"])),
        "router_z_loss": float(np.mean(aux["z_loss"])),
        "moe": {
            "max_load_ratio": np.asarray(aux["max_load_ratio"]).tolist(),
            "dropped_frac": np.asarray(aux["dropped_frac"]).tolist(),
            "router_entropy": np.asarray(aux["router_entropy"]).tolist(),
            "load": np.asarray(aux["load"]).round(5).tolist(),
        },
    }


def shard_bytes(tree) -> int:
    """Bytes of ``tree``'s arrays stored on this process's first device (what sharding saves, measured)."""
    dev = jax.local_devices()[0]
    return int(sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev))


def first_non_finite(metrics: dict) -> bool:
    """True when any metric of one step is NaN or infinite (the run is diverged from that step on)."""
    return not all(math.isfinite(v) for v in metrics.values())


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


class _Member:
    """One run's side of the loop: its record, data, checkpoints, metrics and final evaluation. A run trained
    alone is a stack of one; every member of a stack keeps everything of its own (``train_stack``)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, run_id: str | None, is_main: bool):
        self.cfg, self.run_dir, self.is_main = cfg, Path(run_dir), is_main
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.B, self.L, self.steps = cfg.train.batch_size, cfg.model.seq_len, cfg.steps
        self.run_id = run_id or run_id_for(cfg)
        self.config_dict = cfg.to_dict()
        self.counts = count_params(cfg.model)
        self.fpt = flops_per_token(cfg.model, cfg.train.flops_attention)
        peak = peak_flops(jax.devices()[0].device_kind)
        self.peak = peak * jax.device_count() if peak else None  # bf16 peak of all devices (MFU's denominator)
        self.D = self.steps * self.B * self.L
        self.record: dict[str, Any] = rec.read_record(self.run_dir) or {}
        self.finished = self.record.get("status") == "completed" and rec.config_hash(self.record.get("config", {})) == rec.config_hash(self.config_dict)
        self.warnings: list[str] = []
        self.train_cfg = rec.training_config(self.config_dict)
        self.logger = None
        self.pending: list[tuple[int, Any]] = []
        self.last_eval: dict = {}
        self.error: BaseException | None = None  # set when this member diverged or failed inside a stack
        # wall time across attempts: what earlier ones recorded (noted every few seconds, so a killed attempt's
        # time counts up to its last note) plus this attempt's since its start
        self.wall_base, self.wall_start = float(self.record.get("wall_time_s") or 0.0), time.perf_counter()

    def wall_time(self) -> float:
        return self.wall_base + (time.perf_counter() - self.wall_start)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        if self.is_main:
            warnings.warn(f"run {self.run_id}: {msg}", MeasurementWarning, stacklevel=3)

    def write_record(self, **updates) -> None:
        self.record.update(updates, updated_at=rec.now())
        if self.is_main:
            rec.write_json_atomic(self.run_dir / "record.json", self.record)

    def prepare(self, par: Parallel, resume_anyway: bool) -> None:
        """Phase 1 and the record of a run about to train; a refusal (ConfigError) changes nothing on disk but a
        new run directory's record saying why."""
        cfg, record = self.cfg, self.record
        try:
            self.pre = preflight(cfg, self.run_dir, par, self.train_cfg, resume_anyway, self.warn)
        except ConfigError as e:
            if not record and self.is_main:  # leave a record for sweeps; an existing one is left as it was
                rec.write_json_atomic(self.run_dir / "record.json", {
                    "schema": rec.SCHEMA_VERSION, "run_id": self.run_id, "status": "failed", "config": self.config_dict,
                    "error": f"ConfigError: {e}", "started_at": rec.now(), "updated_at": rec.now(),
                })
            raise
        moe = cfg.model.moe
        record.update(
            {
                "schema": rec.SCHEMA_VERSION,
                "run_id": self.run_id,
                "name": cfg.name,
                "status": "running",
                "config": self.config_dict,
                **self.counts.as_dict(),
                "n_experts": moe.n_experts if moe else None,
                "top_k": moe.top_k if moe else None,
                "granularity": moe.granularity if moe else None,
                "kind": "moe" if moe else "dense",
                "tokens": self.D,
                "steps": self.steps,
                "batch_size": self.B,
                "seq_len": self.L,
                "epochs": self.pre.epochs,
                "flops_per_token": self.fpt,
                "flops": self.fpt * self.D,
                "flops_convention": flops_convention(cfg.train.flops_attention),
                "seed": cfg.train.seed,
                "init_seed": cfg.init_seed,
                "data_seed": cfg.data_seed,
                "mesh": par.sizes,
                "data": self.pre.ds.describe(),
                "versions": rec.library_versions(),
                **rec.device_info(),
                "warnings": self.warnings,
                "error": None,
            }
        )
        record.pop("diverged_at_step", None)
        record.pop("stop_signal", None)
        record.setdefault("started_at", rec.now())
        if self.is_main:
            (self.run_dir / "config.yaml").write_text(dump_yaml(cfg))
        self.write_record()

    def start(self, target: TrainState, shardings: TrainState, par: Parallel, progress: Any) -> TrainState:
        """Phase 3 (restore or init) and the metrics logger; the state this member starts from."""
        cfg, record = self.cfg, self.record
        state, self.loop_state, origin = restore_or_init(cfg, self.pre, target, shardings, self.warn)
        self.start_step = start = int(jax.device_get(state.step))
        # an earlier attempt that got past its last checkpoint (killed, or preempted without grace) lost those
        # steps: they are trained again now, and the record counts them (the cost of checkpoint_every). The newest
        # step reached is the later of the record's note (every few seconds) and the last step metrics.jsonl logged.
        logged = last_logged_step(self.run_dir / "metrics.jsonl")
        reached = max((x for x in (record.get("reached_step"), logged) if x is not None), default=None)
        if self.pre.latest is not None and (logged is None or logged < self.pre.latest):
            held = "is missing" if logged is None else f"ends at step {logged}"
            self.warn(f"metrics.jsonl {held} but the checkpoint is at step {self.pre.latest}: the training curve has a gap "
                      "(the file was truncated or removed)")
        restarted = reached is not None or self.pre.latest is not None
        recomputed = max(0, int(reached or 0) - start)
        self.recent = deque(self.loop_state["recent_losses"], maxlen=FINAL_LOSS_WINDOW)
        counts = self.counts
        self.logger = MetricsLogger(
            self.run_dir,
            cfg.log,
            self.run_id,
            {**self.config_dict, "run_id": self.run_id, "N": counts.total, "N_active": counts.active, "D": self.D, "C": self.fpt * self.D,
             "code": rec.code_version()},
            resume_step=start,
            enabled=self.is_main,
        )
        self.write_record(
            resumed_from_step=start if self.pre.latest is not None and start else None,
            initialized_from=origin,
            reached_step=start,
            restarts=int(record.get("restarts") or 0) + int(restarted),
            steps_recomputed=int(record.get("steps_recomputed") or 0) + recomputed,
            preemptions=int(record.get("preemptions") or 0),
            **({"checkpoints_set_aside": list(record.get("checkpoints_set_aside") or []) + self.pre.set_aside} if self.pre.set_aside else {}),
        )
        self.last_progress_write = time.monotonic()
        self.rows = par.local_rows(self.B)
        self.lrs = lr_table(cfg.train, self.steps, cfg.train.lr)  # the schedule, step by step: not compiled into the step
        self.session_tokens, self.session_time = 0, 0.0
        self.task = progress.add_task(self.run_id, total=self.steps, completed=start, loss=float("nan"), tps=0.0) if progress else None
        self.progress = progress
        return state

    def batch(self, par: Parallel, step: int) -> jax.Array:
        return par.put_batch(self.pre.ds.train_batch(step, self.B, self.L, self.cfg.data_seed, self.rows), (self.B, self.L + 1))

    def flush(self) -> None:
        """Pull the pending steps' metrics to the host (a device sync): check them, log every log_every-th."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        log_every, B, L = self.cfg.train.log_every, self.B, self.L
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), out in zip(pending, fetched):
            m = {k: float(v) for k, v in out["metrics"].items()}
            if first_non_finite(m):
                raise DivergedError(f"non-finite training loss at step {s + 1}: {m}", step=s + 1)
            self.recent.append(m["lm_loss"])
            if (s + 1) % log_every == 0 or s + 1 == self.steps:
                tps = self.session_tokens / self.session_time if self.session_time > 0 else None
                tokens = (s + 1) * B * L
                # cumulative training FLOPs (loss against compute on the dashboard) and MFU where the peak is known
                mfu = self.fpt * tps / self.peak if tps and self.peak else None
                self.logger.log(s + 1, {**m, **_moe_metrics(out["aux"]), "tokens": tokens, "flops": self.fpt * tokens,
                                        "tokens_per_sec": tps, **({"mfu": mfu} if mfu is not None else {})})
                if self.task is not None:
                    self.progress.update(self.task, completed=s + 1, loss=m["lm_loss"], tps=tps or 0.0)
        if time.monotonic() - self.last_progress_write >= PROGRESS_EVERY_S:
            self.last_progress_write = time.monotonic()
            self.write_record(reached_step=s + 1, wall_time_s=self.wall_time())

    def evaluate(self, eval_fn, state: TrainState, par: Parallel) -> dict:
        with par.activation_rules():  # traced on first use
            self.last_eval = evaluate(eval_fn, state.params, state.rest, self.pre.eval_windows, self.pre.eval_micro, par, self.pre.ds.bytes_per_token)
        return self.last_eval

    def checkpoint(self, done: int, state: TrainState) -> None:
        self.flush()
        ls = self.loop_state
        self.loop_state = {
            "config_hash": rec.training_hash(self.config_dict),
            "train_config": self.train_cfg,
            "carried_warnings": self.pre.carried,
            "recent_losses": list(self.recent),
            "train_time_s": ls["train_time_s"] + self.session_time,
            "tokens_per_sec": self.session_tokens / self.session_time if self.session_time else ls["tokens_per_sec"],
        }
        self.session_time, self.session_tokens = 0.0, 0
        self.pre.ckpt.save(done, state.as_dict(), self.loop_state)
        # saves commit asynchronously: report the newest *committed* checkpoint
        self.write_record(last_checkpoint_step=self.pre.ckpt.committed_step, progress=done / self.steps, reached_step=done,
                          wall_time_s=self.wall_time())

    def record_stop(self, should_stop) -> tuple[str, str | None]:
        self.pre.ckpt.close()  # waits until the stop checkpoint is committed
        sig = getattr(should_stop, "signal", None)
        status = getattr(should_stop, "status", "stopped")
        self.write_record(
            last_checkpoint_step=self.pre.ckpt.committed_step,
            stop_signal=sig,
            preemptions=self.record["preemptions"] + int(status == "preempted"),
            wall_time_s=self.wall_time(),
        )
        return status, sig

    def finalize(self, state: TrainState, eval_fn, par: Parallel, compile_time: float) -> dict:
        """Phase 5: the final evaluation and the completed record."""
        self.flush()
        self.pre.ckpt.close()
        self.record["last_checkpoint_step"] = self.pre.ckpt.committed_step
        last_eval = self.last_eval or self.evaluate(eval_fn, state, par)  # empty: resumed from the final checkpoint
        train_time = self.loop_state["train_time_s"]
        recent = self.recent
        final = {
            "status": "completed",
            "final_train_loss": float(np.mean(recent)) if recent else None,
            "final_train_loss_window": len(recent),
            "final_eval_loss": last_eval.get("eval_loss"),
            "final_eval_loss_stderr": last_eval.get("eval_loss_stderr"),
            "final_eval_bpb": last_eval.get("eval_bpb"),
            "eval_tokens": last_eval.get("eval_tokens"),
            "eval_windows": last_eval.get("eval_windows"),
            "entropy_rate": getattr(self.pre.ds, "entropy_rate", None),
            "tokens_per_sec": self.loop_state["tokens_per_sec"],
            # train_time_s sums the checkpointed sessions, which together trained every step once
            "step_time_s": train_time / self.steps if train_time else None,
            "compile_time_s": compile_time,
            "train_time_s": train_time,
            "wall_time_s": self.wall_time(),
            "params_digest": rec.params_digest(state.params),
            "param_bytes_per_device": shard_bytes(state.params),
            "opt_state_bytes_per_device": shard_bytes(state.opt),
            "progress": 1.0,
        }
        self.write_record(**final)
        self.logger.summary({k: v for k, v in final.items() if isinstance(v, (int, float))})
        self.close(0)
        return self.record

    def fail(self, e: BaseException) -> None:
        """Record how this member ended when it did not complete. A storage failure is recorded as such when the
        record can still be written (``failed``, ``error`` 'storage: ...': a sweep retries it once there is room);
        when it cannot, the record stays ``running`` and a rerun resumes from the last checkpoint all the same."""
        try:
            if isinstance(e, DivergedError):
                self.write_record(status="diverged", error=str(e), diverged_at_step=e.step)
            elif isinstance(e, StopRequested):
                self.write_record(status=e.status, error=None)
            elif storage_cause(e):
                self.write_record(status="failed", error=f"storage: {storage_message(e, str(self.run_dir))}", wall_time_s=self.wall_time())
            else:
                self.write_record(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=-8))
        except OSError:
            pass  # the disk that failed the run cannot take its record either

    def close(self, code: int) -> None:
        if self.logger is not None:
            self.logger.close(code)
            self.logger = None


def stack_key(cfg: RunConfig) -> str:
    """Runs with equal keys can train as one stack: their configs differ at most in the name, the seeds and the
    peak learning rate (``train.lr``), which the stacked step takes per member."""
    d = cfg.to_dict()
    d.pop("name", None)
    for k in ("seed", "init_seed", "data_seed", "lr", "init_from"):
        d["train"].pop(k, None)
    return rec.config_hash(d)


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    progress: Any = None,
    should_stop: Callable[[], bool] | None = None,
    run_id: str | None = None,
    resume_anyway: bool = False,
) -> dict:
    """Train (or resume) the run in ``run_dir``; returns the final record. Raises DivergedError on NaN/inf.

    A checkpoint in ``run_dir`` is resumed only if it was written under the same training config (the record's
    ``config`` minus logging, evaluation and checkpointing cadence): a different one raises ``ConfigError`` unless
    ``resume_anyway`` (then the record says so); a checkpoint past this config's steps is always an error."""
    return train_stack([cfg], [run_dir], progress=progress, should_stop=should_stop, run_ids=[run_id], resume_anyway=resume_anyway)[0]


def train_stack(
    cfgs: list[RunConfig],
    run_dirs: list[str | Path],
    *,
    progress: Any = None,
    should_stop: Callable[[], bool] | None = None,
    run_ids: list[str | None] | None = None,
    resume_anyway: bool = False,
) -> list[dict]:
    """Train (or resume) several runs of one shape in one compiled step (``scaling.train.step.make_stacked_step``);
    their configs may differ in seeds and peak lr only (``stack_key``). Each run keeps its own run directory,
    record, metrics, checkpoints and final evaluation, and its numbers are bit-identical to training it alone
    (``tests/test_train.py``). A member that is refused, diverges or fails is recorded so and the others go on;
    members resumed at different steps train in groups of equal step, one group after another. Returns the records
    (a member that did not complete: its record says why). One run (``train``) raises instead: ConfigError,
    DivergedError, StopRequested or the error that stopped it; a stack raises StopRequested after every member
    checkpointed."""
    maybe_initialize_distributed()  # before any other JAX call
    if len({stack_key(c) for c in cfgs}) > 1:
        raise ConfigError("runs of one stack must differ only in name, seeds and train.lr")
    solo = len(cfgs) == 1
    cfg0 = cfgs[0]
    enable_compilation_cache(cfg0.data.cache_dir)
    is_main = jax.process_index() == 0
    par = Parallel.create(cfg0.parallel)
    members = [_Member(c, d, i, is_main) for c, d, i in zip(cfgs, run_dirs, run_ids or [None] * len(cfgs))]
    def drop(m: _Member, e: Exception) -> None:
        """A stack member that failed alone: recorded (the others go on); one run raises instead."""
        if solo:
            raise e
        m.error = e
        if m.record.get("status") == "running":
            m.fail(e)  # written to its record.json
        else:  # refused before its record was rewritten: the disk stays as it was; the record returned says why
            m.record = {**m.record, "status": "failed", "error": f"{type(e).__name__}: {e}"}
        m.close(1)

    active = []
    for m in members:
        if m.finished:
            continue
        try:
            m.prepare(par, resume_anyway)
        except Exception as e:
            drop(m, e)
            continue
        active.append(m)
    if not active:
        return [m.record for m in members]  # already done (or every member refused): nothing to train
    states: dict[int, TrainState] = {}
    try:
        graphdef, target, shardings = build(cfg0, par)  # phase 2: layout only, nothing allocated
        eval_fn = make_eval_step(graphdef, par.replicated)
        for k, m in enumerate(active):  # phase 3
            try:
                states[k] = m.start(target, shardings, par, progress)
            except Exception as e:
                drop(m, e)
        groups: dict[int, list[int]] = {}
        for k in states:
            groups.setdefault(active[k].start_step, []).append(k)
        for g, (start, ks) in enumerate(sorted(groups.items())):
            if g and should_stop is not None and should_stop():  # a stop latched while an earlier group trained
                for k in ks:
                    active[k].record_stop(should_stop)
                status = getattr(should_stop, "status", "stopped")
                raise StopRequested(f"{status} before step {start + 1} ({getattr(should_stop, 'signal', None) or 'stop requested'})",
                                    start, status, getattr(should_stop, "signal", None))
            _drive([active[k] for k in ks], tuple(states[k] for k in ks), graphdef, shardings, eval_fn, par, should_stop, drop, solo)
    except BaseException as e:
        for m in active:
            if m.error is None and m.record.get("status") != "completed":
                m.fail(e)
        if solo or isinstance(e, StopRequested) or not isinstance(e, Exception):
            raise
    finally:
        for m in active:
            m.close(1)
    return [m.record for m in members]


def _drive(members, state_tuple, graphdef, shardings, eval_fn, par, should_stop, drop, solo) -> None:
    """Phases 4 and 5 for members that start at the same step: one compiled step trains them all."""
    m0 = members[0]
    cfg, steps, start = m0.cfg, m0.steps, m0.start_step
    step_fn = make_stacked_step(graphdef, cfg, len(members), par, shardings)

    def inputs(step: int):
        return tuple(m.batch(par, step) for m in members), tuple(m.lrs[min(step, steps - 1)] for m in members)

    t0 = time.perf_counter()
    with par.activation_rules():
        compiled = step_fn.lower(state_tuple, *inputs(start)).compile()
    compile_time = time.perf_counter() - t0
    # the kernel is passed explicitly to jax.nn.dot_product_attention, which runs it or raises: no fallback to hide
    for m in members:
        m.write_record(attention_kernel=attention_implementation(cfg.model), attention_requested=cfg.model.attention,
                       stack_size=len(members), parametrization=cfg.model.parametrization, mup_width_mult=cfg.model.width_mult)

    live = list(range(len(members)))  # members still training (a diverged one is dropped, the others go on)
    eval_every = cfg.train.eval_every or steps  # 0: only the final evaluation
    ckpt_every = _every(cfg.train.checkpoint_every, steps)
    keep_steps = set(cfg.train.keep_steps)
    log_every = cfg.train.log_every
    B, L = m0.B, m0.L

    def each(fn) -> None:
        """fn(i) for every live member; in a stack, a member that diverges or fails is recorded and dropped."""
        for i in list(live):
            try:
                fn(i)
            except Exception as e:
                drop(members[i], e)
                live.remove(i)

    in_flight = InFlight(par.max_in_flight)
    for step in range(start, steps):
        if not live:
            return
        t_step = time.perf_counter()
        batches, lrs = inputs(step)
        state_tuple, outs = compiled(state_tuple, batches, lrs)
        for i in live:
            members[i].pending.append((step, outs[i]))
        in_flight.add(outs[live[0]]["metrics"]["loss"])
        done = step + 1
        checkpoint_now = done % ckpt_every == 0 or done == steps or done in keep_steps
        if done % log_every == 0 or done == steps or checkpoint_now or done % eval_every == 0:
            each(lambda i: members[i].flush())  # syncs the device
        # a stack's step time is shared by its members: their train_time_s add up to the stack's
        dt = (time.perf_counter() - t_step) / len(members)
        for i in live:
            members[i].session_time += dt
            members[i].session_tokens += B * L
        if done % eval_every == 0 or done == steps:
            def ev(i):
                members[i].logger.log(done, {**members[i].evaluate(eval_fn, state_tuple[i], par),
                                             "flops": members[i].fpt * done * members[i].B * members[i].L}, kind="eval")
            each(ev)
        stopping = should_stop is not None and should_stop()
        if jax.process_count() > 1:
            # every process must stop at the same step (the checkpoint is a collective): agree at sync points
            sync_point = done % log_every == 0 or checkpoint_now
            stopping = par.any_process(stopping) if sync_point else False
        if checkpoint_now or stopping:
            each(lambda i: members[i].checkpoint(done, state_tuple[i]))
        if stopping and done < steps:
            status, sig = "stopped", None
            for i in live:
                status, sig = members[i].record_stop(should_stop)
            raise StopRequested(f"{status} at step {done}/{steps} ({sig or 'stop requested'}); rerun to resume", done, status, sig)
    each(lambda i: members[i].flush())
    each(lambda i: members[i].finalize(state_tuple[i], eval_fn, par, compile_time))


def load_params(run_dir: str | Path, cfg: RunConfig) -> nnx.Module:
    """The latest checkpointed model of a run (for inspection, evaluation and sampling)."""
    par = Parallel.create(cfg.parallel)
    graphdef, target, _ = build(cfg, par)
    ckpt = Checkpointer(Path(run_dir) / "checkpoints", cfg.train.keep_checkpoints, read_only=True)
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    state, _ = restore_state(ckpt, step, target)
    ckpt.close()
    return nnx.merge(graphdef, state.params, state.rest)


__all__ = ["DivergedError", "MeasurementWarning", "StopRequested", "evaluate", "load_params", "run_id_for", "stack_key", "train", "train_stack"]
