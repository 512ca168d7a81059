"""Training: learns the known answer, records honestly, logs to W&B offline, resumes exactly after SIGKILL."""

import glob
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scaling.config import load_config
from scaling.train import DivergedError, train
from scaling.train.logger import last_logged_step

from .conftest import ROOT, read_record, run_cli, tiny_overrides

RECORD_KEYS = {
    "run_id", "status", "config", "n_params", "n_params_nonembedding", "n_params_active", "tokens", "flops",
    "flops_convention", "final_train_loss", "final_eval_loss", "final_eval_loss_stderr", "tokens_per_sec",
    "wall_time_s", "device_kind", "device_count", "seed", "data", "versions", "params_digest", "epochs", "eval_tokens",
    "eval_windows", "warnings",
}


def test_synthetic_loss_falls_to_the_entropy_rate(tmp_path):
    cfg = load_config(None, tiny_overrides(**{"model.d_model": 64, "model.n_heads": 2, "model.seq_len": 64,
                                                "train.batch_size": 16, "train.tokens": 16 * 64 * 300, "train.log_every": 1}))
    rec = train(cfg, tmp_path / "run")
    H = rec["entropy_rate"]
    metrics = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(m for m in metrics if m["kind"] == "train")
    # step 1 is scored by the initial parameters: logits of std ~0.02 * sqrt(64) give ln(256) +- ~0.05
    assert first["step"] == 1 and abs(first["lm_loss"] - np.log(256)) < 0.1
    # Seeds 0-4 (measured) end at 1.032-1.038 x H (sd 0.003); another machine's rounding perturbs the run far less
    # than a new seed does, so 1.10 x H is > 20 sd away from failing.
    assert rec["final_eval_loss"] < 1.10 * H, (rec["final_eval_loss"], H)
    # No model beats the source: 4 standard errors of the (unbiased) eval mean below H, plus 0.01 for the
    # windows' correlation, is the lowest an honest measurement can read.
    assert rec["final_eval_loss"] > H - 4 * rec["final_eval_loss_stderr"] - 0.01


def test_stdlib_model_beats_unigram_entropy(tmp_path, cache_dir):
    from scaling.data import build_dataset, unigram_entropy

    cfg = load_config(None, tiny_overrides(**{"data.source": "stdlib", "data.max_bytes": 3_000_000, "model.d_model": 64,
                                                "model.n_heads": 2, "model.seq_len": 64, "train.batch_size": 16,
                                                "train.tokens": 16 * 64 * 250, "train.lr": 5e-3}))
    rec = train(cfg, tmp_path / "run")
    h1 = unigram_entropy(build_dataset(cfg.data, cfg.model))
    # Seeds 0-4 beat the unigram entropy by 0.67-0.85 nats (sd 0.065); 0.3 is > 5 sd below the worst seed.
    assert rec["final_eval_loss"] < h1 - 0.3, (rec["final_eval_loss"], h1)
    # the same float64 arithmetic on the same three numbers: equal to double rounding (rel 1e-12)
    assert rec["final_eval_bpb"] == pytest.approx(rec["final_eval_loss"] / np.log(2) / rec["data"]["bytes_per_token"], rel=1e-12)


def test_record_schema_and_flops(tmp_path):
    cfg = load_config(None, tiny_overrides())
    rec = train(cfg, tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "record.json").read_text())
    assert RECORD_KEYS <= set(on_disk)
    assert on_disk["status"] == "completed" and on_disk["n_params_active"] == on_disk["n_params"]
    assert on_disk["tokens"] == cfg.steps * cfg.train.batch_size * cfg.model.seq_len
    assert on_disk["flops"] == on_disk["flops_per_token"] * on_disk["tokens"]
    assert "causal" in on_disk["flops_convention"]
    assert rec["final_eval_loss_stderr"] > 0
    # the attention kernel is read from the compiled step: XLA's own ops on a CPU
    assert on_disk["attention_requested"] == "auto" and on_disk["attention_kernel"] == "xla"


