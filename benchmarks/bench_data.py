"""Bring-your-own-corpus at scale: preparation throughput, memory and SIGKILL resume on a generated multi-GB corpus;
start-up on the prepared dataset; loader batches/s against what an accelerator needs.

    python benchmarks/bench_data.py --gb 4 --dir /tmp/bench_data          # ~45 min on 2 cores (three preparations)
    python benchmarks/bench_data.py --gb 0.2 --dir /tmp/bench_small       # a few minutes, same figures smaller

1. Generates ``corpus.jsonl`` and ``corpus.parquet`` (the same documents: random lines of the standard library's
   Python source, seeded) of ``--gb`` GB each, and trains a BPE tokenizer of 8,192 tokens on 64 MB of it
   (``tokenizer.json``; every measurement below uses that file).
2. Raw throughput: HF ``tokenizers`` ``encode_batch_fast`` on batches of 4 MB of the same documents (both cores, no
   reading or writing counted), on the first ``--raw-gb`` GB, measured before and after the preparations.
3. ``scaling data prepare`` of the .jsonl and of the .parquet (separate processes, their peak RSS from the kernel's
   accounting), and of the .jsonl again, SIGKILLed at about 40% and rerun: its shards compared byte for byte with
   the uninterrupted .jsonl preparation's.
4. Start-up on the prepared dataset in a fresh process: opening it, the fixed eval windows and the first batch.
5. Loader: batches/s at 64 x 512 and 256 x 2048 from the prepared dataset, against the step rate an H100 needs at
   50% MFU for the largest model of each shipped GPU sweep (``scaling.model.accounting``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
H100_PEAK = 989e12


def generate(d: Path, gb: float, seed: int = 0) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scaling.data.sources import iter_pieces

    jl, pqf = d / "corpus.jsonl", d / "corpus.parquet"
    if jl.exists() and pqf.exists():
        return jl, pqf
    lines = [ln for p in iter_pieces("stdlib") for ln in p.text.splitlines() if ln.strip()]
    rng = np.random.default_rng(seed)
    target = int(gb * 1e9)
    t0, written = time.time(), 0
    schema = pa.schema([("text", pa.string())])
    tj, tp = jl.with_name(jl.name + ".tmp"), pqf.with_name(pqf.name + ".tmp")
    with open(tj, "w") as fj, pq.ParquetWriter(tp, schema) as wp:
        while written < target:
            batch = []
            for n in rng.integers(20, 400, 2000):
                idx = rng.integers(0, len(lines), n)
                batch.append("\n".join(lines[i] for i in idx))
            fj.write("".join(json.dumps({"text": t}) + "\n" for t in batch))
            wp.write_table(pa.table({"text": batch}, schema=schema))
            written += sum(len(t) for t in batch)
    tj.rename(jl)
    tp.rename(pqf)
    print(f"generated {written / 1e9:.2f} GB of text as .jsonl ({jl.stat().st_size / 1e9:.2f} GB) and .parquet "
          f"({pqf.stat().st_size / 1e9:.2f} GB) in {time.time() - t0:.0f}s", flush=True)
    return jl, pqf


def tokenizer(d: Path, jl: Path) -> Path:
    from scaling.data.sources import iter_pieces
    from scaling.data.tokenizer import HFTokenizer

    path = d / "tokenizer.json"
    if not path.exists():
        t0 = time.time()
        texts, n = [], 0
        for p in iter_pieces(str(jl)):
            texts.append(p.text)
            n += len(p.text)
            if n > 64e6:
                break
        HFTokenizer.train(texts, 8192).save(path)
        print(f"trained the BPE tokenizer (8,192) on 64 MB in {time.time() - t0:.0f}s", flush=True)
    return path


RAW = r"""
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1]); limit = float(sys.argv[3]) * 1e9
batch, size, done, tokens, t_enc = [], 0, 0, 0, 0.0
def flush():
    global batch, size, tokens, t_enc
    t = time.perf_counter(); enc = tok.encode_batch_fast(batch, add_special_tokens=False); t_enc += time.perf_counter() - t
    tokens += sum(len(e.ids) for e in enc); batch, size = [], 0
with open(sys.argv[2], 'rb') as f:
    for line in f:
        text = json.loads(line)['text']; batch.append(text); n = len(text.encode()); size += n; done += n
        if size >= 4 * 2**20: flush()
        if done >= limit: break
