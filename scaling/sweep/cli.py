"""``scaling sweep plan | run | status | submit | fit-lr``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from scaling import exits


def _human(x: float) -> str:
    for unit, div in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.0f}d"


def _load(path: str, overrides: list[str] | None = None):
    from scaling.config import ConfigError
    from scaling.sweep.spec import load_sweep

    try:
        return load_sweep(path, overrides)
    except ConfigError as e:
        print(f"sweep error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _devices(args):
    """(DeviceInfo, n_devices) to plan for: --device/--devices/--mfu, or this machine's devices."""
    from scaling.sweep.estimate import DeviceInfo

    if args.device is None:
        if args.devices is not None or args.mfu is not None:
            raise ValueError("--devices and --mfu go with --device (the accelerator to plan for)")
        dev = DeviceInfo.current()
        return dev, None
    dev = DeviceInfo.named(args.device.lower(), args.devices or 1, **({"mfu": args.mfu} if args.mfu is not None else {}))
    return dev, dev.count


def _plan_notes(spec, plan, corpora) -> None:
    """What `sweep plan` says below its table: data needed, the recipe and parametrization, each budget's sizes, data
    repeats, the WSD branches' savings and trunk warmups."""
    from scaling.sweep.spec import branch_savings, budget_summary

    for c in corpora:
        if c["train_tokens"] is not None:
            cap = "" if c["cap"] is None else f", {c['max_tokens'] / c['cap']:.3g} at data.max_epochs={c['cap']:g}"
            print(f"data {c['source']}: {c['train_tokens']:,} training tokens (fingerprint {c['fingerprint']}); the sweep needs "
                  f"{c['max_tokens']:.3g} for one pass over fresh data{cap}")
    g = spec.grid
    print(f"parameters basis for the recipe{' and tokens_per_param' if g.ratios else ''}: N_{g.params}")
    print(f"learning rate: {spec.recipe.describe(f'N_{g.params}')}")
    if spec.lr_scan:
        print(f"lr_scan: every point at {len(spec.lr_scan)} multipliers of that lr ({', '.join(f'{m:g}' for m in spec.lr_scan)}): "
              "an lr tuning sweep; after it runs, 'scaling sweep fit-lr SWEEP_DIR' fits the best lr as a law of N and D")
    pars = {(r.config.model.parametrization, r.config.model.mup_base_width) for r in plan}
    for par, base in sorted(pars, key=str):
        if par == "mup":
            print(f"parametrization: muP relative to d_model {base} (hidden lr / (d_model / {base}) inside each run; an lr tuned at the base transfers across width)")
    if any(r.budget for r in plan):
        worst = max(abs(r.flops / r.budget - 1) for r in plan if r.budget)
        print(f"budget check: every run's C within {100 * worst:.2f}% of its budget (limit 1%)")
        for b in budget_summary(spec, plan):
            where = ""
            if "prior_N_opt" in b:
                where = f"; prior N_opt {_human(b['prior_N_opt'])} {'inside' if b['prior_inside'] else 'OUTSIDE'} the sizes"
            print(
                f"budget {b['budget']:.3g}: {b['n_sizes']} sizes N {_human(b['N_min'])}-{_human(b['N_max'])}, "
                f"{b['tokens_per_param_min']:.3g}-{b['tokens_per_param_max']:.3g} tokens per parameter{where}"
            )
    repeated = [r for r in plan if r.epochs is not None and r.epochs > 1]
    if repeated:
        print(f"warning: {len(repeated)} runs repeat data (up to {max(r.epochs for r in repeated):.2f} epochs over their training split)", file=sys.stderr)
    saved = branch_savings(plan)
    if saved:
        print(
            f"WSD branches: {saved['n_trunks']} trunks, {saved['n_branches']} branches; {saved['spent_flops']:.3e} FLOPs "
            f"against {saved['separate_flops']:.3e} as separate runs ({100 * saved['saved_fraction']:.0f}% saved)"
        )
        trunks = [r for r in plan if r.role == "trunk"]
        warm = [r.config.train.warmup_steps for r in trunks]
        print(f"trunk warmup: {min(warm)}-{max(warm)} steps")
        # Adam's second-moment average spans about 1/(1-beta2) steps; a trunk that reaches its peak lr within
        # twice that trains its first steps on a noisy estimate. Measured on the quickstart's grid (beta2 0.95):
        # 16 warmup steps left a 271k model 4.2% worse and 4.8x more seed-dependent than 50-150 (benchmarks/RESULTS.md).
        short = [r for r in trunks if r.config.train.warmup_steps < 2 / (1 - r.config.train.beta2)]
        if short:
            print(
                f"warning: {len(short)} of {len(trunks)} trunks warm up in fewer than 2/(1-beta2) steps (as few as "
                f"{min(r.config.train.warmup_steps for r in short)}); without train.warmup_steps a trunk warms up over "
                "train.warmup_fraction of its shortest branch: set train.warmup_steps in base (every size the same warmup) to at least that",
                file=sys.stderr,
            )


