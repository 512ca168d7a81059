"""``scaling`` command line: a thin shell over the library.

    scaling train CONFIG.yaml [--set key=value ...] --out RUN_DIR
    scaling bench [CONFIG.yaml] [--preset NAME] [--moe]
    scaling memory [CONFIG.yaml] [--set parallel.fsdp=8] [--device h100] [--devices 8]
    scaling data prepare SOURCE --tokenizer byte|bpe|tokenizer.json --out DIR;  scaling data inspect DIR [--verify]
    scaling sweep plan|run|status|submit SWEEP.yaml ...
    scaling fit LAW RUNS.csv ...          (LAW: any registered law, e.g. chinchilla, surface, frontier; or isoflop)
    scaling predict FIT.json --N ... --D ...
    scaling validate RUNS.csv --law all --cutoff-flops ...
    scaling plot KIND RUNS.csv --out FILE
    scaling quickstart [--tiny] [--out DIR]

Exit codes: 0 success, 1 failure, 2 bad input (config, arguments, a damaged file), 3 a run diverged, 74 storage
failure (disk full, read-only or lost mount: the last checkpoint is kept; rerun to resume), 75 preempted (SIGUSR2 /
SIGTERM: checkpointed, requeue or rerun to resume), 130 stopped by Ctrl-C (resumable).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from scaling import exits


def config_help() -> str:
    from scaling.config import describe_fields

    lines = ["config fields (YAML sections; any can be set with --set section.field=value):", ""]
    for name, typ, doc in describe_fields():
        if typ == "section":
            lines.append(f"{name}:  {doc}")
            continue
        lines.append(f"  {name}  ({typ})")
        lines.extend(textwrap.wrap(doc, 100, initial_indent="      ", subsequent_indent="      "))
    lines += [
        "",
        "model also accepts 'preset: NAME' (10k, 100k, 1m, 10m, 100m, 1b) or 'target_params: N' to start from a",
        "sized config; other model fields then override it.",
    ]
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from scaling.signals import StopFlag

    stop = StopFlag().install()  # first: a preemption signal during start-up must not kill the process
    from scaling.config import ConfigError, load_config

    overrides = list(args.set or [])
    if args.wandb:
        overrides.append(f"log.wandb={args.wandb}")
    if args.no_progress:
        overrides.append("log.progress=false")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        return exits.fail(str(e), prefix="config error")
    from scaling.train import DivergedError, StopRequested, train
    from scaling.ui import progress_bar

    from scaling.storage import quiet_library_noise, storage_cause, storage_message

    _one_line_warnings()
    quiet_library_noise()
    from scaling.remote import local_workdir

    try:  # an object-storage --out is worked in a local copy, pushed periodically and at the end (scaling/remote.py)
        with local_workdir(args.out) as out, progress_bar(cfg.log.progress) as progress:
            record = train(cfg, out, progress=progress, should_stop=stop, resume_anyway=args.resume_anyway)
    except DivergedError as e:
        return exits.fail(str(e), exits.DIVERGED, prefix="run diverged")
    except StopRequested as e:
        return exits.fail(str(e), stop.exit_code, prefix="")
    except Exception as e:
        from scaling.remote import PushFailed

        if isinstance(e, PushFailed):
            return exits.fail(str(e), exits.IOERR, prefix="storage error")
        if storage_cause(e):  # before ValueError: orbax and TensorStore report a full disk as one
            return exits.fail(f"{storage_message(e, args.out)}; the last checkpoint is kept: free space or fix the mount, then rerun to resume",
                              exits.IOERR, prefix="storage error")
        if isinstance(e, ConfigError):
            return exits.fail(str(e), prefix="config error")
        if isinstance(e, ValueError):
            return exits.fail(str(e))
        raise
    import jax

    if jax.process_index() != 0:
        return 0
    print(
        f"run {record['run_id']} completed: N={record['n_params']:,} D={record['tokens']:,} C={record['flops']:.3e} "
        f"train loss {record['final_train_loss']:.4f} eval loss {record['final_eval_loss']:.4f} "
        f"± {record['final_eval_loss_stderr']:.4f}  ({record['tokens_per_sec']:,.0f} tok/s)  -> {args.out}/record.json"
    )
    return 0


def _one_line_warnings() -> None:
    """Measurement warnings (repeated data, a checkpoint set aside, ...) as one 'warning: ...' line each on stderr;
    the record keeps them too."""
    import warnings

    from scaling.train.errors import MeasurementWarning

    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, MeasurementWarning):
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line


def cmd_memory(args: argparse.Namespace) -> int:
    import json

    from scaling.config import ConfigError, load_config
    from scaling.memory import plan_memory, xla_memory

    try:
        cfg = load_config(args.config, args.set)
        plan = plan_memory(cfg, args.device.lower(), args.devices)
    except ConfigError as e:
        return exits.fail(str(e), prefix="config error")
    out = plan.as_dict()
    if args.xla:
        try:
            out["xla"] = xla_memory(cfg)
        except ConfigError as e:
            return exits.fail(f"{e} (--xla compiles on this machine's devices)", prefix="config error")
    if args.json:
        print(json.dumps(out))
        return 0
    gb = lambda b: f"{b / 1e9:10.3f} GB"  # noqa: E731
    mesh = " x ".join(f"{k}={v}" for k, v in plan.mesh.items())
    lines = [
        f"per device, {plan.n_devices} x {plan.device} ({mesh}), remat={plan.remat}:",
        f"  parameters      {gb(plan.params)}   (float32, sharded by logical axes; all experts stored)",
        f"  gradients       {gb(plan.grads)}",
        f"  optimizer state {gb(plan.optimizer)}   (AdamW: two float32 moments)",
    ]
    for k, v in plan.activations.items():
        lines.append(f"  activations     {gb(v)}   (remat={k}){'  <- this config' if k == plan.remat else ''}")
    lines.append(f"  total           {gb(plan.total)}   of {plan.device_memory / 1e9:.1f} GB: {'fits' if plan.fits else 'DOES NOT FIT'}")
    if "xla" in out:
        x = out["xla"]
        lines.append(f"  XLA (compiled here): arguments {x['argument'] / 1e9:.3f} GB + temp {x['temp'] / 1e9:.3f} GB = {x['total'] / 1e9:.3f} GB")
    print("\n".join(lines))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from scaling.bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scaling", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train one model (resumes if RUN_DIR has a checkpoint)",
        description="Train one decoder LM from a YAML config. Rerunning the same command resumes from the last checkpoint.",
        epilog=config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("config", nargs="?", help="YAML run config (omit to use the defaults)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. train.lr=1e-3")
    t.add_argument("--out", required=True, help="run directory (created; reused to resume); a gs:// or s3:// URL is worked in a local copy and mirrored to it")
    t.add_argument("--wandb", choices=["offline", "online", "disabled"], help="W&B mode (default from config: offline)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--resume-anyway", action="store_true",
        help="continue from RUN_DIR's checkpoint although it was written under a different config (recorded as a warning)",
    )
    t.set_defaults(func=cmd_train)

    b = sub.add_parser("bench", help="measure tokens/s, step time, compile time and MFU of a config")
    b.add_argument("config", nargs="?", help="YAML run config (default: preset)")
    b.add_argument("--preset", default=None, help="model preset (10k, 100k, 1m, 10m, 100m, 1b)")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    b.add_argument("--steps", type=int, default=20, help="timed steps (after warm-up)")
    b.add_argument("--moe", action="store_true", help="also benchmark an MoE model and the dense model of equal active parameters")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=cmd_bench)

    mp = sub.add_parser(
        "memory",
        help="bytes per device to train a config: parameters, gradients, optimizer state, activations; does it fit?",
        description="Memory planner (scaling/memory.py): per-device bytes on the mesh of the parallel: section.",
    )
    mp.add_argument("config", nargs="?", help="YAML run config (omit to use the defaults)")
    mp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. parallel.fsdp=8")
    mp.add_argument("--device", default="cpu", help="h100, h200, a100, a100-40, tpu-v4, tpu-v5e, tpu-v5p or cpu (default)")
    mp.add_argument("--devices", type=int, default=None, help="number of devices (default: what parallel: names, -1 counting as 1)")
    mp.add_argument("--xla", action="store_true", help="also compile the train step on this machine and print XLA's own per-device bytes")
    mp.add_argument("--json", action="store_true", help="print one JSON object")
    mp.set_defaults(func=cmd_memory)

    from scaling.data.cli import add_data_parser

    add_data_parser(sub)
    from scaling.sweep.cli import add_sweep_parser

    add_sweep_parser(sub)
    from analysis.cli import add_analysis_parsers

    add_analysis_parsers(sub)
    from scaling.quickstart.cli import add_quickstart_parser

    add_quickstart_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # wandb exports its service address (WANDB_SERVICE) so child processes share the parent's service; a command
    # started by a process that uses wandb would then register its runs there, and a rerun after a SIGKILL would
    # find its own run id still "in use". Each command owns its wandb service.
    os.environ.pop("WANDB_SERVICE", None)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