def test_cudnn_attention_is_refused_off_a_gpu_in_one_line(tmp_path):
    import jax

    if jax.default_backend() == "gpu":
        pytest.skip("on a GPU, cudnn attention is allowed")
    p = run_cli("train", "--out", str(tmp_path / "r"), *sum((["--set", o] for o in tiny_overrides(**{"model.attention": "cudnn"})), []), check=False)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "needs a GPU" in p.stderr, p.stderr


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path):
    from .wandb_reader import read_records

    cfg = load_config(None, tiny_overrides(**{"log.wandb": "offline", "train.log_every": 5}))
    train(cfg, tmp_path / "run")
    files = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    history, config = [], {}
    for r in read_records(files[0]):
        if r.WhichOneof("record_type") == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif r.WhichOneof("record_type") in ("config", "run"):
            for i in (r.config if r.WhichOneof("record_type") == "config" else r.run.config).update:
                config[i.key] = json.loads(i.value_json)
    steps = [h["_step"] for h in history if "train/lm_loss" in h]
    assert steps == list(range(5, cfg.steps + 1, 5))
    assert any("eval/eval_loss" in h for h in history)
    N = config["N"]["value"] if isinstance(config["N"], dict) else config["N"]
    assert N == json.loads((tmp_path / "run" / "record.json").read_text())["n_params"]
    jsonl = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    last = [h for h in history if "train/lm_loss" in h][-1]
    assert last["train/lm_loss"] == jsonl[-1]["lm_loss"]  # the same float, serialised twice


def test_nan_marks_the_run_diverged(tmp_path):
    cfg = load_config(None, tiny_overrides(**{"train.lr": 1e30, "train.grad_clip": None, "train.warmup_fraction": 0}))
    with pytest.raises(DivergedError):
        train(cfg, tmp_path / "run")
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["status"] == "diverged" and "non-finite" in rec["error"]
    p = run_cli("train", "--out", str(tmp_path / "cli"), *sum((["--set", o] for o in tiny_overrides(**{"train.lr": 1e30, "train.grad_clip": None})), []), check=False)
    assert p.returncode == 3 and "diverged" in p.stderr


def test_sigkill_and_resume_gives_identical_results(tmp_path):
    over = tiny_overrides(**{"model.d_model": 64, "model.n_heads": 2, "train.tokens": 8 * 32 * 300, "train.checkpoint_every": 20})
    args = ["train", "--no-progress", *sum((["--set", o] for o in over), [])]
    ref = run_cli(*args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "scaling", *args, "--out", str(run_dir)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        rec = run_dir / "record.json"
        if rec.exists() and (json.loads(rec.read_text()).get("last_checkpoint_step") or 0) >= 60:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((run_dir / "record.json").read_text())
    logged_at_kill = last_logged_step(run_dir / "metrics.jsonl")  # the resumed run rewrites the log from its checkpoint
    assert killed_at["status"] == "running" and killed_at["last_checkpoint_step"] < 300
    run_cli(*args, "--out", str(run_dir))
    a = json.loads((tmp_path / "ref" / "record.json").read_text())
    b = json.loads((run_dir / "record.json").read_text())
    assert b["resumed_from_step"] >= killed_at["last_checkpoint_step"] >= 60
    # the steps the kill lost past the last checkpoint are counted as recomputed: as far as the later of the record's
    # note (written every few seconds) and the last step metrics.jsonl logged had got
    reached = max(x for x in (killed_at["reached_step"], logged_at_kill) if x is not None)
    assert b["restarts"] == 1 and b["steps_recomputed"] == max(0, reached - b["resumed_from_step"])
    assert b["params_digest"] == a["params_digest"]
    assert b["final_train_loss"] == a["final_train_loss"]
    assert b["final_eval_loss"] == a["final_eval_loss"]
    # the metrics log of the resumed run matches the uninterrupted one line for line (timings aside)
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "tokens_per_sec"} for l in p.read_text().splitlines()]  # noqa: E731
    assert strip(run_dir / "metrics.jsonl") == strip(tmp_path / "ref" / "metrics.jsonl")


