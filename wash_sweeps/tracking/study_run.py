"""The parent run of a study (Optuna or a W&B sweep), under which its trials nest.

study = start_study_run(cfg, study_name="wash-p", kind="optuna")
trial_cfg = cfg.replace(group="wash-p", mlflow_uri=study.mlflow_uri or "", ...)
tracker = make_tracker(trial_cfg, trial_dir, mlflow_parent_run_id=study.mlflow_run_id)
train_and_evaluate(trial_cfg, trial_dir, tracker=tracker)
study.log_summary({"best/val_acc_avg": 0.93}); study.log_artifact("study.json")
study.finish("FINISHED")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import FanOut
from .factory import open_trackers, tracker_names
from .mlflow import MlflowTracker
from .provenance import provenance_tags


class StudyRun(FanOut):
    """The parent run of a study: an MLflow run the trials nest under, and a W&B run with
    job_type "study" in the study's group. `mlflow_run_id` is None when MLflow is not tracked
    (or could not start)."""

    name = "study"

    @property
    def mlflow_run_id(self) -> str | None:
        t = self.find("mlflow")
        return t.run_id if isinstance(t, MlflowTracker) else None

    @property
    def mlflow_uri(self) -> str | None:
        """The tracking URI of the parent run: give it to the trials (`mlflow_uri=`)."""
        t = self.find("mlflow")
        return t.uri if isinstance(t, MlflowTracker) else None


def start_study_run(
    cfg: Any,
    study_name: str,
    kind: str,
    run_dir: str | Path | None = None,
    resume: bool = False,
) -> StudyRun:
    """Open the parent run of study `study_name` (`kind`: optuna, wandb-sweep, ...).

    `cfg` is a TrainConfig or a mapping of its fields (track, project, out_dir, mlflow_uri,
    wandb_mode, ...). W&B files go under `run_dir` (default `<out_dir>/<study_name>`).
    `resume`: continue the parent run recorded in `run_dir` (a study continued by the same
    command keeps one parent run)."""
    from ..config import TrainConfig

    if not isinstance(cfg, TrainConfig):
        cfg = TrainConfig.from_dict(dict(cfg))
    cfg = cfg.replace(group=study_name, job_type="study", run_name=study_name)
    run_dir = Path(run_dir) if run_dir else Path(cfg.out_dir) / study_name
    tags = {"study": study_name, "study_kind": kind}
    opened = open_trackers(
        tracker_names(cfg),
        cfg,
        run_dir,
        study_name,
        None,
        job_type="study",
        extra_tags=tags,
        resume=resume,
    )
    study = StudyRun(opened)
    study.set_tags({**tags, **provenance_tags(cfg, seeds=False)})
    return study
