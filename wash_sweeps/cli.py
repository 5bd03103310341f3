"""The command line: `wash-sweeps COMMAND ...` (also `python -m wash_sweeps`).

    wash-sweeps train --preset mnist1d-fast --set method=wash --set p=0.003
    wash-sweeps train --resume runs/mnist1d-wash-N5-p0.003-s0-1a2b3c   # name ends in a config hash
    wash-sweeps demo                  # the default demo: every method on MNIST-1D, one table
    wash-sweeps fields                # every config field with its unit and default
    wash-sweeps study | study-report | wandb-sweep | figures | bench   (see --help of each)

Each subcommand lives in the module of its concern and is imported only when used.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .config import ConfigError
from .errors import RunFailure
from .redact import redact_text

# command -> (module, help); each module has add_arguments(parser) and run(args) -> int
COMMANDS = {
    "train": ("wash_sweeps.commands", "train one population (or resume a run directory)"),
    "demo": ("wash_sweeps.commands", "the default demo: each method on MNIST-1D, one table"),
    "fields": ("wash_sweeps.commands", "list every config field, its unit and default"),
    "study": ("wash_sweeps.study", "run (or continue) an Optuna study from a sweep file"),
    "study-report": ("wash_sweeps.study", "draw an Optuna study's figures as PNGs"),
    "wandb-sweep": (
        "wash_sweeps.wandb_sweep",
        "run a W&B sweep (online agent or offline controller)",
    ),
    "grid": ("wash_sweeps.grid", "train every run params.yaml lists, several side by side"),
    "dvc-params": ("wash_sweeps.grid", "write (or --check) params.yaml's runs from sweep files"),
    "figures": ("analysis.figures", "draw the paper's figures from result files"),
    "bench": ("benchmarks.run", "measure training, shuffle and exchange speed"),
}


def _quiet_env() -> None:
    # no telemetry, no network lookups by default
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (torch, optuna, mlflow load slowly)."""
    parser = argparse.ArgumentParser(prog="wash-sweeps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(name, p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_env()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        mod = importlib.import_module(args._module)
        return int(mod.run(args.command, args) or 0)
    except ConfigError as e:
        print(f"wash-sweeps: error: {redact_text(str(e))}", file=sys.stderr)
        return 2
    except RunFailure as e:
        print(f"wash-sweeps: error: {redact_text(str(e))}", file=sys.stderr, flush=True)
        return 1
    except BrokenPipeError:  # `wash-sweeps fields | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("wash-sweeps: interrupted; results written so far are kept", file=sys.stderr)
        return 130