def cmd_plan(args) -> int:
    from scaling.config import ConfigError
    from scaling.data.cli import _bad_input_types
    from scaling.sweep.estimate import estimate
    from scaling.sweep.spec import count_epochs, plan_sweep

    spec = _load(args.sweep, args.set)
    try:
        dev, n_devices = _devices(args)
        plan = plan_sweep(spec, n_devices=n_devices)
        corpora = count_epochs(plan, progress=True)
    except (ConfigError, ValueError, *_bad_input_types()) as e:
        return exits.fail(str(e), prefix="sweep error")
    table = Table(title=f"sweep {spec.name}: {len(plan)} runs on {dev.count}x {dev.kind}")
    for col in ("run_id", "variant", "role", "N", "N_active", "D", "C", "budget", "steps", "batch", "lr", "seed", "epochs", "memory", "est. time"):
        table.add_column(col, justify="right" if col not in ("run_id", "variant", "role") else "left")
    problems = []
    total_C, total_t = 0.0, 0.0
    for r in plan:
        try:
            est = estimate(r.config, dev)
        except ConfigError as e:
            return exits.fail(f"run {r.run_id}: {e}", prefix="sweep error")
        est["time_s"] *= r.spent_flops / r.flops  # a branch trains only its cooldown
        total_C += r.spent_flops
        total_t += est["time_s"]
        if est["memory_bytes"] > dev.memory_bytes:
            problems.append(f"run {r.run_id} needs ~{_human(est['memory_bytes'])}B of device memory; {dev.kind} has {_human(dev.memory_bytes)}B")
        table.add_row(
            r.run_id, r.variant, r.role if r.role != "branch" else f"branch@{r.branch_step}", _human(r.n_params), _human(r.n_params_active), _human(r.tokens), f"{r.flops:.3g}",
            f"{r.budget:.3g}" if r.budget else "-", str(r.steps), str(r.config.train.batch_size), f"{r.config.train.lr:.2e}",
            str(r.seed), "-" if r.epochs is None else f"{r.epochs:.2f}", f"{_human(est['memory_bytes'])}B", _duration(est["time_s"]),
        )
    Console(width=200).print(table)
    _plan_notes(spec, plan, corpora)
    where = "this machine" if args.device is None else f"{dev.count} x {dev.kind}"
    print(f"total compute {total_C:.3e} FLOPs; estimated time {_duration(total_t)} on {where} ({dev.basis}), one worker on all devices")
    if problems:
        for p in problems:
            print(f"cannot run: {p}", file=sys.stderr)
        return exits.BAD_INPUT
    return exits.OK


def _run_per_device(args, out: str) -> int:
    from scaling.config import ConfigError
    from scaling.sweep.workers import run_per_device

    if args.adaptive or args.shard:
        return exits.fail("--devices-per-worker starts its own workers; it does not combine with --adaptive or --shard", prefix="sweep error")
    argv = [args.sweep, "--out", out, "--no-progress", "--stack", str(args.stack)]
    argv += sum((["--set", o] for o in args.set or []), [])
    argv += ["--retry-failed"] if args.retry_failed else []
    try:
        return run_per_device(argv, args.devices_per_worker)
    except ConfigError as e:
        return exits.fail(str(e), prefix="sweep error")


