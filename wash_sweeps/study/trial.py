"""One trial of a study: `train_and_evaluate` in `<out>/trials/trial-<number>` (or a torchrun job
with `--nproc-per-trial` > 1), reporting the sweep's metric every epoch so it may be pruned, then
telling the study how it ended: complete, pruned, or failed with its reason."""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, TrainConfig
from ..console import say
from ..errors import RunFailure, interrupted
from ..redact import redact_text
from ..results import RunFiles
from ..sweep_spec import SweepSpec
from ..tracking import make_tracker, tracker_refs
from .recovery import FAIL_REASON, Heartbeat, queue_retry, retried_from, stored_trial_id


@dataclass(frozen=True)
class TrialSettings:
    """How every trial of this process runs."""

    heartbeat: int  # seconds between the trial's heartbeats
    max_retry: int  # retries of a trial killed by Ctrl-C
    nproc: int = 1  # processes per trial: a torchrun job when > 1
    mlflow_parent: str | None = None  # the study's MLflow run, parent of each trial's run
    fixed: dict[str, Any] = field(default_factory=dict)  # config fields set for every trial


@dataclass(frozen=True)
class Attempt:
    """A trial being run: the Optuna handle, its id in the storage, its run directory (a retry
    reuses the killed trial's)."""

    trial: Any
    trial_id: int
    number: int  # the run directory's number: the killed trial's for a retry
    run_dir: Path


def run_trial(
    study: Any, storage: Any, trial: Any, spec: SweepSpec, out: Path, settings: TrialSettings
) -> None:
    """Train one trial and tell the study how it ended (complete, pruned or failed + reason)."""
    import optuna
    from optuna.trial import TrialState

    start = time.perf_counter()
    attempt = _begin(study, storage, trial, out)
    params: dict[str, Any] = {}
    state, values, note = TrialState.FAIL, None, ""
    try:
        params = spec.suggest(trial)
        cfg = _trial_config(spec, params, study, out, attempt.number, settings)
        values = _train(storage, attempt, spec, cfg, settings)
        if all(math.isfinite(v) for v in values):
            state = TrialState.COMPLETE
        else:
            note = f"non-finite objective {values}"
            trial.set_user_attr(FAIL_REASON, note)
    except KeyboardInterrupt:
        _interrupted(study, storage, trial, attempt, settings)
        raise
    except optuna.TrialPruned as e:
        state, note = TrialState.PRUNED, str(e)
    except Exception as e:
        if interrupted(e):  # a Ctrl-C that a library's cleanup turned into another error
            _interrupted(study, storage, trial, attempt, settings)
            raise KeyboardInterrupt from e
        # a bad sampled combination, a NaN loss, a checkpoint that does not match, a failed
        # torchrun job, a bug: the trial fails with its reason (never left RUNNING), the study
        # goes on
        note = _failure_reason(e)
        trial.set_user_attr(FAIL_REASON, note)
    link_trackers(trial, attempt.run_dir)  # a torchrun job's rank 0 opened them
    study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    say(_outcome_line(study, trial, state.name, spec, params, values, note, start))


def _interrupted(
    study: Any, storage: Any, trial: Any, attempt: Attempt, settings: TrialSettings
) -> None:
    """Ctrl-C: fail the trial and queue its retry now, so the same command resumes it from its
    checkpoint without waiting for the heartbeat's grace period."""
    from optuna.trial import TrialState

    trial.set_user_attr(FAIL_REASON, "interrupted")
    study.tell(trial, state=TrialState.FAIL)
    queue_retry(study, storage, attempt.trial_id, settings.max_retry)


def _begin(study: Any, storage: Any, trial: Any, out: Path) -> Attempt:
    """Find the trial's run directory and record where and on what it runs."""
    trial_id = stored_trial_id(storage, study, trial.number)
    origin = retried_from(storage, trial_id)
    number = trial.number if origin is None else origin  # a retry reuses the run directory
    run_dir = out / "trials" / f"trial-{number}"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # which GPU(s) ran it (--gpus)
        trial.set_user_attr("cuda_visible_devices", os.environ["CUDA_VISIBLE_DEVICES"])
    if origin is not None:
        trial.set_user_attr(FAIL_REASON, "")  # the killed attempt's reason is not this one's
    return Attempt(trial, trial_id, number, run_dir)


