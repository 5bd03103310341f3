"""The `study` and `study-report` commands: their flags, and the study command from a sweep file
to `study_summary.json` (see the package docstring for how to run them)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, TrainConfig
from ..config_cli import add_nproc_argument, add_set_argument, parse_overrides
from ..errors import RunFailure
from ..redact import STORAGE_ENV, redact_url
from ..results import write_json
from ..sweep_spec import SweepSpec, load_spec, safe_name
from ..tracking import shared_store
from .report import report
from .storage import JOURNAL_NAME, load_or_create, open_storage, storage_url, target_trials
from .summary import SUMMARY_NAME, best_params, describe, flat_summary, study_params, study_summary
from .trial import TrialSettings
from .workers import run_workers, work, worker_gpus


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    storage_help = f"URL or journal file (default ${STORAGE_ENV}, else OUT/{JOURNAL_NAME})"
    if command == "study-report":
        p.add_argument("--out", default=None, help="the study's output dir (figures go here)")
        p.add_argument("--storage", default=None, help=storage_help)
        p.add_argument("--study-name", default=None, help="default: the only study in storage")
        return
    p.add_argument("sweep_file", help="a sweep file (see sweeps/)")
    p.add_argument("--n-trials", type=int, default=None, help="trials in total (all workers)")
    p.add_argument("--storage", default=None, help=storage_help)
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument(
        "--gpus",
        default=None,
        help="auto, or device indices such as 0,1,2,3: each worker process gets its own "
        "CUDA_VISIBLE_DEVICES, dealt round-robin (more workers than GPUs share them)",
    )
    add_nproc_argument(p)
    p.add_argument("--study-name", default=None, help="default: the sweep file's name")
    p.add_argument(
        "--out", default=None, help="output dir (default OUT_DIR/studies/STUDY_NAME; out_dir: runs)"
    )
    p.add_argument(
        "--pruner",
        choices=("auto", "median", "hyperband", "none"),
        default="auto",
        help="auto: hyperband if the file has early_terminate, none for a grid, else median",
    )
    add_set_argument(p, "fix a config field for every trial (repeatable)")
    p.add_argument("--track", default=None, help="trackers for each trial: wandb,mlflow")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between trial heartbeats")
    p.add_argument(
        "--grace",
        type=int,
        default=60,
        help="seconds without a heartbeat after which a running trial is failed",
    )
    p.add_argument("--max-retry", type=int, default=2, help="retries of a killed trial")
    p.add_argument(
        "--create-only",
        action="store_true",
        help="create the storage and the study, then exit (once, before other machines start)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mlflow-parent", default=None, help=argparse.SUPPRESS)


def run(command: str, args: argparse.Namespace) -> int:
    _quiet_optuna()
    if command == "study-report":
        return report(args)
    return study_command(args)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # we print one line per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


@dataclass(frozen=True)
class StudyPlan:
    """What the command line resolves to, checked before any storage is touched."""

    name: str
    spec: SweepSpec  # the sweep file with --set, --track and the output root's MLflow store
    out: Path  # the study's directory: trials/, the journal, the lock, study_summary.json
    storage_url: str  # may hold a password: shown only through redact_url
    n_trials: int  # the cap, across all workers
    gpus: list[str] | None  # each worker's CUDA_VISIBLE_DEVICES (--gpus)


def plan_study(args: argparse.Namespace) -> StudyPlan:
    overrides = parse_overrides(args.overrides)
    if args.track is not None:
        overrides["track"] = args.track
    check_study_args(args)
    spec = load_spec(args.sweep_file, overrides)
    gpus = worker_gpus(args, spec)  # a bad --gpus fails before any storage is touched
    name = safe_name(args.study_name or spec.name, "--study-name" if args.study_name else "name")
    root = TrainConfig.from_dict(spec.base)  # out_dir: the output root of the study's runs
    out = Path(args.out or Path(root.out_dir) / "studies" / name)
    url = storage_url(args.storage, out)
    # the parent run and its trials in the MLflow store of the output root, beside the plain
    # runs there (`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows all of them)
    spec = spec.with_overrides(shared_store(root))
    return StudyPlan(name, spec, out, url, target_trials(spec, args.n_trials), gpus)


def check_study_args(args: argparse.Namespace) -> None:
    """The numbers a study runs by: one line naming the flag and what it allows."""
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be >= 1")
    if args.n_trials is not None and args.n_trials < 1:
        raise ConfigError(f"--n-trials {args.n_trials}: must be >= 1")
    if args.heartbeat <= 0:
        raise ConfigError(f"--heartbeat {args.heartbeat}: must be > 0 seconds")
    if args.grace <= args.heartbeat:
        raise ConfigError(
            f"--grace {args.grace}: must be longer than --heartbeat {args.heartbeat} "
            "(else live trials are failed as stale)"
        )
    if args.max_retry < 0:
        raise ConfigError(f"--max-retry {args.max_retry}: must be >= 0")


def trial_settings(args: argparse.Namespace, spec: SweepSpec) -> TrialSettings:
    fixed: dict[str, Any] = {}
    procs = args.workers * args.nproc_per_trial
    if procs > 1 and spec.base.get("threads", 0) == 0:
        # the training processes share the cores instead of each taking all of them
        fixed["threads"] = max(1, (os.cpu_count() or 1) // procs)
    return TrialSettings(
        heartbeat=args.heartbeat,
        max_retry=args.max_retry,
        nproc=args.nproc_per_trial,
        mlflow_parent=args.mlflow_parent,
        fixed=fixed,
    )


def study_command(args: argparse.Namespace) -> int:
    plan = plan_study(args)
    storage = open_storage(plan.storage_url, args.heartbeat, args.grace, args.max_retry)
    study = load_or_create(storage, plan.name, plan.spec, args)
    if args.create_only:
        print(
            f"study {plan.name!r} ready in {redact_url(plan.storage_url)} ({plan.n_trials} trials)"
        )
        return 0
    settings = trial_settings(args, plan.spec)
    if args.worker:
        work(study, storage, plan.spec, plan.out, plan.n_trials, args.grace, settings)
        return 0
    parent = _start_parent(plan.spec, plan.name, plan.out)
    settings = dataclasses.replace(settings, mlflow_parent=parent.mlflow_run_id if parent else None)
    if parent:
        parent.log_params(study_params(plan.spec, study, args, settings.fixed))
    print(
        f"study {plan.name!r}: {plan.n_trials} trials, {args.workers} worker(s), "
        f"storage {redact_url(plan.storage_url)}, out {plan.out}",
        flush=True,
    )
    status = "FAILED"
    try:
        died = _run_trials(args, plan, study, storage, settings)
        _finish(plan, study, parent)
        if died:
            raise RunFailure(
                f"study {plan.name!r}: {len(died)} worker(s) died (exit codes {died}); "
                "run the same command again to continue (their trials are retried)"
            )
        status = "FINISHED"
    finally:
        if parent:
            parent.finish(status)
    return 0


def _run_trials(
    args: argparse.Namespace, plan: StudyPlan, study: Any, storage: Any, settings: TrialSettings
) -> list[int]:
    """In this process (one worker, no --gpus), or in worker processes; returns the exit codes
    of the workers that died."""
    if args.workers == 1 and plan.gpus is None:
        work(study, storage, plan.spec, plan.out, plan.n_trials, args.grace, settings)
        return []
    return run_workers(
        worker_args(args, plan, settings.mlflow_parent),
        args.workers,
        args.seed,
        plan.storage_url,
        plan.name,
        plan.gpus,
    )


def _finish(plan: StudyPlan, study: Any, parent: Any) -> None:
    """study_summary.json, the parent run's best params and summary, the console lines."""
    summary = study_summary(study, plan.spec)
    write_json(plan.out / SUMMARY_NAME, summary)
    if parent:
        parent.log_params(best_params(summary))
        parent.log_summary(flat_summary(summary))
        parent.log_artifact(plan.out / SUMMARY_NAME)
    print(describe(summary, plan.out))