def _recorded_yaml(path: str, overrides: list[str] | None) -> str:
    """The sweep file as the sweep directory records it: its text, or with --set overrides its resolved YAML; a
    ``recipe: {from: X}`` is recorded as the law read from X (and what it was tuned under), so refitting X later
    cannot change this directory's learning rates and run ids."""
    import yaml

    from scaling.sweep.recipe import resolve_recipe
    from scaling.sweep.spec import load_sweep_raw

    raw = load_sweep_raw(path, overrides)
    rec = raw.get("recipe")
    frozen = isinstance(rec, dict) and "from" in rec
    if not overrides and not frozen:
        return Path(path).read_text()
    if frozen:
        raw["recipe"] = resolve_recipe(rec)
    notes = ([f"--set {' --set '.join(overrides)}"] if overrides else []) + ([f"recipe.from {rec['from']} read into recipe"] if frozen else [])
    return f"# {path} with {'; '.join(notes)}\n" + yaml.safe_dump(raw, sort_keys=False)


def cmd_run(args) -> int:
    from scaling.signals import StopFlag

    stop = StopFlag().install()  # first: a preemption signal during start-up must not kill the worker
    from scaling.storage import quiet_library_noise

    quiet_library_noise()
    spec = _load(args.sweep, args.set)
    out = args.out or os.path.join("runs", spec.name)
    from scaling.remote import PushFailed, RemoteError, local_workdir

    try:  # an object-storage --out is worked in a local copy, pushed periodically and at the end (scaling/remote.py)
        with local_workdir(out, "sweep") as local:
            return _run(args, spec, local, out, stop)
    except PushFailed as e:
        return exits.fail(str(e), exits.IOERR, prefix="storage error")
    except RemoteError as e:
        return exits.fail(str(e), prefix="sweep error")


def _run(args, spec, out: str, shown: str, stop) -> int:
    from scaling.config import ConfigError
    from scaling.sweep.runner import run_sweep
    from scaling.ui import progress_bar

    if args.devices_per_worker is not None:
        return _run_per_device(args, out)
    if args.target_dex is not None and not args.target_dex > 0:
        return exits.fail(f"--target-dex must be > 0, got {args.target_dex}", prefix="sweep error")
    if args.max_added is not None and args.max_added < 0:
        return exits.fail(f"--max-added must be >= 0, got {args.max_added}", prefix="sweep error")
    if args.stack < 1:
        return exits.fail(f"--stack must be >= 1, got {args.stack}", prefix="sweep error")
    try:
        with progress_bar(not args.no_progress) as progress:
            res = run_sweep(
                spec, out, shard=args.shard, retry_failed=args.retry_failed, should_stop=stop, progress=progress,
                sweep_yaml=_recorded_yaml(args.sweep, args.set), adaptive=args.adaptive, target_dex=args.target_dex,
                max_added=args.max_added, stack=args.stack,
            )
    except (ConfigError, ValueError) as e:
        return exits.fail(str(e), prefix="sweep error")
    print(
        f"sweep {spec.name}: {len(res.completed)} completed now, {len(res.failed)} failed/diverged, "
        f"{len(res.skipped)} skipped (done, failed earlier, or claimed by another worker) -> {shown}/runs.csv"
    )
    if res.storage_error:
        return exits.fail(f"{res.storage_error}; the sweep stopped (claims released, checkpoints kept): free space or fix the mount, then rerun", exits.IOERR, prefix="storage error")
    if res.stopped:
        return exits.fail("rerun the same command to resume (claims released)", stop.exit_code, prefix=res.stop_status or "stopped")
    return exits.FAILED if res.failed else exits.OK


def cmd_status(args) -> int:
    from scaling.remote import RemoteError, local_workdir

    try:  # a sweep on object storage: its records pulled (not its checkpoints) into the staging directory
        with local_workdir(args.sweep_dir, "sweep", skip=lambda rel: "/checkpoints/" in rel, push=False) as local:
            return _status(Path(local), args.sweep_dir)
    except RemoteError as e:
        return exits.fail(str(e), prefix="sweep error")


