"""What verifying a checkpoint on restore costs: the checksums of a ~100M-parameter training state (parameters and
AdamW's two moments, built, not trained) against the restore itself, side by side in one process.

    python benchmarks/bench_checkpoint.py [--repeats 3]

Prints the restore time without verification (orbax alone), the checksum time on the restored arrays, and the
ratio (the goal: at most 5%); beside them, one plain sum over the same words, the least any verification that reads
every word can cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from scaling.model.accounting import count_params
    from scaling.config import load_config
    from scaling.parallel import Parallel
    from scaling.train.checkpoint import Checkpointer, checksums
    from scaling.train.state import build, init_state

    cfg = load_config(base={"model": {"d_model": 768, "n_layers": 12, "n_heads": 12, "vocab_size": 32768, "seq_len": 256},
                            "data": {"source": "synthetic"}, "train": {"batch_size": 8, "tokens": 8 * 256 * 10},
                            "log": {"wandb": "disabled", "progress": False}})
    par = Parallel.create(cfg.parallel)
    graphdef, target, shardings = build(cfg, par)
    state = init_state(cfg, shardings).as_dict()
    n = count_params(cfg.model).total
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    with tempfile.TemporaryDirectory() as d:
        ck = Checkpointer(Path(d) / "ck", keep=1)
        t = time.perf_counter()
        ck.save(1, state, {"note": "bench"})
        ck.wait()
        save_s = time.perf_counter() - t
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target.as_dict())
        plain, verify, floor = [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = ck.mgr.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            jax.block_until_ready(out["state"])
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            checksums(out["state"])
            verify.append(time.perf_counter() - t)
            host = [np.asarray(x) for x in jax.tree.leaves(out["state"])]
            t = time.perf_counter()  # one plain pass over the words on two threads: what any full verification pays
            with ThreadPoolExecutor(max_workers=2) as ex:
                list(ex.map(lambda x: np.ascontiguousarray(x).view(np.uint8).sum(dtype=np.uint64) if x.dtype.itemsize < 4
                            else np.ascontiguousarray(x).view(np.uint32).sum(dtype=np.uint32), host))
            floor.append(time.perf_counter() - t)
        t = time.perf_counter()
        ck.restore(1, target.as_dict())  # the verified restore end to end
        full = time.perf_counter() - t
        ck.close()
    r, v, f = float(np.median(plain)), float(np.median(verify)), float(np.median(floor))
    print(f"state: {n / 1e6:.0f}M parameters, {nbytes / 1e9:.2f} GB with AdamW moments, on {jax.device_count()}x {jax.devices()[0].device_kind}")
    print(f"save {save_s:.2f}s; restore (orbax alone) median {r:.2f}s [{min(plain):.2f}, {max(plain):.2f}]; checksums median {v:.3f}s "
          f"[{min(verify):.3f}, {max(verify):.3f}]: {100 * v / r:.1f}% of the restore; verified restore end to end {full:.2f}s")
    print(f"one plain pass over the same words (a sum, two threads; what any full verification reads): median {f:.3f}s, "
          f"{100 * f / r:.1f}% of the restore")
    return 0


if __name__ == "__main__":
    sys.exit(main())
