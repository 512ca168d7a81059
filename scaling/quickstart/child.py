"""The quickstart's child processes, started as ``python -m scaling.quickstart.child``:

* ``sweeps A.yaml DIR_A [B.yaml DIR_B ...]``: a helper worker that runs ``scaling sweep run`` on each sweep in turn
  (the next only when the previous one finished), beside the quickstart process on the same directories;
* ``heldout CONFIG.yaml RUN_DIR RUN_ID [--progress]``: the held-out run, data-parallel over the host devices the
  parent set in ``XLA_FLAGS``.

Both stop as preempted (SIGTERM to themselves: checkpointed, resumable) when their parent dies, so a killed
quickstart leaves no orphan training on.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time


def _exit_with_parent() -> None:
    """SIGTERM this process (a preemption: checkpoint and exit) once its parent has gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def run_sweeps(pairs: list[str]) -> int:
    """``scaling sweep run YAML --out DIR --no-progress`` for each pair, through the sweep's own parser (not the
    top-level CLI, which imports the quickstart)."""
    from scaling.sweep.cli import add_sweep_parser

    os.environ.pop("WANDB_SERVICE", None)  # as scaling.cli.main: this process owns its wandb service
    parser = argparse.ArgumentParser(prog="scaling")
    add_sweep_parser(parser.add_subparsers(dest="command"))
    rc = 0
    for yaml_path, out in zip(pairs[::2], pairs[1::2]):
        args = parser.parse_args(["sweep", "run", yaml_path, "--out", out, "--no-progress"])
        rc = rc or int(args.func(args) or 0)
    return rc


def run_heldout(config: str, out: str, run_id: str, progress: bool) -> int:
    from scaling.signals import StopFlag

    stop = StopFlag().install()
    from scaling import exits
    from scaling.config import load_config
    from scaling.train import StopRequested, train
    from scaling.ui import progress_bar

    try:
        with progress_bar(progress) as bar:
            train(load_config(config), out, progress=bar, should_stop=stop, run_id=run_id)
    except StopRequested:
        return stop.exit_code
    except Exception as e:  # the record keeps the traceback; the terminal gets one line
        return exits.fail(f"{type(e).__name__}: {e}", exits.FAILED, prefix="held-out run")
    return exits.OK


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scaling.quickstart.child", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sweeps")
    s.add_argument("pairs", nargs="+", metavar="SWEEP.yaml DIR")
    h = sub.add_parser("heldout")
    h.add_argument("config")
    h.add_argument("out")
    h.add_argument("run_id")
    h.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    if args.what == "sweeps" and len(args.pairs) % 2:
        p.error("sweeps takes SWEEP.yaml DIR pairs")
    _exit_with_parent()
    if args.what == "sweeps":
        return run_sweeps(args.pairs)
    return run_heldout(args.config, args.out, args.run_id, args.progress)


if __name__ == "__main__":
    sys.exit(main())