def _status(sweep_dir: Path, shown: str) -> int:
    from scaling.sweep.collect import preemption_summary, status_table
    from scaling.sweep.spec import load_sweep

    spec_path = sweep_dir / "sweep.yaml"
    if not spec_path.exists():
        return exits.fail(f"{shown} has no sweep.yaml (not a sweep directory)")
    from scaling.config import ConfigError

    try:
        df = status_table(load_sweep(spec_path), sweep_dir)
    except ConfigError as e:
        return exits.fail(str(e), prefix="sweep error")
    table = Table(title=f"{shown}")
    for col in ("run_id", "variant", "status", "progress", "N", "D", "C", "loss", "±"):
        table.add_column(col)
    for _, r in df.iterrows():
        loss = f"{r['loss']:.4f}" if r["loss"] == r["loss"] and r["loss"] is not None else "-"
        se = f"{r['eval_loss_stderr']:.4f}" if r["eval_loss_stderr"] == r["eval_loss_stderr"] and r["eval_loss_stderr"] is not None else ""
        table.add_row(r["run_id"], r["variant"], r["status"], f"{100 * (r['progress'] or 0):.0f}%", _human(r["N"]), _human(r["D"]), f"{r['C']:.3g}", loss, se)
    Console(width=160).print(table)
    counts = df["status"].value_counts().to_dict()
    print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    pre = preemption_summary(df)
    if pre["preemptions"] or pre["restarts"]:
        print(
            f"interruptions: {pre['preemptions']} preemptions ({pre['runs_preempted']} runs), {pre['restarts']} restarts "
            f"(requeued or rerun), {pre['steps_recomputed']} steps recomputed after the last checkpoint "
            f"(~{_duration(pre['time_recomputed_s'])} of training; lower train.checkpoint_every to lose less)"
        )
    return 0


def cmd_fit_lr(args) -> int:
    from scaling.config import ConfigError
    from scaling.sweep.tune import fit_recipe

    try:
        fit_recipe(args.sweep_dir)
    except ConfigError as e:
        return exits.fail(str(e), prefix="sweep error")
    return 0


def cmd_submit(args) -> int:
    from scaling.sweep.submit import submit_slurm

    spec = _load(args.sweep, args.set)
    out = args.out or os.path.join("runs", spec.name)
    for flag in ("workers", "gpus", "nodes", "cpus_per_task", "timeout_min"):
        if getattr(args, flag) < 1:
            return exits.fail(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}", prefix="sweep error")
    if args.devices_per_worker is not None and (args.devices_per_worker < 1 or args.gpus % args.devices_per_worker):
        return exits.fail(f"--devices-per-worker {args.devices_per_worker} must divide --gpus {args.gpus}", prefix="sweep error")
    bad = [kv for kv in args.slurm or [] if "=" not in kv]
    if bad:
        return exits.fail(f"--slurm expects KEY=VALUE, got {bad[0]!r}", prefix="sweep error")
    try:
        res = submit_slurm(
            args.sweep, out, workers=args.workers, partition=args.partition, gpus_per_node=args.gpus, timeout_min=args.timeout_min, nodes=args.nodes,
            dry_run=args.dry_run, extra=dict(kv.split("=", 1) for kv in (args.slurm or [])), cpus_per_task=args.cpus_per_task, name=spec.name,
            overrides=args.set, devices_per_worker=args.devices_per_worker,
        )
    except ValueError as e:
        return exits.fail(str(e), prefix="sweep error")
    print(res)
    return 0


