"""The GPU check runs end to end on a CPU in its dry mode, so it is known to work before a GPU is lent."""

import json
import subprocess
import sys

from .conftest import ROOT


def test_gpu_check_dry_run(tmp_path):
    out, raw = tmp_path / "results.md", tmp_path / "raw.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out), "--json", str(raw)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    text, r = out.read_text(), json.loads(raw.read_text())
    assert "## GPU check: cpu (dry run on CPU)" in text and "skipped: cuDNN attention needs a GPU" in text
    xla = next(row for row in r["rows"] if row["attention"] == "xla")
    assert xla["tokens_per_sec"] > 0 and 0.5 < xla["planner_over_xla"] < 2  # the planner within 2x of XLA on a CPU
    assert r["moe"]["moe_over_dense"] > 0 and r["resume"]["identical"] and r["resume"]["loss_identical"]
    # without a GPU and without --dry-run: one line, exit 2
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "x.md")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 2 and "no GPU here" in p.stderr and len(p.stderr.strip().splitlines()) == 1
