"""Learning-rate transfer across width: sp against muP (``model.parametrization``), on the quickstart's ladder.

    python benchmarks/mup_transfer.py [--widths 16 32 64 128] [--steps 600] [--seeds 1] [--out table.md]

For each parametrization and width, a grid of peak learning rates sqrt(2) apart is trained (one compiled step per
width: the lrs train together, ``train_stack``) on the default corpus with the quickstart's shape family (two
layers, heads of 8 dims), batch 16 x 64 tokens, the same number of steps at every width, warmup 100 steps and a
cosine decay. muP's base is the smallest width (where it equals sp exactly). Printed: the final eval loss of every
(width, lr), the best lr per width (the grid point, and the minimum of a parabola through the best point and its
two neighbours in log lr), and the drift of the best lr from the smallest to the largest width in grid steps. The
goal: muP's best lr at 8x the base width within one sqrt(2) step of the base's.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.lr_law import best_lr as parabola_best_lr  # noqa: E402
from scaling.config import load_config  # noqa: E402
from scaling.train.loop import train_stack  # noqa: E402


def grid(lo: float, n: int) -> list[float]:
    return [lo * 2 ** (k / 2) for k in range(n)]


def run(parametrization: str, width: int, base: int, lrs: list[float], steps: int, seed: int, workdir: Path) -> list[float]:
    over = [
        f"model.d_model={width}", "model.n_layers=2", f"model.n_heads={max(1, width // 8)}", "model.seq_len=64",
        "model.vocab_size=256", "train.batch_size=16", f"train.tokens={16 * 64 * steps}", "train.warmup_steps=100",
        "train.schedule=cosine", "train.eval_tokens=65536", "train.eval_every=1000000000", "train.log_every=100",
        f"train.seed={seed}", "log.wandb=disabled", "log.progress=false", "data.eval_fraction=0.04",
    ]
    if parametrization == "mup":
        over += ["model.parametrization=mup", f"model.mup_base_width={base}", "model.mup_base_head_dim=8"]
    cfgs = [load_config(None, over + [f"train.lr={lr}"]) for lr in lrs]
    dirs = [workdir / f"{parametrization}-{width}-{seed}-{i}" for i in range(len(lrs))]
    recs = train_stack(cfgs, dirs)
    return [r.get("final_eval_loss", math.nan) if r.get("status") == "completed" else math.inf for r in recs]


def best_lr(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """(best grid lr, the minimum of a parabola in log lr through the best point and up to two neighbours each side:
    ``analysis.lr_law.best_lr``, what ``scaling sweep fit-lr`` uses; the grid lr at an edge)."""
    return lrs[int(np.nanargmin(losses))], parabola_best_lr(lrs, losses)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr-min", type=float, default=2e-3)
    ap.add_argument("--n-lr", type=int, default=13)
    ap.add_argument("--seeds", type=int, default=1, help="seeds per point (losses averaged)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--parametrizations", nargs="+", choices=["sp", "mup"], default=["sp", "mup"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    lrs = grid(args.lr_min, args.n_lr)
    base = min(args.widths)
    lines = [f"lr grid: {', '.join(f'{x:.2g}' for x in lrs)}; {args.steps} steps of 16 x 64 tokens; base width {base}", ""]
    lines += ["| parametrization | width | " + " | ".join(f"{x:.2g}" for x in lrs) + " | best (grid) | best (parabola) |",
              "|---|---|" + "---|" * len(lrs) + "---|---|"]
    best: dict[tuple[str, int], float] = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        for par in args.parametrizations:
            for w in args.widths:
                seeds = range(args.first_seed, args.first_seed + args.seeds)
                losses = np.mean([run(par, w, base, lrs, args.steps, s, Path(d)) for s in seeds], axis=0)
                g, p = best_lr(lrs, list(losses))
                best[(par, w)] = p
                row = " | ".join("div" if not math.isfinite(v) else f"{v:.4f}" for v in losses)
                lines.append(f"| {par} | {w} | {row} | {g:.2g} | {p:.3g} |")
                print(lines[-1], f"({time.time() - t0:.0f} s)", flush=True)
    lines.append("")
    top = max(args.widths)
    for par in args.parametrizations:
        drift = math.log(best[(par, top)] / best[(par, base)]) / math.log(math.sqrt(2))
        lines.append(f"{par}: best lr {best[(par, base)]:.3g} at width {base}, {best[(par, top)]:.3g} at width {top}: "
                     f"{drift:+.2f} sqrt(2) steps ({'within' if abs(drift) <= 1 else 'beyond'} one step)")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
