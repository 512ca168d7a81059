"""The training loop: one run directory in, ``record.json`` + metrics + checkpoints out; rerunning resumes.

Run directory layout::

    RUN_DIR/config.yaml     resolved config
    RUN_DIR/record.json     the run record (scaling.train.record), rewritten atomically
    RUN_DIR/metrics.jsonl   train / eval metrics, one JSON object per line
    RUN_DIR/checkpoints/    orbax checkpoints (params, optimizer state, loop state)
    RUN_DIR/wandb/          the W&B run (offline by default)
"""

from __future__ import annotations

import math
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from scaling.accounting import count_params, flops_convention, flops_per_token
from scaling.config import RunConfig, dump_yaml
from scaling.data import build_dataset
from scaling.model import Transformer
from scaling.parallel import DataParallel, enable_compilation_cache, maybe_initialize_distributed
from scaling.train import record as rec
from scaling.train.checkpoint import Checkpointer
from scaling.train.logger import MetricsLogger
from scaling.train.optim import make_optimizer
from scaling.train.step import make_eval_step, make_train_step

FINAL_LOSS_WINDOW = 20  # final_train_loss: mean LM loss over the last this-many steps


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class StopRequested(Exception):
    """A stop was requested (SIGTERM / Ctrl-C); the run checkpointed and can be resumed."""


