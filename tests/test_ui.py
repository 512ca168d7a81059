"""Progress that reads well in a log file: plain, rate-limited lines when stderr is not a terminal."""

import io
import re

from scaling.ui import LineProgress, RateMeter

from .conftest import run_cli, tiny_overrides


def test_line_progress_is_rate_limited_and_ends_with_a_line():
    out = io.StringIO()
    p = LineProgress(stream=out, every=3600)
    t = p.add_task("run abc", total=100, loss=float("nan"), tps=0.0)
    for s in range(1, 100):
        p.update(t, completed=s, loss=2.0, tps=1000.0)
    assert out.getvalue() == ""  # nothing within the interval...
    p.update(t, completed=100, loss=1.5, tps=1200.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"run abc: 100/100 \(100%\) loss 1\.5000 1,200 tok/s elapsed \d+s", lines[0]), lines
    out2 = io.StringIO()
    p2 = LineProgress(stream=out2, every=0)
    t2 = p2.add_task("sweep", total=4)
    p2.advance(t2)
    assert out2.getvalue().startswith("sweep: 1/4 (25%)") and "ETA" in out2.getvalue()


def test_rate_meter_prints_plain_lines_off_a_terminal(monkeypatch):
    monkeypatch.setenv("SCALING_PROGRESS_EVERY", "0")
    out = io.StringIO()
    with RateMeter("prepare x", 4e6, stream=out) as m:
        m.update(0, 0)
        m.update(2e6, 500_000)
        m.note("trained a tokenizer")
    text = out.getvalue()
    assert "prepare x: 2MB of ~4MB (50%), 500k tokens" in text and "ETA" in text and "prepare x: trained a tokenizer" in text


def test_train_logs_progress_lines_when_stderr_is_a_file(tmp_path):
    over = tiny_overrides(**{"log.progress": True})
    p = run_cli("train", *sum((["--set", o] for o in over), []), "--out", str(tmp_path / "r"), env={"SCALING_PROGRESS_EVERY": "0"})
    lines = [ln for ln in p.stderr.splitlines() if re.match(r"\w+: \d+/40 \(\d+%\)", ln)]
    assert lines and lines[-1].split(":")[1].strip().startswith("40/40 (100%) loss")
