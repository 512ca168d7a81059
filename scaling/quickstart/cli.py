"""``scaling quickstart``: the command line of the end-to-end job (``scaling.quickstart``)."""

from __future__ import annotations

import argparse

from scaling import exits
from scaling.config import ConfigError
from scaling.quickstart.pipeline import run_quickstart
from scaling.quickstart.processes import QuickstartError


def cmd_quickstart(args) -> int:
    from scaling.data.cli import _bad_input_types
    from scaling.signals import StopFlag
    from scaling.train import StopRequested

    stop = StopFlag().install()
    try:
        out = args.out or ("quickstart_out" + (f"_seed{args.seed}" if args.seed else "") + ("_tiny" if args.tiny else ""))
        run_quickstart(out, tiny=args.tiny, data=args.data, wandb=args.wandb, progress=not args.no_progress, should_stop=stop, seed=args.seed)
    except ConfigError as e:
        return exits.fail(str(e), prefix="config error")
    except _bad_input_types() as e:  # --data names a corpus that cannot be prepared (too small, unreadable, ...)
        return exits.fail(str(e), prefix="data error")
    except QuickstartError as e:
        return exits.fail(str(e), exits.FAILED)
    except (KeyboardInterrupt, StopRequested):
        return exits.fail("rerun the same command to resume", stop.exit_code, prefix=stop.status if stop.stop else "stopped")
    return exits.OK


def add_quickstart_parser(sub) -> None:
    q = sub.add_parser(
        "quickstart",
        help="train an IsoFLOP sweep of WSD branches, fit the compute frontier, predict a 10x larger held-out run, train it, report",
        description=_description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--out", default=None, help="output directory (rerun to resume; default quickstart_out[_seedN][_tiny])")
    q.add_argument("--seed", type=int, default=0, help="seed of every run's data order and initialisation (default 0)")
    q.add_argument("--tiny", action="store_true", help="reduced size (a few minutes; what CI runs)")
    q.add_argument("--data", default="stdlib", help="'stdlib' (default), 'synthetic' or a path to a corpus")
    q.add_argument("--wandb", choices=["offline", "online", "disabled"], default="offline")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_quickstart)


def _description() -> str:
    import scaling.quickstart

    return scaling.quickstart.__doc__
