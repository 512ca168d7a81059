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
from scaling.parallel import InFlight, Parallel, enable_compilation_cache, maybe_initialize_distributed
from scaling.train import record as rec
from scaling.train.checkpoint import Checkpointer
from scaling.train.logger import MetricsLogger
from scaling.train.optim import lr_table
from scaling.train.state import TrainState, build, init_state, restore_init_from, restore_state
from scaling.train.step import make_eval_step, make_train_step

FINAL_LOSS_WINDOW = 20  # final_train_loss: mean LM loss over the last this-many steps
PROGRESS_EVERY_S = 5.0  # how often the record notes the newest step reached (for the steps a kill makes us redo)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite (``step``: the first optimizer step whose metrics were not finite)."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


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


def preflight(cfg: RunConfig, run_dir: Path, par: Parallel, train_cfg: dict, resume_anyway: bool, warn) -> Preflight:
    """Phase 1: everything that can refuse the run, before the record is touched."""
    L, B, steps = cfg.model.seq_len, cfg.train.batch_size, cfg.steps
    par.check_batch(B // cfg.train.grad_accum, "train.batch_size / train.grad_accum")
    ds = build_dataset(cfg.data, cfg.model)
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
    eval_micro = cfg.eval_batch_size
    par.check_batch(eval_micro, "train.eval_batch_size")
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.train.keep_checkpoints, cfg.train.keep_steps)
    latest = ckpt.latest_step()
    carried: list[str] = []
    if latest is not None:
        meta = ckpt.read_meta(latest)
        mismatch = check_resume(meta, latest, train_cfg, steps, run_dir, resume_anyway)
        carried = list(meta.get("carried_warnings", [])) + ([mismatch] if mismatch else [])
        for w in carried:  # warnings about how the checkpoint came about stay with the run
            warn(w)
    return Preflight(ds, epochs, eval_windows, eval_micro, ckpt, latest, carried=carried)