if batch: flush()
print(json.dumps({"bytes": done, "tokens": tokens, "encode_s": t_enc, "MBps": done / t_enc / 1e6}))
"""


def raw_throughput(tok: Path, jl: Path, gb: float) -> dict:
    out = subprocess.run([sys.executable, "-c", RAW, str(tok), str(jl), str(gb)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    print(f"raw encode_batch_fast: {r['MBps']:.2f} MB/s over {r['bytes'] / 1e9:.2f} GB ({r['tokens'] / r['encode_s'] / 1e6:.2f} M tok/s)", flush=True)
    return r


def prepare(src: Path, tok: Path, out: Path, kill_at: float | None = None) -> dict:
    """Run `scaling data prepare` in a child process; wall time, peak RSS (kernel accounting) and, with ``kill_at``,
    SIGKILL once that fraction of the source's bytes is committed (then rerun to the end)."""
    cmd = [sys.executable, "-m", "scaling", "data", "prepare", str(src), "--tokenizer", str(tok), "--out", str(out), "--no-progress"]
    total = src.stat().st_size if src.suffix == ".jsonl" else None
    res = {"wall_s": 0.0, "peak_rss_mb": 0.0, "killed_at_fraction": None}
    for attempt in range(2):
        t0 = time.time()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kill_at is not None and attempt == 0:
            state = out / ".partial" / "state.json"
            while p.poll() is None:
                try:
                    done = json.loads(state.read_text())["bytes"]
                    if done >= kill_at * (total or 1):
                        time.sleep(float(np.random.default_rng(1).uniform(0, 2)))  # mid-chunk
                        p.send_signal(signal.SIGKILL)
                        res["killed_at_fraction"] = done / total
                        break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.2)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        res["wall_s"] += time.time() - t0
        res["peak_rss_mb"] = max(res["peak_rss_mb"], usage.ru_maxrss / 1024)
        if kill_at is None or attempt == 1:
            if p.returncode != 0:
                raise SystemExit(f"prepare failed: {p.stderr.read().decode()}")
            break
        print(f"  killed at {100 * res['killed_at_fraction']:.0f}% of the source, resuming", flush=True)
    m = json.loads((out / "manifest.json").read_text())
    b = m["splits"]["train"]["bytes"] + m["splits"]["eval"]["bytes"]
    res |= {"bytes": b, "tokens": m["splits"]["train"]["tokens"] + m["splits"]["eval"]["tokens"], "MBps": b / res["wall_s"] / 1e6,
            "shards": len(m["splits"]["train"]["shards"]) + len(m["splits"]["eval"]["shards"])}
    print(f"prepare {src.name}{' (killed, resumed)' if kill_at else ''}: {res['MBps']:.2f} MB/s, {res['wall_s']:.0f}s, "
          f"peak RSS {res['peak_rss_mb']:.0f} MB, {res['tokens']:,} tokens in {res['shards']} shards", flush=True)
    return res


def digests(out: Path) -> dict:
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(out.rglob("*.bin"))}


STARTUP = r"""
import sys, time, json
t0 = time.perf_counter()
from scaling.config import DataConfig, ModelConfig
from scaling.data import build_dataset
t_imp = time.perf_counter()
ds = build_dataset(DataConfig(source=sys.argv[1]), ModelConfig(vocab_size=8192, seq_len=512))
t_open = time.perf_counter()
ds.eval_windows(2**19 // 512, 512)
t_eval = time.perf_counter()
ds.train_batch(0, 64, 512, seed=0)
t_first = time.perf_counter()
print(json.dumps({"import_s": t_imp - t0, "open_s": t_open - t_imp, "eval_windows_s": t_eval - t_open, "first_batch_s": t_first - t_eval,
                  "data_startup_s": t_first - t_imp, "train_tokens": len(ds.train.tokens)}))
"""


def startup(prepared: Path) -> dict:
    runs = [json.loads(subprocess.run([sys.executable, "-c", STARTUP, str(prepared)], capture_output=True, text=True, check=True, cwd=ROOT).stdout)
            for _ in range(3)]
    r = sorted(runs, key=lambda x: x["data_startup_s"])[1]
    print(f"start-up on the prepared dataset ({r['train_tokens']:,} tokens), median of 3 fresh processes: open {r['open_s']:.3f}s, "
          f"eval windows {r['eval_windows_s']:.3f}s, first batch {r['first_batch_s']:.3f}s: {r['data_startup_s']:.3f}s beyond imports", flush=True)
    return r


