"""The run record: a small, stable JSON schema every run writes (atomically) and the analysis side reads.

Fields (schema 1): run_id, status (running | completed | failed | diverged), name, config (the resolved run config),
n_params, n_params_nonembedding, n_params_active, n_params_active_nonembedding, n_experts, top_k, tokens (D),
steps, flops (C), flops_per_token, flops_convention, final_train_loss, final_eval_loss, final_eval_loss_stderr,
final_eval_bpb, tokens_per_sec, step_time_s, compile_time_s, wall_time_s, device_kind, device_count,
process_count, seed, data (kind, fingerprint, ...), library versions, params_digest, error, diverged_at_step,
started_at, updated_at.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
STATUSES = ("running", "completed", "failed", "diverged", "preempted", "stopped")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    from scaling.storage import write_atomic

    write_atomic(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


class RecordDamaged(ValueError):
    """A ``record.json`` that cannot be read (named, with the reason): never used, never silently replaced."""


def read_record(run_dir: str | Path) -> dict | None:
    """The run's record, None when it has none; ``RecordDamaged`` (one line naming the file) when it is not a
    readable JSON object."""
    p = Path(run_dir) / "record.json"
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise RecordDamaged(f"{p} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    try:
        out = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordDamaged(f"{p} is damaged ({'empty' if not text.strip() else f'not JSON: {e}'}); move it away to run this run again") from None
    if not isinstance(out, dict):
        raise RecordDamaged(f"{p} is damaged (a JSON {type(out).__name__}, not an object); move it away to run this run again")
    problem = _schema_problem(out)
    if problem:
        raise RecordDamaged(f"{p} is damaged ({problem}); move it away to run this run again")
    return out


_NUMBERS = ("n_params", "n_params_nonembedding", "n_params_active", "tokens", "steps", "epochs", "flops", "flops_per_token",
            "final_train_loss", "final_eval_loss", "final_eval_loss_stderr", "final_eval_bpb", "eval_tokens", "eval_windows",
            "tokens_per_sec", "step_time_s", "compile_time_s", "train_time_s", "wall_time_s", "device_count", "process_count",
            "seed", "diverged_at_step", "last_checkpoint_step", "reached_step", "preemptions", "restarts", "steps_recomputed",
            "progress", "stack_size", "resumed_from_step")


def _schema_problem(rec: dict) -> str | None:
    """What makes a record unusable: a status that is not one, a number field that is not a number, a config or
    warnings of the wrong type (None when it is fine; fields it does not know are left alone)."""
    status = rec.get("status")
    if status is not None and status not in STATUSES:
        return f"status {status!r} is not one of {', '.join(STATUSES)}"
    for k in _NUMBERS:
        v = rec.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"{k} is {v!r:.60}, not a number"
    for k, t in (("config", dict), ("warnings", list), ("data", dict), ("run_id", str), ("error", str)):
        v = rec.get(k)
        if v is not None and not isinstance(v, t):
            return f"{k} is {v!r:.60}, not a {t.__name__}"
    if not all(isinstance(w, str) for w in rec.get("warnings") or []):
        return "warnings holds something that is not text"
    return None


def read_record_or_damaged(run_dir: str | Path) -> dict | None:
    """``read_record`` for a sweep: a damaged record reads as ``{"status": "damaged", "error": ...}`` (reported,
    skipped), so one bad file does not stop the sweep."""
    try:
        return read_record(run_dir)
    except RecordDamaged as e:
        return {"status": "damaged", "error": str(e)}


# Fields added after runs were recorded: hashed only when set away from their default, so the ids of earlier runs
# (and of every run that leaves the field alone) do not change.
HASHED_WHEN_SET = {
    ("model", "attention"): "auto",
    ("data", "eval_source"): None,
    ("data", "vocab_size"): None,
    ("data", "bpe_sample_bytes"): 128 * 2**20,
    ("data", "eos_token"): None,
    ("model", "parametrization"): "sp",
    ("model", "mup_base_width"): None,
    ("model", "mup_base_head_dim"): None,
}


def _drop_unset(d: dict) -> dict:
    out = dict(d)
    for (section, key), default in HASHED_WHEN_SET.items():
        if isinstance(out.get(section), dict) and out[section].get(key, default) == default:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def config_hash(config_dict: dict) -> str:
    """A stable id for a resolved run config (logging and the device mesh excluded: they do not change the run)."""
    relevant = {k: v for k, v in config_dict.items() if k not in ("log", "name", "parallel")}
    relevant = _drop_unset(relevant)
    blob = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Fields that never change a run's trained parameters: what is logged, how often it is evaluated or checkpointed,
# how many held-out tokens score it, the epoch cap (a refusal, not a change) and which checkpoints are pinned.
# The device mesh (``parallel``) changes only float reduction order, and a checkpoint restores onto any mesh.
RESUME_NEUTRAL = {
    "train": ("eval_every", "eval_tokens", "eval_batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "keep_steps"),
    "data": ("max_epochs", "cache_dir"),
}


def training_config(config_dict: dict) -> dict:
    """The part of a resolved config that determines the trained parameters (compared before resuming)."""
    out = _drop_unset({k: v for k, v in config_dict.items() if k not in ("log", "name", "parallel")})
    for section, names in RESUME_NEUTRAL.items():
        if section in out:
            out[section] = {k: v for k, v in out[section].items() if k not in names}
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def training_hash(config_dict: dict) -> str:
    return hashlib.sha256(json.dumps(training_config(config_dict), sort_keys=True).encode()).hexdigest()[:12]


def diff_configs(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``['train.lr 0.001 -> 0.002', ...]``: the dotted fields that differ between two config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_configs(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {a!r} -> {b!r}")
    return out


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The code that trained: the git commit of this checkout (and whether it had uncommitted changes) and the
    sha256 of its ``uv.lock`` (the exact library versions), where they exist."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    out: dict = {"git_commit": None, "git_dirty": None, "uv_lock_sha256": None}
    try:
        out["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip() or None
        if out["git_commit"]:
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
            out["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    lock = root / "uv.lock"
    if lock.is_file():
        out["uv_lock_sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()
    return out


def library_versions() -> dict:
    import flax
    import jax
    import optax
    import orbax.checkpoint as ocp

    out = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}
    out["orbax_checkpoint"] = getattr(ocp, "__version__", "?")
    try:
        import wandb

        out["wandb"] = wandb.__version__
    except ImportError:  # pragma: no cover
        pass
    return out | code_version()


def device_info() -> dict:
    import jax

    d = jax.devices()[0]
    return {
        "device_kind": d.device_kind,
        "platform": d.platform,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
    }


def params_digest(tree: Any) -> str:
    """sha256 over every parameter's bytes in tree order: equal digests mean bit-identical parameters, whatever the
    mesh and the number of processes. A parameter split across processes (fsdp or expert axes spanning hosts) is
    gathered leaf by leaf from the shards each process owns (a collective: every process calls this), so host
    memory holds one full leaf at a time."""
    import jax
    from jax.experimental import multihost_utils

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return h.hexdigest()[:16]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