def restore_or_init(cfg: RunConfig, pre: Preflight, target: TrainState, shardings: TrainState) -> tuple[TrainState, dict, str]:
    """Phase 3: (state, loop state, where it came from)."""
    fresh_loop = {"recent_losses": [], "train_time_s": 0.0, "tokens_per_sec": None}
    if pre.latest is not None:
        state, loop_state = restore_state(pre.ckpt, pre.latest, target)
        return state, loop_state, f"checkpoint {pre.latest}"
    if cfg.train.init_from:
        state, meta = restore_init_from(cfg, target)
        # the source's recent losses describe the same trajectory up to its step: keep them for the final mean
        return state, {**fresh_loop, "recent_losses": list(meta.get("recent_losses", []))}, f"init_from {cfg.train.init_from}"
    return init_state(cfg, shardings), fresh_loop, "init"


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
    run_dir = Path(run_dir)
    maybe_initialize_distributed()  # before any other JAX call
    run_dir.mkdir(parents=True, exist_ok=True)
    enable_compilation_cache(cfg.data.cache_dir)
    is_main = jax.process_index() == 0
    par = Parallel.create(cfg.parallel)
    B, L, steps = cfg.train.batch_size, cfg.model.seq_len, cfg.steps
    run_id = run_id or run_id_for(cfg)
    config_dict = cfg.to_dict()
    counts = count_params(cfg.model)
    fpt = flops_per_token(cfg.model, cfg.train.flops_attention)
    D = steps * B * L
    record: dict[str, Any] = rec.read_record(run_dir) or {}
    if record.get("status") == "completed" and rec.config_hash(record.get("config", {})) == rec.config_hash(config_dict):
        return record  # already done: nothing to train

    warnings_: list[str] = []

    def warn(msg: str) -> None:
        warnings_.append(msg)
        if is_main:
            warnings.warn(f"run {run_id}: {msg}", MeasurementWarning, stacklevel=3)

    train_cfg = rec.training_config(config_dict)
    try:
        pre = preflight(cfg, run_dir, par, train_cfg, resume_anyway, warn)
    except ConfigError as e:
        if not record and is_main:  # leave a record for sweeps; an existing one is left as it was
            rec.write_json_atomic(run_dir / "record.json", {
                "schema": rec.SCHEMA_VERSION, "run_id": run_id, "status": "failed", "config": config_dict,
                "error": f"ConfigError: {e}", "started_at": rec.now(), "updated_at": rec.now(),
            })
        raise
    graphdef, target, shardings = build(cfg, par)  # phase 2: layout only, nothing allocated

    record.update(
        {
            "schema": rec.SCHEMA_VERSION,
            "run_id": run_id,
            "name": cfg.name,
            "status": "running",
            "config": config_dict,
            **counts.as_dict(),
            "n_experts": cfg.model.moe.n_experts if cfg.model.moe else None,
            "top_k": cfg.model.moe.top_k if cfg.model.moe else None,
            "granularity": cfg.model.moe.granularity if cfg.model.moe else None,
            "kind": "moe" if cfg.model.moe else "dense",
            "tokens": D,
            "steps": steps,
            "batch_size": B,
            "seq_len": L,
            "epochs": pre.epochs,
            "flops_per_token": fpt,
            "flops": fpt * D,
            "flops_convention": flops_convention(cfg.train.flops_attention),
            "seed": cfg.train.seed,
            "init_seed": cfg.init_seed,
            "data_seed": cfg.data_seed,
            "mesh": par.sizes,
            "data": pre.ds.describe(),
            "versions": rec.library_versions(),
            **rec.device_info(),
            "warnings": warnings_,
            "error": None,
        }
    )
    record.pop("diverged_at_step", None)
    record.pop("stop_signal", None)
    record.setdefault("started_at", rec.now())

    def write_record(**updates):
        record.update(updates, updated_at=rec.now())
        if is_main:
            rec.write_json_atomic(run_dir / "record.json", record)

    if is_main:
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    write_record()

    logger = None
    ckpt = pre.ckpt
    try:
        state, loop_state, origin = restore_or_init(cfg, pre, target, shardings)  # phase 3
        start = int(jax.device_get(state.step))
        # an earlier attempt that got past its last checkpoint (killed, or preempted without grace) lost those
        # steps: they are trained again now, and the record counts them (the cost of checkpoint_every)
        reached = record.get("reached_step")
        restarted = reached is not None or pre.latest is not None
        recomputed = max(0, int(reached or 0) - start)
        recent = deque(loop_state["recent_losses"], maxlen=FINAL_LOSS_WINDOW)
        logger = MetricsLogger(
            run_dir,
            cfg.log,
            run_id,
            {**config_dict, "run_id": run_id, "N": counts.total, "N_active": counts.active, "D": D, "C": fpt * D},
            resume_step=start,
            enabled=is_main,
        )
        write_record(
            resumed_from_step=start if pre.latest is not None and start else None,
            initialized_from=origin,
            reached_step=start,
            restarts=int(record.get("restarts") or 0) + int(restarted),
            steps_recomputed=int(record.get("steps_recomputed") or 0) + recomputed,
            preemptions=int(record.get("preemptions") or 0),
        )
        last_progress_write = time.monotonic()

        # phase 4: steps
        step_fn = make_train_step(graphdef, cfg, par, shardings)
        eval_fn = make_eval_step(graphdef, par.replicated)
        rows = par.local_rows(B)
        lrs = lr_table(cfg.train, steps, cfg.train.lr)  # the schedule, step by step: not compiled into the step

        def get_batch(step: int) -> jax.Array:
            return par.put_batch(pre.ds.train_batch(step, B, L, cfg.data_seed, rows), (B, L + 1))

        def evaluate_now(state: TrainState) -> dict:
            with par.activation_rules():  # traced on first use
                return evaluate(eval_fn, state.params, state.rest, pre.eval_windows, pre.eval_micro, par, pre.ds.bytes_per_token)

        t0 = time.perf_counter()
        with par.activation_rules():
            compiled = step_fn.lower(state, get_batch(start), lrs[min(start, steps - 1)]).compile()
        compile_time = time.perf_counter() - t0
        # the kernel is passed explicitly to jax.nn.dot_product_attention, which runs it or raises: no fallback to hide
        write_record(attention_kernel=attention_implementation(cfg.model), attention_requested=cfg.model.attention)

        eval_every = cfg.train.eval_every or steps  # 0: only the final evaluation
        ckpt_every = _every(cfg.train.checkpoint_every, steps)
        keep_steps = set(cfg.train.keep_steps)
        log_every = cfg.train.log_every
        pending: list[tuple[int, Any]] = []
        last_eval: dict = {}
        session_tokens, session_time = 0, 0.0
        task = progress.add_task(run_id, total=steps, completed=start, loss=float("nan"), tps=0.0) if progress else None

        def flush() -> None:
            """Pull the pending steps' metrics to the host (a device sync): check them, log every log_every-th."""
            nonlocal pending, last_progress_write
            if not pending:
                return
            fetched = jax.device_get([m for _, m in pending])
            for (s, _), out in zip(pending, fetched):
                m = {k: float(v) for k, v in out["metrics"].items()}
                if first_non_finite(m):
                    pending = []
                    raise DivergedError(f"non-finite training loss at step {s + 1}: {m}", step=s + 1)
                recent.append(m["lm_loss"])
                if (s + 1) % log_every == 0 or s + 1 == steps:
                    tps = session_tokens / session_time if session_time > 0 else None
                    logger.log(s + 1, {**m, **_moe_metrics(out["aux"]), "tokens": (s + 1) * B * L, "tokens_per_sec": tps})
                    if task is not None:
                        progress.update(task, completed=s + 1, loss=m["lm_loss"], tps=tps or 0.0)
            pending = []
            if time.monotonic() - last_progress_write >= PROGRESS_EVERY_S:
                last_progress_write = time.monotonic()
                write_record(reached_step=s + 1)

        in_flight = InFlight(par.max_in_flight)
        for step in range(start, steps):
            t_step = time.perf_counter()
            batch = get_batch(step)
            state, out = compiled(state, batch, lrs[step])
            pending.append((step, out))
            in_flight.add(out["metrics"]["loss"])
            done = step + 1
            checkpoint_now = done % ckpt_every == 0 or done == steps or done in keep_steps
            if done % log_every == 0 or done == steps or checkpoint_now or done % eval_every == 0:
                flush()  # syncs the device
            session_time += time.perf_counter() - t_step
            session_tokens += B * L
            if done % eval_every == 0 or done == steps:
                last_eval = evaluate_now(state)
                logger.log(done, last_eval, kind="eval")
            stopping = should_stop is not None and should_stop()
            if jax.process_count() > 1:
                # every process must stop at the same step (the checkpoint is a collective): agree at sync points
                sync_point = done % log_every == 0 or checkpoint_now
                stopping = par.any_process(stopping) if sync_point else False
            if checkpoint_now or stopping:
                flush()
                loop_state = {
                    "config_hash": rec.training_hash(config_dict),
                    "train_config": train_cfg,
                    "carried_warnings": pre.carried,
                    "recent_losses": list(recent),
                    "train_time_s": loop_state["train_time_s"] + session_time,
                    "tokens_per_sec": session_tokens / session_time if session_time else loop_state["tokens_per_sec"],
                }
                session_time, session_tokens = 0.0, 0
                ckpt.save(done, state.as_dict(), loop_state)
                # saves commit asynchronously: report the newest *committed* checkpoint
                write_record(last_checkpoint_step=ckpt.committed_step, progress=done / steps, reached_step=done)
            if stopping and done < steps:
                ckpt.close()  # waits until the stop checkpoint is committed
                sig = getattr(should_stop, "signal", None)
                status = getattr(should_stop, "status", "stopped")
                write_record(
                    last_checkpoint_step=ckpt.committed_step,
                    stop_signal=sig,
                    preemptions=record["preemptions"] + int(status == "preempted"),
                )
                raise StopRequested(f"{status} at step {done}/{steps} ({sig or 'stop requested'}); rerun to resume", done, status, sig)
        flush()
        ckpt.close()

        # phase 5: finalize
        record["last_checkpoint_step"] = ckpt.committed_step
        if not last_eval:  # resumed from the final checkpoint (killed before the record was completed)
            last_eval = evaluate_now(state)
        train_time = loop_state["train_time_s"]
        final = {
            "status": "completed",
            "final_train_loss": float(np.mean(recent)) if recent else None,
            "final_train_loss_window": len(recent),
            "final_eval_loss": last_eval.get("eval_loss"),
            "final_eval_loss_stderr": last_eval.get("eval_loss_stderr"),
            "final_eval_bpb": last_eval.get("eval_bpb"),
            "eval_tokens": last_eval.get("eval_tokens"),
            "eval_windows": last_eval.get("eval_windows"),
            "entropy_rate": getattr(pre.ds, "entropy_rate", None),
            "tokens_per_sec": loop_state["tokens_per_sec"],
            # train_time_s sums the checkpointed sessions, which together trained every step once
            "step_time_s": train_time / steps if train_time else None,
            "compile_time_s": compile_time,
            "train_time_s": train_time,
            "wall_time_s": (record.get("wall_time_s") or 0.0) + (time.perf_counter() - t0),
            "params_digest": rec.params_digest(state.params),
            "param_bytes_per_device": shard_bytes(state.params),
            "opt_state_bytes_per_device": shard_bytes(state.opt),
            "progress": 1.0,
        }
        write_record(**final)
        logger.summary({k: v for k, v in final.items() if isinstance(v, (int, float))})
        logger.close(0)
        logger = None
        return record
    except DivergedError as e:
        write_record(status="diverged", error=str(e), diverged_at_step=e.step)
        raise
    except StopRequested as e:
        write_record(status=e.status, error=None)
        raise
    except BaseException as e:
        write_record(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8))
        raise
    finally:
        if logger is not None:
            logger.close(1)


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


__all__ = ["DivergedError", "MeasurementWarning", "StopRequested", "evaluate", "load_params", "run_id_for", "train"]