def _trial_config(
    spec: SweepSpec,
    params: dict[str, Any],
    study: Any,
    out: Path,
    number: int,
    settings: TrialSettings,
) -> TrainConfig:
    return spec.resolve(params).replace(
        out_dir=str(out / "trials"),
        run_name=f"trial-{number}",
        group=study.study_name,
        progress=False,
        **settings.fixed,
    )


def _train(
    storage: Any, attempt: Attempt, spec: SweepSpec, cfg: TrainConfig, settings: TrialSettings
) -> list[float]:
    """Run the trial (resuming the checkpoint a killed attempt left) while its heartbeat beats;
    return its objective values."""
    run = RunFiles(attempt.run_dir)
    resume = run.has_checkpoint()
    if resume:
        done = run.metrics()
        attempt.trial.set_user_attr("resumed_at_epoch", done[-1]["epoch"] if done else 0)
    with Heartbeat(storage, attempt.trial_id, settings.heartbeat):
        summary = _launch(cfg, attempt, spec, resume, settings)
    return [float(summary[m]) for m, _ in spec.objectives]


def _launch(
    cfg: TrainConfig, attempt: Attempt, spec: SweepSpec, resume: bool, settings: TrialSettings
) -> dict[str, Any]:
    """In this process, or a torchrun job followed through its metrics.jsonl (whose rank 0 opens
    the trackers)."""
    from ..launch import run_one

    tracker = None
    if settings.nproc == 1:
        tracker = make_tracker(
            cfg, attempt.run_dir, mlflow_parent_run_id=settings.mlflow_parent, resume=resume
        )
        link_trackers(attempt.trial, attempt.run_dir)  # while it runs: the dashboard finds them
    return run_one(
        cfg,
        attempt.run_dir,
        nproc=settings.nproc,
        on_epoch=_reporter(attempt.trial, spec),
        resume=resume,
        tracker=tracker,
        mlflow_parent=settings.mlflow_parent,
    )


def _failure_reason(e: Exception) -> str:
    """One line, no secret; an unexpected error also prints its traceback (the worker's log)."""
    if not isinstance(e, (ConfigError, RunFailure)):
        traceback.print_exc()
    return redact_text(f"{type(e).__name__}: {str(e).strip()[:500]}")


def _outcome_line(
    study: Any,
    trial: Any,
    state: str,
    spec: SweepSpec,
    params: dict[str, Any],
    values: list[float] | None,
    note: str,
    start: float,
) -> str:
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
    res = ", ".join(
        f"{m}={v:.4g}" for (m, _), v in zip(spec.objectives, values or [], strict=False)
    )
    return (
        f"[{study.study_name}] trial {trial.number} {state} {res or note} ({shown}) "
        f"{time.perf_counter() - start:.1f} s, pid {os.getpid()}"
    )


def link_trackers(trial: Any, run_dir: Path) -> None:
    """The trial's tracker runs in its user attrs (from the run's trackers.json): `mlflow_run_id`
    and `wandb_run_path` (entity/project/id, or project/id offline), beside `run_dir`."""
    refs = tracker_refs(run_dir)
    if refs.get("mlflow", {}).get("run_id"):
        trial.set_user_attr("mlflow_run_id", refs["mlflow"]["run_id"])
    wandb = refs.get("wandb", {})
    if wandb.get("path") or wandb.get("id"):
        trial.set_user_attr("wandb_run_path", wandb.get("path") or wandb["id"])


def _reporter(trial: Any, spec: SweepSpec):
    import optuna

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if spec.multi_objective:  # Optuna cannot prune a multi-objective trial
            return
        if spec.metric not in metrics:  # a metric of the final evaluation only (greedy soup)
            return
        value = float(metrics[spec.metric])
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} with {spec.metric}={value:.4g}")

    return on_epoch
