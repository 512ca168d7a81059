"""Metrics to ``metrics.jsonl`` (always) and to Weights & Biases (offline by default; the run id is persisted so a
resumed run continues the same W&B run)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from scaling.config import LogConfig


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                if isinstance(x, (list, tuple)):
                    for j, y in enumerate(x):
                        out[f"{key}/{i}/{j}"] = y
                else:
                    out[f"{key}/{i}"] = x
        else:
            out[key] = v
    return out


def last_logged_step(path: Path) -> int | None:
    """The last step a metrics file holds (a line cut by a kill is skipped); None for a missing or empty file."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


class MetricsLogger:
    def __init__(self, run_dir: Path, log: LogConfig, run_id: str, config: dict, resume_step: int, enabled: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.wandb_run = None
        if not enabled:
            return
        self._truncate_after(resume_step)
        self._fh = open(self.path, "a")
        if log.wandb != "disabled":
            self.wandb_run = _init_wandb(run_dir, log, run_id, config)

    def _truncate_after(self, step: int) -> None:
        """A resumed run drops lines logged after its checkpoint, so the file matches an uninterrupted run."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("step", 0) <= step:
                keep.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in keep))
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        rec = {"step": step, "kind": kind, **metrics}
        self._fh.write(json.dumps(rec, default=float, allow_nan=True) + "\n")
        self._fh.flush()
        if self.wandb_run is not None:
            flat = {f"{kind}/{k}": v for k, v in _flatten(metrics).items() if isinstance(v, (int, float)) and math.isfinite(v)}
            self.wandb_run.log(flat, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            for k, v in values.items():
                self.wandb_run.summary[k] = v

    def close(self, exit_code: int = 0) -> None:
        if not self.enabled:
            return
        self._fh.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None


def _init_wandb(run_dir: Path, log: LogConfig, run_id: str, config: dict):
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    id_file = run_dir / "wandb_id"
    if id_file.exists():
        wandb_id = id_file.read_text().strip()
    else:
        wandb_id = f"{run_id}-{os.urandom(3).hex()}"
        id_file.write_text(wandb_id)
    mode = os.environ.get("WANDB_MODE", log.wandb) if log.wandb == "offline" else log.wandb
    import jax

    return wandb.init(
        project=log.wandb_project,
        group=log.wandb_group,
        tags=list(log.wandb_tags),
        name=log.wandb_name or run_id,
        id=wandb_id,
        resume="allow",
        dir=str(run_dir),
        mode=mode,
        config=config,
        # a new run even when one is active in this process: the members of a stack each log to their own run (the
        # default, "return_previous", handed every member the first one's run, which the first member then finished)
        reinit="create_new",
        # the commit and lock file are in the config (``code``), from the toolkit's own checkout, not the cwd's;
        # system stats (GPU/TPU utilisation, memory) on accelerators, off on a CPU where they only cost time
        settings=wandb.Settings(console="off", quiet=True, disable_git=True, save_code=False,
                                x_disable_stats=jax.default_backend() == "cpu"),
    )