def _every(n: int, steps: int) -> int:
    return n if n > 0 else max(1, steps // 10)


def run_id_for(cfg: RunConfig) -> str:
    return cfg.name or rec.config_hash(cfg.to_dict())


def evaluate(eval_fn, params, rest, ds, dp: DataParallel, cfg: RunConfig) -> dict:
    B, L = cfg.train.batch_size, cfg.model.seq_len
    losses = []
    for i in range(cfg.train.eval_batches):
        batch = ds.eval_batch(i, B, L)[dp.local_rows(B)]
        losses.append(eval_fn(params, rest, dp.put_batch(batch, (B, L + 1))))
    arr = np.asarray(jax.device_get(losses), np.float64)
    out = {
        "eval_loss": float(arr.mean()),
        "eval_loss_stderr": float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else float("nan"),
    }
    if ds.bytes_per_token:
        out["eval_bpb"] = out["eval_loss"] / math.log(2) / ds.bytes_per_token
    return out


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


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    progress: Any = None,
    should_stop: Callable[[], bool] | None = None,
    run_id: str | None = None,
) -> dict:
    """Train (or resume) the run in ``run_dir``; returns the final record. Raises DivergedError on NaN/inf."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    maybe_initialize_distributed()
    enable_compilation_cache(cfg.data.cache_dir)
    is_main = jax.process_index() == 0
    dp = DataParallel.create()
    B, L, steps = cfg.train.batch_size, cfg.model.seq_len, cfg.steps
    dp.check_batch(B // cfg.train.grad_accum, "train.batch_size / train.grad_accum")
    run_id = run_id or run_id_for(cfg)
    config_dict = cfg.to_dict()

    counts = count_params(cfg.model)
    fpt = flops_per_token(cfg.model, cfg.train.flops_attention)
    D = steps * B * L
    record: dict[str, Any] = rec.read_record(run_dir) or {}
    if record.get("status") == "completed" and rec.config_hash(record.get("config", {})) == rec.config_hash(config_dict):
        return record  # already done: nothing to train
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
            "kind": "moe" if cfg.model.moe else "dense",
            "tokens": D,
            "steps": steps,
            "batch_size": B,
            "seq_len": L,
            "flops_per_token": fpt,
            "flops": fpt * D,
            "flops_convention": flops_convention(cfg.train.flops_attention),
            "seed": cfg.train.seed,
            "versions": rec.library_versions(),
            **rec.device_info(),
            "error": None,
        }
    )
    record.setdefault("started_at", rec.now())

    def write_record(**updates):
        record.update(updates, updated_at=rec.now())
        if is_main:
            rec.write_json_atomic(run_dir / "record.json", record)

    if is_main:
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    write_record()

    logger = None
    try:
        ds = build_dataset(cfg.data, cfg.model)
        record["data"] = ds.describe()
        model = Transformer(cfg.model, rngs=nnx.Rngs(cfg.train.seed))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        del model
        tx, schedule = make_optimizer(cfg.train, steps)
        opt_state = tx.init(params)
        params, rest, opt_state = dp.replicate((params, rest, opt_state))

        ckpt = Checkpointer(run_dir / "checkpoints", cfg.train.keep_checkpoints)
        start, loop_state = 0, {"recent_losses": [], "train_time_s": 0.0, "tokens_per_sec": None}
        latest = ckpt.latest_step()
        if latest is not None:
            state, loop_state = ckpt.restore(latest, {"params": params, "rest": rest, "opt": opt_state})
            params, rest, opt_state = state["params"], state["rest"], state["opt"]
            start = latest
        recent = deque(loop_state["recent_losses"], maxlen=FINAL_LOSS_WINDOW)
        logger = MetricsLogger(
            run_dir,
            cfg.log,
            run_id,
            {**config_dict, "run_id": run_id, "N": counts.total, "N_active": counts.active, "D": D, "C": fpt * D},
            resume_step=start,
            enabled=is_main,
        )
        write_record(resumed_from_step=start if start else None)

        step_fn = make_train_step(graphdef, tx, schedule, cfg)
        eval_fn = make_eval_step(graphdef)
        rows = dp.local_rows(B)

        def get_batch(step: int) -> jax.Array:
            return dp.put_batch(ds.train_batch(step, B, L, cfg.train.seed, rows), (B, L + 1))

        t0 = time.perf_counter()
        compiled = step_fn.lower(params, rest, opt_state, get_batch(start)).compile()
        compile_time = time.perf_counter() - t0

        eval_every = _every(cfg.train.eval_every, steps)
        ckpt_every = _every(cfg.train.checkpoint_every, steps)
        log_every = cfg.train.log_every
        pending: list[tuple[int, Any]] = []
        last_eval: dict = {}
        session_tokens, session_time = 0, 0.0
        task = progress.add_task(run_id, total=steps, completed=start, loss=float("nan"), tps=0.0) if progress else None

        def flush() -> None:
            nonlocal pending
            if not pending:
                return
            fetched = jax.device_get([m for _, m in pending])
            for (s, _), out in zip(pending, fetched):
                m = {k: float(v) for k, v in out["metrics"].items()}
                if not all(math.isfinite(v) for v in m.values()):
                    pending = []
                    raise DivergedError(f"non-finite training loss at step {s + 1}: {m}")
                recent.append(m["lm_loss"])
                if (s + 1) % log_every == 0 or s + 1 == steps:
                    tps = session_tokens / session_time if session_time > 0 else None
                    logger.log(s + 1, {**m, **_moe_metrics(out["aux"]), "tokens": (s + 1) * B * L, "tokens_per_sec": tps})
                    if task is not None:
                        progress.update(task, completed=s + 1, loss=m["lm_loss"], tps=tps or 0.0)
            pending = []

        step = start
        for step in range(start, steps):
            t_step = time.perf_counter()
            batch = get_batch(step)
            params, rest, opt_state, out = compiled(params, rest, opt_state, batch)
            pending.append((step, out))
            done = step + 1
            if done % log_every == 0 or done == steps or done % ckpt_every == 0 or done % eval_every == 0:
                flush()  # syncs the device
            session_time += time.perf_counter() - t_step
            session_tokens += B * L
            if done % eval_every == 0 or done == steps:
                last_eval = evaluate(eval_fn, params, rest, ds, dp, cfg)
                logger.log(done, last_eval, kind="eval")
            stopping = should_stop is not None and should_stop()
            if done % ckpt_every == 0 or done == steps or stopping:
                flush()
                loop_state = {
                    "recent_losses": list(recent),
                    "train_time_s": loop_state["train_time_s"] + session_time,
                    "tokens_per_sec": session_tokens / session_time if session_time else loop_state["tokens_per_sec"],
                }
                session_time, session_tokens = 0.0, 0
                ckpt.save(done, {"params": params, "rest": rest, "opt": opt_state}, loop_state)
                # saves commit asynchronously: report the newest *committed* checkpoint
                write_record(last_checkpoint_step=ckpt.committed_step, progress=done / steps)
            if stopping and done < steps:
                ckpt.close()
                write_record(last_checkpoint_step=ckpt.committed_step)
                raise StopRequested(f"stopped at step {done}/{steps}; rerun to resume")
        flush()
        ckpt.close()
        record["last_checkpoint_step"] = ckpt.committed_step
        if not last_eval:  # killed after the final checkpoint, before the record was completed
            last_eval = evaluate(eval_fn, params, rest, ds, dp, cfg)

        train_time = loop_state["train_time_s"]
        final = {
            "status": "completed",
            "final_train_loss": float(np.mean(recent)) if recent else None,
            "final_train_loss_window": len(recent),
            "final_eval_loss": last_eval.get("eval_loss"),
            "final_eval_loss_stderr": last_eval.get("eval_loss_stderr"),
            "final_eval_bpb": last_eval.get("eval_bpb"),
            "entropy_rate": getattr(ds, "entropy_rate", None),
            "tokens_per_sec": loop_state["tokens_per_sec"],
            # train_time_s sums the checkpointed sessions, which together trained every step once
            "step_time_s": train_time / steps if train_time else None,
            "compile_time_s": compile_time,
            "train_time_s": train_time,
            "wall_time_s": (record.get("wall_time_s") or 0.0) + (time.perf_counter() - t0),
            "params_digest": rec.params_digest(params),
            "progress": 1.0,
        }
        write_record(**final)
        logger.summary({k: v for k, v in final.items() if isinstance(v, (int, float))})
        logger.close(0)
        logger = None
        return record
    except DivergedError as e:
        write_record(status="diverged", error=str(e), diverged_at_step=step + 1 if "step" in locals() else None)
        raise
    except StopRequested:
        write_record(status="running", error=None)
        raise
    except BaseException as e:
        write_record(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8))
        raise
    finally:
        if logger is not None:
            logger.close(1)


def load_params(run_dir: str | Path, cfg: RunConfig):
    """The latest checkpointed parameters of a run, as an NNX model (for inspection and sampling)."""
    model = Transformer(cfg.model, rngs=nnx.Rngs(cfg.train.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, _ = make_optimizer(cfg.train, cfg.steps)
    ckpt = Checkpointer(Path(run_dir) / "checkpoints", cfg.train.keep_checkpoints)
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    state, _ = ckpt.restore(step, {"params": params, "rest": rest, "opt": tx.init(params)})
    ckpt.close()
    return nnx.merge(graphdef, state["params"], state["rest"])


__all__ = ["DivergedError", "StopRequested", "evaluate", "load_params", "run_id_for", "train"]
