"""What scoring runs on part of the eval split costs: each finished branch of a sweep is scored window by window on
the whole split, and the first K windows of the split's fixed permutation (what ``train.eval_tokens = K x seq_len``
scores) are compared with it.

    python benchmarks/eval_subset.py SWEEP_DIR [--max-runs 24] [--tokens 16384 65536 262144 524288]

A subset's offset from the whole split has two parts. The part every model shares moves the fitted E and nothing
else, since every run of a sweep and its held-out run are scored on the same windows. The part that differs between
models is noise on each point (its sd across models is printed) and, where it trends with the loss, a tilt of the
fitted law (printed: the slope of the relative offset on ln loss, in % per e-fold of loss). Each model is restored
from its last checkpoint (a branch's last checkpoint is its final state) and scored on its own eval micro-batch; a
model whose first ``eval_windows`` do not reproduce its record's ``final_eval_loss`` is skipped (a check that the
restore and the windows are the run's own); the windows are scored as a run's evaluation scores them
(``scaling.train.evaluate.window_losses``). About 4.5 s a model on 2 cores for the quickstart's 1.2M-token split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling.config import load_config  # noqa: E402
from scaling.data import build_dataset  # noqa: E402
from scaling.parallel import Parallel  # noqa: E402
from scaling.train.checkpoint import Checkpointer  # noqa: E402
from scaling.train.evaluate import eval_micro_batch, window_losses  # noqa: E402
from scaling.train.state import build, restore_state  # noqa: E402
from scaling.train.step import make_eval_step  # noqa: E402


def per_window_losses(run_dir: Path, windows: np.ndarray) -> np.ndarray:
    """The run's final model's mean next-token loss on each window, float64."""
    cfg = load_config(run_dir / "config.yaml")
    par = Parallel.create(cfg.parallel)
    graphdef, target, _ = build(cfg, par)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=1, read_only=True)
    try:
        state, _ = restore_state(ckpt, ckpt.latest_step(), target)
    finally:
        ckpt.close()
    return window_losses(make_eval_step(graphdef, par.replicated), state.params, state.rest, windows, eval_micro_batch(cfg, par), par)


def main() -> int:
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax says a read-only manager saves nothing: true, and meant
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path, help="a sweep directory (runs.csv and runs/<id>/ with checkpoints)")
    ap.add_argument("--max-runs", type=int, default=24)
    ap.add_argument("--tokens", type=int, nargs="+", default=[2**14, 2**16, 2**17, 2**18, 2**19])
    args = ap.parse_args()
    table = args.sweep / "runs.csv"
    if not table.exists():
        print(f"eval_subset: {table} not found (pass a finished sweep's directory)", file=sys.stderr)
        return 2
    runs = pd.read_csv(table)
    ids = runs.loc[runs["role"] == "branch", "run_id"] if "role" in runs else runs["run_id"]
    losses, seq_len = {}, None
    for run_id in list(ids)[: args.max_runs]:
        d = args.sweep / "runs" / run_id
        cfg = load_config(d / "config.yaml")
        if seq_len is None:
            seq_len = cfg.model.seq_len
            ds = build_dataset(cfg.data, cfg.model)
            if ds.train_windows_per_epoch(seq_len) is None:
                print(f"eval_subset: {args.sweep} trains on an endless source ({cfg.data.source!r}): it has no whole split to compare with", file=sys.stderr)
                return 2
            windows, _ = ds.eval_windows(10**12, seq_len)  # the whole split, in its fixed permutation
        if not (d / "checkpoints").is_dir() or not any((d / "checkpoints").iterdir()):
            print(f"  {run_id}: no checkpoint; skipped", file=sys.stderr)
            continue
        pw = per_window_losses(d, windows)
        rec = json.loads((d / "record.json").read_text())
        own = pw[: rec.get("eval_windows") or 0]  # the windows its own final evaluation scored
        if not len(own) or abs(own.mean() - rec["final_eval_loss"]) > 1e-6:
            print(f"  {run_id}: does not reproduce its record's final_eval_loss {rec.get('final_eval_loss')}; skipped", file=sys.stderr)
            continue
        losses[run_id] = pw
        print(f"  {run_id}: N {rec['n_params']:,}, whole split {pw.mean():.4f}", flush=True)
    if len(losses) < 3:
        print(f"eval_subset: {len(losses)} scored branch runs in {args.sweep}; at least 3 are needed", file=sys.stderr)
        return 2
    P = np.stack(list(losses.values()))
    whole = P.mean(axis=1)
    print(f"\n{len(losses)} models, {P.shape[1]:,} windows of {seq_len} tokens ({P.shape[1] * seq_len:,} tokens), loss {whole.min():.3f}-{whole.max():.3f}")
    print("| tokens | share of split | shared offset | sd across models | max |.| | slope on ln loss (%/e) |")
    print("|---|---|---|---|---|---|")
    for k_tok in args.tokens:
        k = k_tok // seq_len
        if not 1 < k < P.shape[1]:
            continue
        rel = 100 * (P[:, :k].mean(axis=1) / whole - 1)
        resid = rel - rel.mean()
        slope = np.polyfit(np.log(whole), rel, 1)[0]
        print(f"| {k * seq_len:,} | {k / P.shape[1]:.1%} | {rel.mean():+.3f}% | {resid.std(ddof=1):.3f}% | {np.abs(resid).max():.3f}% | {slope:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
