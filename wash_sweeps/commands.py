"""`wash-sweeps train`, `demo` and `fields`: single runs from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from .config import ConfigError, TrainConfig, field_help
from .config_cli import add_config_arguments, from_args
from .presets import PRESETS
from .results import RunDir


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    if command == "train":
        add_config_arguments(p)
        p.add_argument(
            "--resume",
            metavar="RUN_DIR",
            default=None,
            help="continue the run in RUN_DIR from its checkpoint (its config is reused)",
        )
        p.add_argument(
            "--workdir",
            default=None,
            help="run directory (default: out_dir/run_name, else a name ending in a config hash)",
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace a finished run (or a run of another config) in the run directory",
        )
        p.add_argument(
            "--track", default=None, help="trackers: wandb,mlflow (sets the track field)"
        )
        p.add_argument(
            "--distributed",
            action="store_true",
            help="one member (or a slice) per torch.distributed process (torchrun)",
        )
        # a sweep's trial run as a job: its MLflow run nests under the study's
        p.add_argument("--mlflow-parent", default=None, help=argparse.SUPPRESS)
    elif command == "demo":
        p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
        p.add_argument("--out-dir", default="runs/demo", help="where the demo's runs go")
        p.add_argument("--methods", default="independent,papa,wash", help="comma list of methods")
        p.add_argument("--seed", type=int, default=0, help="base seed of every run")
        p.add_argument("--jobs", type=int, default=2, help="runs side by side (one thread each)")


def run(command: str, args: argparse.Namespace) -> int:
    return {"train": _train, "demo": _demo, "fields": _fields}[command](args)


def _config_for(args: argparse.Namespace) -> tuple[TrainConfig, Path | None, bool]:
    if args.resume:
        return _resume_config(Path(args.resume), args.overwrite), Path(args.resume), True
    if args.workdir and Path(args.workdir).exists() and not Path(args.workdir).is_dir():
        raise ConfigError(f"--workdir {args.workdir!r}: is a file, not a directory")
    cfg = from_args(args)
    if args.track is not None:
        cfg = cfg.replace(track=args.track)
    return cfg, Path(args.workdir) if args.workdir else None, False


def _resume_config(run_dir: Path, overwrite: bool) -> TrainConfig:
    """The config of the run `--resume` continues: it needs the run's config and checkpoint."""
    if overwrite:
        raise ConfigError("--resume and --overwrite: give one (continue the run, or replace it)")
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {str(run_dir)!r}: no such directory")
    rd = RunDir(run_dir)
    config = rd.previous_config()
    if config is None:
        raise ConfigError(f"--resume {str(run_dir)!r}: no config.json there (not a run directory)")
    if not rd.checkpoint_path.exists():
        raise ConfigError(
            f"--resume {str(run_dir)!r}: no checkpoint.pt there, nothing to continue; start the "
            "run again with --overwrite"
        )
    try:
        return TrainConfig.from_dict(config)
    except ConfigError as e:
        raise ConfigError(f"--resume {str(run_dir)!r}: config.json: {e}") from None


def _train(args: argparse.Namespace) -> int:
    cfg, workdir, resume = _config_for(args)
    if args.distributed:
        from .distributed import train_distributed

        summary = train_distributed(
            cfg,
            workdir,
            resume=resume,
            mlflow_parent_run_id=args.mlflow_parent,
            overwrite=args.overwrite,
        )
        if summary is None:  # not rank 0
            return 0
    else:
        from .launch import run_one

        summary = run_one(
            cfg,
            cfg.run_dir(workdir),
            resume=resume,
            overwrite=args.overwrite,
            mlflow_parent=args.mlflow_parent,
        )
    print(format_summary(summary))
    return 0


def _accuracy_lines(s: dict, split: str, name: str) -> list[str]:
    """Accuracy in % on one split (`test`: reported; `val`: what decisions are made on)."""
    if f"{split}/acc_avg" not in s:
        return []

    def pct(key: str) -> str:
        return f"{100 * s.get(f'{split}/{key}', float('nan')):.1f}"

    line = (
        f"{name}  averaged {pct('acc_avg')}%   ensemble {pct('acc_ens')}%   members "
        f"{pct('acc_member_mean')}% (min {pct('acc_member_min')}, max {pct('acc_member_max')})"
        f"   greedy soup {pct('acc_greedy')}% ({s.get('val/greedy_size', 0)} members)"
    )
    lines = [line]
    if f"{split}/acc_avg_bn" in s:
        lines.append(f"          averaged with BN re-estimated {pct('acc_avg_bn')}%")
    return lines


def format_summary(s: dict) -> str:
    c = s["config"]
    lines = [
        f"run       {s['run_dir']}",
        f"method    {c['method']}  N={c['n_members']}  p={c['p']:g} ({c['layer_schedule']})  "
        f"{c['dataset']}/{c['model']}  {c['epochs']} epochs  seed {c['seed']}",
        *_accuracy_lines(s, "test", "test    "),
        *_accuracy_lines(s, "val", "val     "),
    ]
    lines += [
        f"diversity consensus {s['div/consensus']:.4g}   pairwise L2 {s['div/pairwise_l2']:.4g}"
        f"   disagreement {s['div/disagreement']:.4f}   KL {s['div/kl']:.4f}",
        f"barrier   member pairs {s.get('barrier/mean', float('nan')):.4f} (max "
        f"{s.get('barrier/max', float('nan')):.4f})   member-average "
        f"{s.get('barrier/member_avg_mean', float('nan')):.4f}",
        f"comm      {s['comm/bytes_total'] / 1e6:.3f} MB total "
        f"({s['comm/bytes_per_step'] / 1e3:.2f} kB/step; data-parallel SGD would send "
        f"{s['comm/dp_sgd_bytes_total'] / 1e6:.1f} MB)",
        f"time      {s['time/train_s']:.1f} s training, {s['time/samples_per_s']:.0f} samples/s",
    ]
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def _fields(args: argparse.Namespace) -> int:
    default = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        print(f"{f.name:<24} {json.dumps(getattr(default, f.name)):<14} {field_help(f.name)}")
    print(f"\npresets: {', '.join(PRESETS)}")
    return 0
