"""What needs a GPU, measured in one command (``scripts/gpu_check.sh``), written to ``benchmarks/RESULTS.md``.

On a GPU host:

1. MFU of dense models of ~125M and ~350M parameters in bfloat16 at seq 2048 (and 125M at 1024), with XLA's and
   cuDNN's attention; the batch is the largest of 32, 16, 8, 4 sequences that the memory planner says fits in 85%
   of the device (``scaling.memory``).
2. The MoE / dense step-time ratio at equal active parameters (8 experts of d_ff/2, top-2) at ~125M.
3. The memory planner against XLA's own accounting of the compiled step, for each model.
4. Bit-identical resume with deterministic ops (``--xla_gpu_deterministic_ops``): a run stopped at its checkpoint
   and resumed ends with the parameters digest of an uninterrupted run.

``--dry-run`` runs the same code on this machine's CPU with tiny shapes (cuDNN skipped: not a GPU) and writes to
``--out`` instead of RESULTS.md, so the script is known to work before a GPU is lent; the test suite runs it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
from pathlib import Path

# deterministic GPU reductions for the resume check (set before JAX starts; ignored on a CPU)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {  # name: (model fields, seq_len)
    "125M": ({"d_model": 768, "n_layers": 12, "n_heads": 12, "vocab_size": 32768}, [1024, 2048]),
    "350M": ({"d_model": 1024, "n_layers": 24, "n_heads": 16, "vocab_size": 32768}, [2048]),
}
DRY_MODELS = {"tiny": ({"d_model": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 256}, [128])}
BATCHES = (32, 16, 8, 4)


def _config(model: dict, seq_len: int, batch: int, attention: str, dtype: str = "auto", **train):
    from scaling.config import load_config

    return load_config(base={"model": {**model, "seq_len": seq_len, "attention": attention, "dtype": dtype},
                             "data": {"source": "synthetic"},
                             "train": {"batch_size": batch, "tokens": batch * seq_len * 100, **train},
                             "log": {"wandb": "disabled", "progress": False}})


def _fitting_batch(model: dict, seq_len: int, device: str, dry: bool) -> int:
    from scaling.memory import plan_memory

    if dry:
        return 8
    for b in BATCHES:
        plan = plan_memory(_config(model, seq_len, b, "xla"), device, 1)
        if plan.total <= 0.85 * plan.device_memory:
            return b
    return BATCHES[-1]


def mfu_rows(models: dict, device: str, dry: bool, steps: int) -> list[dict]:
    import jax

    from scaling.bench import bench_config
    from scaling.memory import plan_memory, xla_memory

    rows = []
    on_gpu = jax.default_backend() == "gpu"
    for name, (model, seqs) in models.items():
        for L in seqs:
            B = _fitting_batch(model, L, device, dry)
            for attention in ("xla", "cudnn"):
                row = {"model": name, "seq_len": L, "batch": B, "attention": attention}
                if attention == "cudnn" and not on_gpu:
                    rows.append({**row, "skipped": "cuDNN attention needs a GPU"})
                    continue
                cfg = _config(model, L, B, attention)
                try:
                    r = bench_config(cfg, steps=steps)
                except Exception as e:  # an out-of-memory or a missing kernel is a result, not a crash
                    rows.append({**row, "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})
                    continue
                row |= {k: r[k] for k in ("n_params", "compute_dtype", "step_time_s", "tokens_per_sec", "model_tflops_per_sec", "mfu")}
                if attention == "xla":
                    plan = plan_memory(cfg, device, 1).total
                    xla = xla_memory(cfg)["total"]
                    row |= {"planner_gb": plan / 1e9, "xla_gb": xla / 1e9, "planner_over_xla": plan / xla}
                rows.append(row)
    return rows


def moe_ratio(models: dict, dry: bool, steps: int) -> dict:
    from scaling.bench import bench_config, matched_moe

    name, (model, seqs) = next(iter(models.items()))
    L = seqs[0]
    cfg = _config(model, L, 8, "auto")
    moe_cfg, dense_cfg = matched_moe(cfg)
    d, m = bench_config(dense_cfg, steps=steps), bench_config(moe_cfg, steps=steps)
    return {"model": name, "seq_len": L, "dense_step_s": d["step_time_s"], "moe_step_s": m["step_time_s"],
            "moe_over_dense": m["step_time_s"] / d["step_time_s"], "n_params_active": d["n_params_active"], "moe_n_params": m["n_params"]}


def resume_check(dry: bool) -> dict:
    """Stop a run at its first checkpoint, resume it, compare with an uninterrupted run (same config)."""
    from scaling.train import StopRequested, train

    model = DRY_MODELS["tiny"][0] if dry else {"d_model": 256, "n_layers": 4, "n_heads": 4, "vocab_size": 256}
    cfg = _config(model, 128, 16, "auto", checkpoint_every=20, tokens=16 * 128 * 60)
    with tempfile.TemporaryDirectory() as d:
        ref = train(cfg, Path(d) / "ref")
        calls = {"n": 0}

        def stop():
            calls["n"] += 1
            return calls["n"] == 25  # past the step-20 checkpoint: the resume recomputes steps 21-25

        try:
            train(cfg, Path(d) / "stopped", should_stop=stop)
        except StopRequested:
            pass
        done = train(cfg, Path(d) / "stopped")
    return {"steps": cfg.steps, "resumed_from": done.get("resumed_from_step"), "identical": done["params_digest"] == ref["params_digest"],
            "loss_identical": done["final_train_loss"] == ref["final_train_loss"], "digest": ref["params_digest"]}


def render(device: str, rows: list[dict], moe: dict, resume: dict, dry: bool) -> str:
    import jax

    kind = jax.devices()[0].device_kind
    head = f"## GPU check: {kind} ({'dry run on CPU' if dry else device}), {_dt.date.today().isoformat()}"
    lines = [head, "", f"`scripts/gpu_check.sh{' --dry-run' if dry else ''}`; jax {jax.__version__}.", "",
             "| model | seq | batch | attention | N | dtype | step (ms) | tokens/s | TFLOP/s | MFU | planner / XLA memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['seq_len']} | {r['batch']} | {r['attention']} | | | | | | skipped: {r['skipped']} | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['planner_gb']:.2f} / {r['xla_gb']:.2f} GB ({r['planner_over_xla']:.2f}x)" if "planner_gb" in r else ""
        lines.append(f"| {r['model']} | {r['seq_len']} | {r['batch']} | {r['attention']} | {r['n_params'] / 1e6:.3g}M | {r['compute_dtype']} | "
                     f"{1e3 * r['step_time_s']:.1f} | {r['tokens_per_sec']:,.0f} | {r['model_tflops_per_sec']:.1f} | {mfu} | {mem} |")
    lines += ["", f"MoE / dense step time at equal active parameters ({moe['model']}, 8 experts top-2, seq {moe['seq_len']}): "
                  f"{moe['moe_over_dense']:.2f}x ({1e3 * moe['moe_step_s']:.1f} against {1e3 * moe['dense_step_s']:.1f} ms).",
              f"Resume with deterministic ops: stopped after step 25, resumed from the step-{resume['resumed_from']} checkpoint: "
              f"parameters {'bit-identical' if resume['identical'] else 'DIFFERENT'} to an uninterrupted run of {resume['steps']} steps "
              f"(digest {resume['digest']}), final loss {'identical' if resume['loss_identical'] else 'different'}.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on this machine's CPU; write to --out")
    ap.add_argument("--device", default="h100", help="the scaling.devices entry for the memory planner (default h100)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="file the section is appended to")
    ap.add_argument("--json", default=None, help="also write the raw figures here")
    args = ap.parse_args()
    import jax

    dry = args.dry_run
    if not dry and jax.default_backend() != "gpu":
        print(f"error: no GPU here (JAX backend {jax.default_backend()!r}); --dry-run checks the script on a CPU", file=sys.stderr)
        return 2
    device = "cpu" if dry else args.device
    models = DRY_MODELS if dry else MODELS
    steps = 3 if dry else args.steps
    rows = mfu_rows(models, device, dry, steps)
    moe = moe_ratio(models, dry, steps)
    resume = resume_check(dry)
    text = render(device, rows, moe, resume, dry)
    with open(args.out, "a") as f:
        f.write("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "moe": moe, "resume": resume}, indent=1, default=str))
    print(text)
    return 0 if resume["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
