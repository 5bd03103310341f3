"""The config's command-line flags: `--preset`, `--config FILE`, repeated `--set FIELD=VALUE`,
and `--nproc-per-trial` of the sweep commands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .config import ConfigError, TrainConfig
from .presets import PRESETS

# --- CLI ------------------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --config FILE and repeated --set field=value (fields are TrainConfig's)."""
    parser.add_argument(
        "--preset",
        default=None,
        help=f"one of: {', '.join(PRESETS)} (default: mnist1d-fast, or the --config file's)",
    )
    parser.add_argument(
        "--config", default=None, help="YAML file of field: value (may name a preset)"
    )
    add_set_argument(parser, "override one config field (repeatable); see `wash-sweeps fields`")


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """The repeatable `--set FIELD=VALUE` flag (read back with `parse_overrides`)."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help=help
    )


def add_nproc_argument(parser: argparse.ArgumentParser) -> None:
    """`--nproc-per-trial K` of the sweep commands: each trial a torchrun job of K processes."""

    def at_least_one(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value}: must be >= 1")
        return value

    parser.add_argument(
        "--nproc-per-trial",
        type=at_least_one,
        default=1,
        help="run each trial under torchrun with this many processes (members split over them)",
    )


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = parse_overrides(args.overrides)
    if args.config:
        extra = {"preset": args.preset} if args.preset else {}
        return TrainConfig.from_yaml(args.config, **extra, **overrides)
    return TrainConfig.from_preset(args.preset or "mnist1d-fast", **overrides)
