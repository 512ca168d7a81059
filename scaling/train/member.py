"""One run's side of the train loop (``Member``): its record, data, checkpoints, metrics, progress and final
evaluation. A run trained alone is a stack of one; every member of a stack keeps everything of its own."""

from __future__ import annotations

import math
import time
import traceback
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import jax
import numpy as np

from scaling.model.accounting import count_params, flops_convention, flops_per_token
from scaling.config import ConfigError, RunConfig, dump_yaml
from scaling.devices import peak_flops
from scaling.storage import storage_cause, storage_message
from scaling.parallel import Parallel
from scaling.train import record as rec
from scaling.train.logger import MetricsLogger, last_logged_step
from scaling.train.optim import lr_table
from scaling.train.state import TrainState
from scaling.train.errors import DivergedError, MeasurementWarning, StopRequested
from scaling.train.evaluate import evaluate
from scaling.train.preflight import preflight, restore_or_init


FINAL_LOSS_WINDOW = 20  # final_train_loss: mean LM loss over the last this-many steps
PROGRESS_EVERY_S = 5.0  # how often the record notes the newest step reached (for the steps a kill makes us redo)


def run_id_for(cfg: RunConfig) -> str:
    return cfg.name or rec.config_hash(cfg.to_dict())


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


class Member:
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


__all__ = ["FINAL_LOSS_WINDOW", "Member", "run_id_for", "shard_bytes"]