def _start_parent(spec: SweepSpec, name: str, out: Path) -> Any:
    from ..tracking import start_study_run

    if not spec.base.get("track"):
        return None
    return start_study_run(
        {
            k: v
            for k, v in spec.base.items()
            if k in ("track", "project", "mlflow_uri", "wandb_mode")
        }
        | {"out_dir": str(out)},
        study_name=name,
        kind="optuna",
        run_dir=out / "study-run",
        resume=True,
    )


# never on a worker's command line: the storage URL goes through the environment (it may hold a
# password), the parent deals the GPUs, each worker gets its own --seed (run_workers adds it)
NOT_FOR_WORKERS = {"storage", "gpus", "seed", "create_only"}


def worker_args(args: argparse.Namespace, plan: StudyPlan, mlflow_parent: str | None) -> list[str]:
    """The worker processes' arguments: this command's parsed arguments written back as flags
    (so a new flag is defined once, in add_arguments), with the names the parent resolved."""
    values = {
        **vars(args),
        "study_name": plan.name,
        "out": str(plan.out),
        "n_trials": plan.n_trials,
        "worker": True,
        "mlflow_parent": mlflow_parent,
    }
    argv: list[str] = []
    for action in _study_actions():
        value = values.get(action.dest)
        if action.dest in NOT_FOR_WORKERS or value is None or value is False:
            continue
        if not action.option_strings:  # the sweep file
            argv.insert(0, str(value))
        elif action.nargs == 0:  # a switch (store_true)
            argv.append(action.option_strings[0])
        elif isinstance(value, list):  # a repeatable flag (--set)
            argv += [item for v in value for item in (action.option_strings[0], str(v))]
        else:
            argv += [action.option_strings[0], str(value)]
    return argv


def _study_actions() -> list[argparse.Action]:
    """The study command's flags. argparse has no public list of a parser's actions; `_actions`
    is the one private attribute used here (stable since Python 3.2)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments("study", parser)
    return list(parser._actions)
