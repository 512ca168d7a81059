"""Training throughput of ``scaling`` against the plain PyTorch eager decoder of ``torch_reference.py``, side by side.

For each shape (d_model x layers, seq, batch) both train on random tokens, float32, the same architecture and
FLOPs convention; each measurement runs in its own process (so neither framework's thread pool competes with the
other's), alternating between the two for ``--rounds`` rounds, and the median tokens/s of each is compared.
Needs the benchmark extra: ``pip install -e .[bench]``.

    python benchmarks/vs_torch.py                 # the three shapes of the throughput targets
    python benchmarks/vs_torch.py --shape 64x1,64,16 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (d_model, layers, seq, batch): target ratio scaling / torch
SHAPES = {(256, 4, 256, 16): 1.2, (64, 1, 64, 16): 1.5, (32, 1, 64, 16): None}

SCALING = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from scaling.bench import bench_config
from scaling.config import load_config
from scaling.model.layers import attention_implementation
from scaling.model.presets import head_dim_for_width
d, layers, seq, batch, steps = (int(x) for x in sys.argv[1:6])
cfg = load_config(None, [f"model.d_model={d}", f"model.n_layers={layers}", f"model.n_heads={max(1, d // head_dim_for_width(d))}",
                         f"model.seq_len={seq}", "model.vocab_size=256", f"train.batch_size={batch}", "log.wandb=disabled",
                         *json.loads(sys.argv[6])])
r = bench_config(cfg, steps)
r["attention_kernel"] = attention_implementation(cfg.model)
print(json.dumps(r))
"""


def _run(argv: list[str]) -> dict:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure(shape: tuple[int, int, int, int], rounds: int, steps: int, overrides: list[str] = ()) -> dict:
    d, layers, seq, batch = shape
    ours, theirs, kernel = [], [], None
    for _ in range(rounds):
        r = _run([sys.executable, "-c", SCALING, str(d), str(layers), str(seq), str(batch), str(steps), json.dumps(list(overrides))])
        ours.append(r["tokens_per_sec"])
        kernel = r["attention_kernel"]
        t = _run([sys.executable, str(HERE / "torch_reference.py"), "--d-model", str(d), "--layers", str(layers),
                  "--seq", str(seq), "--batch", str(batch), "--steps", str(steps), "--json"])
        theirs.append(t["tokens_per_sec"])
    return {"shape": shape, "scaling": statistics.median(ours), "torch": statistics.median(theirs),
            "ratio": statistics.median(ours) / statistics.median(theirs), "attention_kernel": kernel,
            "scaling_all": ours, "torch_all": theirs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", help="d_model x layers, seq, batch: e.g. 64x1,64,16 (default: the three target shapes)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for scaling's side (repeatable)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.shape:
        dl, seq, batch = a.shape.split(",")
        d, layers = dl.split("x")
        shapes = {(int(d), int(layers), int(seq), int(batch)): SHAPES.get((int(d), int(layers), int(seq), int(batch)))}
    else:
        shapes = SHAPES
    results = []
    for shape, target in shapes.items():
        r = measure(shape, a.rounds, a.steps, a.set) | {"target": target}
        results.append(r)
        if not a.json:
            d, layers, seq, batch = shape
            goal = f"target >= {target:g}x: {'met' if r['ratio'] >= target else 'not met'}" if target else "no target"
            print(f"{d}x{layers} seq {seq} batch {batch}: scaling {r['scaling']:,.0f} tok/s ({r['attention_kernel']} attention), "
                  f"torch {r['torch']:,.0f} tok/s, ratio {r['ratio']:.2f} ({goal})", flush=True)
    if a.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