def add_sweep_parser(sub) -> None:
    s = sub.add_parser("sweep", help="plan, run, inspect or submit a sweep of runs")
    ss = s.add_subparsers(dest="sweep_command", required=True, metavar="ACTION")

    p = ss.add_parser(
        "plan", help="print every run (N, D, C, steps, epochs, memory, time) and refuse sweeps that cannot run",
        description="Plan a sweep: every run resolved, its epochs over the corpus, memory per device and time, for this "
                    "machine or (--device, --devices) for the accelerators it will run on, from any machine.",
    )
    p.add_argument("sweep", help="sweep YAML")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base run-config field, e.g. data.source=DIR (use the same with sweep run)")
    p.add_argument("--device", default=None, help="plan for this accelerator: h100, h200, a100, a100-40, tpu-v4, tpu-v5e, tpu-v5p (default: this machine)")
    p.add_argument("--devices", type=int, default=None, help="--device: how many (default 1)")
    p.add_argument("--mfu", type=float, default=None, help="--device: the fraction of the bf16 peak a step sustains (default 0.4)")
    p.set_defaults(func=cmd_plan)

    r = ss.add_parser("run", help="run every run not yet completed (resumes interrupted runs)")
    r.add_argument("sweep", help="sweep YAML")
    r.add_argument("--out", help="sweep directory (default runs/NAME)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base run-config field, e.g. data.source=DIR (recorded in SWEEP_DIR/sweep.yaml)")
    r.add_argument("--shard", help="static partition i/n: run only every n-th run starting at i")
    r.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed or diverged")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--stack", type=int, default=1, metavar="M",
                   help="train up to M runs that differ only in seed / lr in one compiled step, each bit-identical to "
                        "training it alone and with its own record (default 1: every run alone; on 2 CPU cores a stack of "
                        "4 small models measured 1.2-1.6x the tokens/s, benchmarks/RESULTS.md)")
    r.add_argument("--devices-per-worker", type=int, default=None, metavar="K",
                   help="run one worker per K devices of this host, each pinned to its own devices (GPUs or CPU devices); "
                        "the workers share the sweep's claims, so every run trains once")
    r.add_argument("--adaptive", action="store_true", help="isoflop: after each round, add sizes where a budget's minimum is not "
                   "bracketed or its N_opt interval is wide (recorded in SWEEP_DIR/adaptive.json and events.jsonl)")
    r.add_argument("--target-dex", type=float, default=None, help="--adaptive: width of each budget's 95%% N_opt interval to reach, in log10 N (default 0.1)")
    r.add_argument("--max-added", type=int, default=None, help="--adaptive: at most this many added sizes (each one run per seed; default 3 per budget)")
    r.set_defaults(func=cmd_run)

    st = ss.add_parser("status", help="table of runs: completed / running / failed / pending, losses, progress")
    st.add_argument("sweep_dir")
    st.set_defaults(func=cmd_status)

    fl = ss.add_parser(
        "fit-lr", help="fit the best lr of an lr_scan sweep as a law of N and D; write SWEEP_DIR/recipe.json for recipe: {from: SWEEP_DIR}",
        description="Per (N, D) point of an lr tuning sweep (a sweep with lr_scan), the best lr (a parabola in log lr through the best "
                    "run and its neighbours; points whose best lr is at an end of the scan are left out, noted); then "
                    "log lr* = log lr_base + a log(N/N_ref) + b log(D/D_ref) by least squares. Writes SWEEP_DIR/recipe.json (the law, "
                    "what it was tuned under: corpus, tokenizer, seq_len, batch, parametrization, optimizer) and SWEEP_DIR/lr_scan.png.",
    )
    fl.add_argument("sweep_dir")
    fl.set_defaults(func=cmd_fit_lr)

    sb = ss.add_parser("submit", help="submit workers to a cluster (slurm job array through submitit)")
    sb.add_argument("sweep", help="sweep YAML")
    sb.add_argument("--backend", choices=["slurm"], default="slurm")
    sb.add_argument("--out", help="sweep directory on the shared filesystem (default runs/NAME)")
    sb.add_argument("--workers", type=int, default=4, help="array tasks; each claims runs until none are left")
    sb.add_argument("--partition", default=None)
    sb.add_argument("--gpus", type=int, default=1, help="GPUs per node")
    sb.add_argument("--nodes", type=int, default=1, help="hosts per worker: each array task is one JAX job over this many nodes")
    sb.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per task (data loading, compilation; default 8)")
    sb.add_argument("--devices-per-worker", type=int, default=None, metavar="K", help="each task runs one worker per K of its GPUs (small models)")
    sb.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base run-config field (passed to every worker)")
    sb.add_argument("--timeout-min", type=int, default=24 * 60)
    sb.add_argument("--slurm", action="append", metavar="KEY=VALUE", help="extra submitit slurm parameter (e.g. account=abc)")
    sb.add_argument("--dry-run", action="store_true", help="go through the submission with a stub sbatch: print and keep the exact script, submit nothing")
    sb.set_defaults(func=cmd_submit)


__all__ = ["add_sweep_parser"]