@pytest.mark.parametrize("sig, code, status", [("SIGUSR2", 75, "preempted"), ("SIGINT", 130, "stopped")])
def test_stop_signal_checkpoints_and_exits_then_the_rerun_resumes(tmp_path, sig, code, status):
    """SIGUSR2 (slurm's warning before the time limit; SIGTERM alike, in the soak test) is a preemption: exit 75,
    record ``preempted``; Ctrl-C is a stop: exit 130, record ``stopped``. Either way the step in flight finishes
    and its checkpoint is committed before the exit, so nothing is recomputed on resume."""
    over = tiny_overrides(**{"train.tokens": 8 * 32 * 3000, "train.checkpoint_every": 50})
    args = ["train", "--no-progress", *sum((["--set", o] for o in over), []), "--out", str(tmp_path / "run")]
    proc = subprocess.Popen([sys.executable, "-m", "scaling", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rec_path = tmp_path / "run" / "record.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if rec_path.exists() and (json.loads(rec_path.read_text()).get("last_checkpoint_step") or 0) > 0:
            break
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    stopped = json.loads(rec_path.read_text())
    assert stopped["status"] == status and stopped["stop_signal"] == sig
    assert 0 < stopped["last_checkpoint_step"] < 3000 and stopped["reached_step"] == stopped["last_checkpoint_step"]
    assert stopped["preemptions"] == int(status == "preempted")
    assert "rerun to resume" in err
    run_cli(*args)
    done = json.loads(rec_path.read_text())
    assert done["status"] == "completed" and done["resumed_from_step"] == stopped["last_checkpoint_step"]
    assert done["restarts"] == 1 and done["steps_recomputed"] == 0 and "stop_signal" not in done


def test_changed_config_refuses_the_old_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = lambda **kw: ["train", "--out", str(run), *sum((["--set", o] for o in tiny_overrides(**kw)), [])]  # noqa: E731
    run_cli(*args(**{"train.tokens": 8 * 32 * 30}))
    done = read_record(run)
    assert done["status"] == "completed" and done["steps"] == 30
    # fewer steps: the 30-step checkpoint is past the end, always an error; the completed record is untouched
    p = run_cli(*args(**{"train.tokens": 8 * 32 * 20}), check=False)
    assert p.returncode == 2 and "past this config's 20 steps" in p.stderr and "Traceback" not in p.stderr
    assert read_record(run) == done
    # more steps and another lr: refused, naming the fields, unless --resume-anyway
    p = run_cli(*args(**{"train.tokens": 8 * 32 * 40, "train.lr": 5e-3}), check=False)
    assert p.returncode == 2 and "train.lr 0.01 -> 0.005" in p.stderr and "--resume-anyway" in p.stderr
    assert read_record(run) == done
    run_cli(*args(**{"train.tokens": 8 * 32 * 40, "train.lr": 5e-3}), "--resume-anyway")
    rec = read_record(run)
    assert rec["status"] == "completed" and rec["steps"] == 40 and rec["resumed_from_step"] == 30
    assert any("another config" in w and "train.lr" in w for w in rec["warnings"])
    # changing only how often it is evaluated or logged is not a different run
    run_cli(*args(**{"train.tokens": 8 * 32 * 40, "train.lr": 5e-3, "train.log_every": 5}))


def test_diverged_at_step_is_the_first_non_finite_step(tmp_path):
    cfg = load_config(None, tiny_overrides(**{"train.lr": 1e30, "train.grad_clip": None, "train.warmup_fraction": 0, "train.log_every": 10}))
    with pytest.raises(DivergedError) as e:
        train(cfg, tmp_path / "run")
    # step 1 runs on the initial parameters (finite loss); its lr-1e30 update makes step 2's loss non-finite
    assert e.value.step == 2 and read_record(tmp_path / "run")["diverged_at_step"] == 2
