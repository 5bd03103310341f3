"""One way to launch a run: `run_one(cfg, run_dir, nproc=...)`, used by `wash-sweeps train`,
study trials and W&B sweep runs alike.

    from wash_sweeps.launch import run_one
    summary = run_one(cfg, Path("runs/x"))                  # in this process
    summary = run_one(cfg, Path("runs/x"), nproc=4)         # a torchrun job of 4 processes

In this process it is `train_and_evaluate`; with `nproc` > 1 it is a torchrun job
(`distributed.run_torchrun`) followed through the run's metrics.jsonl, so `on_epoch` sees each
evaluation either way, and an `on_epoch` that raises (a pruned trial) stops the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import distributed, train
from .config import TrainConfig
from .tracking import Tracker, make_tracker
from .train import OnEpoch


def run_one(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    nproc: int = 1,
    on_epoch: OnEpoch | None = None,
    resume: bool = False,
    overwrite: bool = False,
    tracker: Tracker | None = None,
    mlflow_parent: str | None = None,
) -> dict[str, Any]:
    """Train `cfg` into `run_dir` and return its summary.

    `resume`: continue the checkpoint in `run_dir`; `overwrite`: replace a finished run or a run
    of another config there. `mlflow_parent`: nest the run's MLflow run under that run (a study
    trial). `tracker` (in this process only): the run's trackers, opened by the caller; by
    default the run opens those its config names. A torchrun job's rank 0 opens its own."""
    if nproc > 1:
        if tracker is not None:
            raise ValueError("run_one: a torchrun job opens its trackers itself (no tracker=)")
        return distributed.run_torchrun(
            cfg,
            nproc,
            run_dir,
            resume=resume,
            overwrite=overwrite,
            on_epoch=on_epoch,
            mlflow_parent_run_id=mlflow_parent,
        )
    if tracker is None and mlflow_parent:
        tracker = make_tracker(cfg, run_dir, mlflow_parent, resume=resume)
    # looked up at each call, so a test can stand in for the training
    return train.train_and_evaluate(
        cfg, run_dir, tracker=tracker, on_epoch=on_epoch, resume=resume, overwrite=overwrite
    )
