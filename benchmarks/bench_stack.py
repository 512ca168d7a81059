"""Stacked models against the same runs one after another: M runs of one shape that differ only in seed, trained
by ``scaling.train.train`` in turn and by ``scaling.train.loop.train_stack`` in one compiled step (the real loop:
data, metrics, checkpoints, evaluation). Prints the training tokens/s of both (tokens of all runs / the sum of
their recorded train_time_s) and the wall time, then checks that every stacked run equals its run alone.

    python benchmarks/bench_stack.py                      # 4 models of 29k parameters, seq 64, batch 16
    python benchmarks/bench_stack.py --models 8 --d-model 64 --steps 300
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    from scaling.model.accounting import count_params
    from scaling.config import load_config
    from scaling.model.presets import head_dim_for_width
    from scaling.train import train
    from scaling.train.loop import train_stack

    def cfg(seed: int):
        return load_config(None, [
            "data.source=synthetic", f"model.d_model={a.d_model}", f"model.n_layers={a.layers}",
            f"model.n_heads={max(1, a.d_model // head_dim_for_width(a.d_model))}", f"model.seq_len={a.seq}",
            f"train.batch_size={a.batch}", f"train.tokens={a.batch * a.seq * a.steps}", f"train.seed={seed}",
            "train.eval_tokens=8192", "log.wandb=disabled", "log.progress=false", "train.log_every=50",
        ])

    cfgs = [cfg(s) for s in range(a.models)]
    tokens = a.models * a.batch * a.seq * a.steps
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train(cfg(10_000), tmp / "warm")  # compile once into the persistent cache for both sides
        t = time.perf_counter()
        alone = [train(c, tmp / f"alone{i}") for i, c in enumerate(cfgs)]
        wall_alone = time.perf_counter() - t
        t = time.perf_counter()
        stacked = train_stack(cfgs, [tmp / f"stack{i}" for i in range(a.models)])
        wall_stack = time.perf_counter() - t
    tps_alone = tokens / sum(r["train_time_s"] for r in alone)
    tps_stack = tokens / sum(r["train_time_s"] for r in stacked)
    same = all(s["params_digest"] == r["params_digest"] and s["final_eval_loss"] == r["final_eval_loss"] for s, r in zip(stacked, alone))
    print(f"{a.models} models of {count_params(cfgs[0].model).total:,} parameters, seq {a.seq}, batch {a.batch}, {a.steps} steps each")
    print(f"one after another: {tps_alone:,.0f} tok/s (wall {wall_alone:.1f} s)")
    print(f"stacked:           {tps_stack:,.0f} tok/s (wall {wall_stack:.1f} s)")
    print(f"stacked / one after another: {tps_stack / tps_alone:.2f}x tokens/s, {wall_alone / wall_stack:.2f}x wall; "
          f"every stacked run bit-identical to its run alone: {same}")


if __name__ == "__main__":
    main()
