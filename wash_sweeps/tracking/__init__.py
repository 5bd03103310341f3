"""The tracker facade: params, metrics at a step, curves, artifacts, tags, finish.

The trainer talks to one `Tracker`. `make_tracker(cfg, run_dir)` builds a fan-out over the
trackers named in `cfg.track` (`wandb`, `mlflow`; imported only when named). Local results
(`results.RunDir`) are written first by the trainer, so a tracker never loses a run: every call
to a tracker is guarded, and on its first failure the tracker prints one warning to stderr and is
switched off for the rest of the run.

    cfg = TrainConfig.from_preset("tiny", track="wandb,mlflow", out_dir="runs")
    train_and_evaluate(cfg)            # trackers come from cfg.track
    mlflow ui --backend-store-uri sqlite:///runs/mlflow.db      # MLflow: open the runs
    wandb leet runs/<run>/wandb        # W&B offline run in the terminal
    wandb sync runs/<run>/wandb/offline-run-*                   # later, with WANDB_API_KEY set

Modules, one concern each:
- `base`: the `Tracker` interface (and its no-op), `Guarded` (first failure: one warning, then
  off), `FanOut`.
- `factory`: `make_tracker`, and `end_run(run_dir, status)` for a job stopped from outside.
- `refs`: `<run_dir>/trackers.json`, the ids of a run directory's tracker runs.
- `provenance`: git commit and dirty flag, package versions, device, seeds as tags (MLflow tags
  `prov/...`, W&B config `provenance/...`), MLflow's source tags.
- `wandb`: the W&B tracker (offline by default, files under `<run_dir>/wandb/`).
- `mlflow`: the MLflow tracker (explicit run ids, so several runs in one process do not
  interfere); `mlflow_store`: which store (`cfg.mlflow_uri`, else MLFLOW_TRACKING_URI, else
  `sqlite:///<out_dir>/mlflow.db`) and its helpers.
- `study_run`: the parent run of a study, under which its trials nest.

Resuming (`make_tracker(..., resume=True)`, as `train --resume` and a retried trial do): the ids
of the run's tracker runs are kept in `<run_dir>/trackers.json`. MLflow continues the same run
(status back to RUNNING; the steps it already holds are not logged twice). W&B continues the same
run online (`resume="allow"`); W&B cannot resume an offline run (wandb/wandb#2423: `resume` is
ignored offline, and `wandb sync` of two offline runs with one id keeps only one), so a resumed
offline run is a new run with `resumed_from=<id>` in its config, the same name and group.
"""

from __future__ import annotations

from ..config import TRACKERS
from .base import FanOut, Guarded, NoopTracker, Tracker, warn
from .factory import end_run, make_tracker, open_trackers, tracker_names
from .mlflow import MlflowTracker, log_mlflow_model
from .mlflow_store import mlflow_key, mlflow_uri, shared_store, stored_uri
from .provenance import provenance_tags, source_tags
from .refs import TRACKERS_FILE, tracker_refs
from .study_run import StudyRun, start_study_run
from .wandb import WandbTracker, member_table, wandb_dirs

__all__ = [
    "TRACKERS",
    "TRACKERS_FILE",
    "FanOut",
    "Guarded",
    "MlflowTracker",
    "NoopTracker",
    "StudyRun",
    "Tracker",
    "WandbTracker",
    "end_run",
    "log_mlflow_model",
    "make_tracker",
    "member_table",
    "mlflow_key",
    "mlflow_uri",
    "open_trackers",
    "provenance_tags",
    "shared_store",
    "source_tags",
    "start_study_run",
    "stored_uri",
    "tracker_names",
    "tracker_refs",
    "wandb_dirs",
    "warn",
]
