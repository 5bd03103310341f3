"""The command line: `wash-sweeps COMMAND ...` (also `python -m wash_sweeps`).

    wash-sweeps train --preset mnist1d-fast --set method=wash --set p=0.003
    wash-sweeps train --resume runs/mnist1d-wash-N5-p0.003-s0-1a2b3c   # name ends in a config hash
    wash-sweeps demo                  # the default demo: every method on MNIST-1D, one table
    wash-sweeps fields                # every config field with its unit and default
    wash-sweeps study | study-report | wandb-sweep | figures | bench   (see --help of each)
    wash-sweeps --version             # the version and the git commit it runs from

Each subcommand lives in the module of its concern and is imported only when used.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from .config import ConfigError
from .console import say
from .errors import RunFailure, interrupted
from .redact import redact_text

# command -> (module, help, example); each module has add_arguments(parser) and run(args) -> int
COMMANDS = {
    "train": (
        "wash_sweeps.commands",
        "train one population (or resume a run directory)",
        "wash-sweeps train --preset tiny --set method=wash --set p=0.02 --track mlflow",
    ),
    "demo": (
        "wash_sweeps.commands",
        "independent, PAPA and WASH on digits (< 2 min): one table, one figure",
        "wash-sweeps demo --epochs 5 --methods papa,wash",
    ),
    "fields": (
        "wash_sweeps.commands",
        "list every config field, its unit and default",
        "wash-sweeps fields | grep papa",
    ),
    "study": (
        "wash_sweeps.study",
        "run (or continue) an Optuna study from a sweep file",
        "wash-sweeps study sweeps/wash_p.yaml --n-trials 30 --workers 2 --track mlflow",
    ),
    "study-report": (
        "wash_sweeps.study",
        "draw an Optuna study's figures as PNGs",
        "wash-sweeps study-report --out runs/studies/wash-p",
    ),
    "wandb-sweep": (
        "wash_sweeps.wandb_sweep",
        "run a W&B sweep (online agent or offline controller)",
        "wash-sweeps wandb-sweep sweeps/method_grid.yaml --set epochs=5",
    ),
    "grid": (
        "wash_sweeps.grid",
        "train every run params.yaml lists, several side by side",
        "wash-sweeps grid params.yaml --out outputs/runs",
    ),
    "dvc-params": (
        "wash_sweeps.grid",
        "write (or --check) params.yaml's runs from sweep files",
        "wash-sweeps dvc-params --check",
    ),
    "figures": (
        "wash_sweeps.analysis.figures",
        "draw the paper's figures from result files",
        "wash-sweeps figures --tables docs/results/tables --out /tmp/figures",
    ),
    "showcase": (
        "wash_sweeps.showcase",
        "the fair comparison: tune every method, then plan its runs",
        "wash-sweeps showcase tune sweeps/showcase.yaml --task digits",
    ),
    "bench": (
        "wash_sweeps.benchmarks.run",
        "measure training, shuffle and exchange speed",
        "wash-sweeps bench --tiny",
    ),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default after its help (none for flags without one: None, False, []); the
    description and the example epilog kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class _Version(argparse.Action):
    """`--version`: the package version and the git commit it runs from (computed only when
    asked: it runs git)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any):
        kw.setdefault("help", "print the version and the git commit, then exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_line())  # stdout, as argparse's own version action
        parser.exit()


def version_line() -> str:
    from . import __version__
    from .results import git_state

    git = git_state()
    if not git["git_commit"]:
        return f"wash-sweeps {__version__}"
    dirty = ", dirty" if git["git_dirty"] else ""
    return f"wash-sweeps {__version__} (git {git['git_commit'][:10]}{dirty})"


def _quiet_env() -> None:
    # no telemetry, no network lookups by default
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (torch, optuna, mlflow load slowly)."""
    parser = argparse.ArgumentParser(
        prog="wash-sweeps",
        description=__doc__.splitlines()[0],
        epilog="examples:\n" + "\n".join(f"  {ex}" for _, _, ex in COMMANDS.values()),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_, example) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"example:\n  {example}",
            formatter_class=HelpFormatter,
        )
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
        say(f"wash-sweeps: error: {redact_text(str(e))}", sys.stderr)
        return 2
    except RunFailure as e:
        say(f"wash-sweeps: error: {redact_text(str(e))}", sys.stderr)
        return 1
    except BrokenPipeError:  # `wash-sweeps fields | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:
        if not interrupted(e):  # a Ctrl-C that a library's cleanup turned into another error
            raise
        return _interrupted()


def _interrupted() -> int:
    print("wash-sweeps: interrupted; results written so far are kept", file=sys.stderr)
    return 130