def needed_steps_per_s() -> dict:
    """Steps/s an H100 at 50% MFU runs for the largest model of each shipped GPU sweep, at 64 x 512 and 256 x 2048."""
    from scaling.model.accounting import flops_per_token
    from scaling.sweep.spec import load_sweep, plan_sweep

    out = {}
    for name in ("chinchilla_isoflop_gpu", "dense_vs_moe_gpu"):
        spec = load_sweep(ROOT / "sweeps" / f"{name}.yaml")
        plan = plan_sweep(spec, n_devices=1)
        big = max(plan, key=lambda r: r.n_params_active)
        for B, L in ((64, 512), (256, 2048)):
            from dataclasses import replace

            m = replace(big.config.model, seq_len=L)
            fpt = flops_per_token(m, big.config.train.flops_attention)
            out[(name, B, L)] = {"N": big.n_params_active, "steps_per_s": 0.5 * H100_PEAK / (fpt * B * L)}
    return out


def loader(prepared: Path, seconds: float = 5.0) -> dict:
    from scaling.config import DataConfig, ModelConfig
    from scaling.data import build_dataset

    out = {}
    for B, L in ((64, 512), (256, 2048)):
        ds = build_dataset(DataConfig(source=str(prepared)), ModelConfig(vocab_size=8192, seq_len=L))
        ds.train_batch(0, B, L, seed=0)
        n, t0 = 0, time.perf_counter()
        step = 1000  # far from the first: pages not yet touched, as in training
        while time.perf_counter() - t0 < seconds:
            ds.train_batch(step + n, B, L, seed=0)
            n += 1
        out[(B, L)] = n / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=4.0, help="GB of text per format (default 4)")
    ap.add_argument("--raw-gb", type=float, default=0.5, help="GB of text the raw throughput is measured on (default 0.5)")
    ap.add_argument("--dir", default="/tmp/scaling_bench_data")
    ap.add_argument("--runs", default="jsonl,parquet,jsonl_killed", help="which preparations (default all three)")
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    jl, pqf = generate(d, args.gb)
    tok = tokenizer(d, jl)
    raw = [raw_throughput(tok, jl, args.raw_gb)]
    runs = {}
    wanted = args.runs.split(",")
    for name, src, kill in (("jsonl", jl, None), ("parquet", pqf, None), ("jsonl_killed", jl, 0.4)):
        if name not in wanted:
            continue
        out = d / f"prepared_{name}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        runs[name] = prepare(src, tok, out, kill)
    raw.append(raw_throughput(tok, jl, args.raw_gb))
    raw_mbps = float(np.mean([r["MBps"] for r in raw]))
    same = None
    if "jsonl_killed" in runs:
        same = digests(d / "prepared_jsonl") == digests(d / "prepared_jsonl_killed")
        print(f"\nSIGKILL at {100 * runs['jsonl_killed']['killed_at_fraction']:.0f}% and resume: shards byte-identical to the uninterrupted run: {same}")
    print(f"raw throughput (mean of before/after): {raw_mbps:.2f} MB/s")
    for name in [n for n in ("jsonl", "parquet") if n in runs]:
        r = runs[name]
        print(f"  prepare {name}: {r['MBps']:.2f} MB/s = {r['MBps'] / raw_mbps:.2f}x raw; peak RSS {r['peak_rss_mb']:.0f} MB")
    st = startup(d / "prepared_jsonl")
    need = needed_steps_per_s()
    have = loader(d / "prepared_jsonl")
    print("\nloader batches/s against an H100 at 50% MFU (largest model of each GPU sweep):")
    for (name, B, L), v in need.items():
        print(f"  {name} N={v['N'] / 1e6:.0f}M at {B}x{L}: needs {v['steps_per_s']:.2f} steps/s; loader {have[(B, L)]:.0f} batches/s = "
              f"{have[(B, L)] / v['steps_per_s']:.0f}x")
    summary = {"raw_MBps": raw_mbps, "raw": raw, "prepare": runs, "resume_identical": same, "startup": st,
               "loader_batches_per_s": {f"{B}x{L}": v for (B, L), v in have.items()},
               "needed_steps_per_s": {f"{n} {B}x{L}": v for (n, B, L), v in need.items()}}
    (d / f"summary_{'_'.join(wanted)}.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nsummary: {d / ('summary_' + '_'.join(wanted) + '.json')}")


if __name__ == "__main__":
    main()
