"""The MLflow tracker: one run addressed by its run id (MlflowClient, never the process's active
run), so several runs in one process do not interfere.

Experiment = `cfg.project` (the store: `mlflow_store.mlflow_uri`). Params are the resolved
config (strings, cut at 6000 characters); metrics keep the trainer's names (`val/acc_avg`,
`member/3/val_acc`: `/` is valid in MLflow keys; any character MLflow refuses becomes `_`).
Artifacts: `results/` (config, metrics history, summary, averaged.pt: a run directory for
load_averaged), `curves/step_<N>.json` (loss-barrier curves), and the MLflow model `model`
(mlflow.pytorch, torch.export format, with a signature and an input example):
`mlflow.pytorch.load_model("runs:/<run id>/model")`. Tags: MLflow's source and git tags
(`mlflow.source.name`, `mlflow.source.git.commit`, ...). System metrics (`system/...`: CPU,
memory, disk, network, GPU when there is one) every 10 s unless
MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..redact import redact_url
from .base import Tracker, first_line, warn
from .mlflow_store import (
    experiment_id,
    mlflow_key,
    mlflow_uri,
    prepare_store,
    sqlite_lock,
    stored_uri,
)
from .provenance import source_tags

MLFLOW_PARAM_MAX = 6000  # characters per MLflow param value
MODEL_NAME = "model"  # mlflow.pytorch.load_model("runs:/<run id>/model")
SYSTEM_PREFIX = "system/"  # MLflow's system metrics: system/cpu_utilization_percentage, ...
STATUSES = ("FINISHED", "FAILED", "KILLED")  # how an MLflow run ends


class MlflowTracker(Tracker):
    """One MLflow run, addressed by its run id (never the global active run)."""

    name = "mlflow"

    def __init__(
        self,
        cfg: Any,
        run_dir: Path,
        run_name: str,
        parent_run_id: str | None = None,
        extra_tags: Mapping[str, str] | None = None,
        previous: Mapping[str, Any] | None = None,
    ):
        from mlflow.tracking import MlflowClient

        _set_process_defaults()
        self.uri = mlflow_uri(cfg)
        root = prepare_store(self.uri)
        self.scratch = Path(run_dir) / "mlflow_files"
        self.done_step = -1  # steps up to this one are already in a continued run
        self.latest: dict[str, float] = {}  # the last value of each key (a continued run's too)
        self.held: dict[str, str] = {}  # the params a continued run holds (MLflow's are final)
        with sqlite_lock(self.uri):  # the client creates a new database's schema
            self.client = MlflowClient(tracking_uri=self.uri)
            run_id = self._continue(previous)
            continued = run_id is not None
            if run_id is None:
                tags = {**(extra_tags or {})}
                if previous and previous.get("run_id"):
                    tags["resumed_from"] = str(previous["run_id"])
                run_id = self._create_run(cfg, run_name, parent_run_id, tags, root)
            self.run_id = run_id
        self.experiment_id = self.client.get_run(run_id).info.experiment_id
        self.last_step = max(self.done_step, 0)
        self.monitor = _system_metrics(self.uri, run_id, resume=continued)

    def ref(self):
        return {"run_id": self.run_id, "uri": redact_url(self.uri)}

    def _continue(self, previous: Mapping[str, Any] | None) -> str | None:
        """The recorded run, back to RUNNING, if it is in this tracking store; else None."""
        same_store = previous and previous.get("uri") == redact_url(self.uri)
        if not same_store or not previous.get("run_id"):
            return None
        try:
            run = self.client.get_run(str(previous["run_id"]))
        except Exception as e:  # deleted from the store, or never synced there
            warn(f"MLflow run {previous['run_id']} not found ({first_line(e)}); opening a new run")
            return None
        if run.info.lifecycle_stage == "deleted":
            return None
        run_id = run.info.run_id
        history = self.client.get_metric_history
        # system/ metrics count their own samples, not training steps
        ours = [k for k in run.data.metrics if not k.startswith(SYSTEM_PREFIX)]
        self.done_step = max((m.step for k in ours for m in history(run_id, k)), default=-1)
        self.latest = {k: run.data.metrics[k] for k in ours}
        self.held = dict(run.data.params)
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _create_run(
        self,
        cfg: Any,
        run_name: str,
        parent_run_id: str | None,
        extra_tags: Mapping[str, str],
        artifact_root: str | None,
    ) -> str:
        tags = dict(extra_tags)
        if parent_run_id:
            # nested run: the UI shows it under its parent; same experiment as the parent
            tags["mlflow.parentRunId"] = parent_run_id
            exp_id = self._parent_experiment(parent_run_id)
        else:
            exp_id = experiment_id(self.client, cfg.project, artifact_root)
        tags.update(source_tags())
        for t in (x.strip() for x in cfg.tags.split(",")):
            if t:
                tags[f"tag/{t}"] = "true"
        if cfg.group:
            tags["group"] = cfg.group
        tags["job_type"] = getattr(cfg, "job_type", "train")
        return self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id

    def _parent_experiment(self, parent_run_id: str) -> str:
        try:
            return self.client.get_run(parent_run_id).info.experiment_id
        except Exception as e:
            raise LookupError(
                f"parent run {parent_run_id} is not in {self.uri}; a trial must use its study's "
                "mlflow_uri (StudyRun.mlflow_uri)"
            ) from e

    def log_params(self, params):
        from mlflow.entities import Param

        items = [Param(mlflow_key(k), _param_value(v)) for k, v in params.items()]
        if self.held:  # a continued run: MLflow params cannot change, its first values stay
            changed = [p.key for p in items if self.held.get(p.key, p.value) != p.value]
            if changed:
                warn(
                    f"MLflow run {self.run_id} keeps its first values of {', '.join(changed)} "
                    "(MLflow params cannot change); the new ones are in the local results"
                )
            items = [p for p in items if p.key not in self.held]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics, step):
        if step > self.done_step:  # a continued run holds the earlier steps already
            self._log(metrics, step)

    def _log(self, metrics: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(mlflow_key(k), float(v), now, int(step))
            for k, v in metrics.items()
            if _numeric(v)
        ]
        for i in range(0, len(items), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])
        self.latest.update({m.key: m.value for m in items})
        self.last_step = max(self.last_step, int(step))

    def log_curves(self, curves, step):
        if step <= self.done_step:  # a continued run holds them already
            return
        path = self.scratch / "curves" / f"step_{step:06d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"step": step, "curves": dict(curves)}, indent=1))
        self.client.log_artifact(self.run_id, str(path), "curves")

    def log_summary(self, summary):
        # the summary's numbers are mostly the last metrics already logged: log only new values,
        # so the metric history keeps one point per evaluation
        new = {
            k: v
            for k, v in summary.items()
            if _numeric(v) and not _same(self.latest.get(mlflow_key(k)), float(v))
        }
        if new:
            self._log(new, self.last_step)

    def log_artifact(self, path, name=None):
        self.client.log_artifact(self.run_id, str(path), name or "results")

    def log_model(self, run_dir, input_example):
        # the state dict beside config.json: results/ is then a run directory load_averaged reads
        self.client.log_artifact(self.run_id, str(Path(run_dir) / "averaged.pt"), "results")
        try:
            log_mlflow_model(self, run_dir, input_example)
        except Exception as e:  # an export torch refuses must not cost the run its tracking
            warn(f"MLflow model of {run_dir} not logged ({type(e).__name__}: {first_line(e)})")

    def set_tags(self, tags):
        from mlflow.entities import RunTag

        items = [RunTag(mlflow_key(k), str(v)[:MLFLOW_PARAM_MAX]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i : i + 100])

    def finish(self, status="FINISHED"):
        status = status if status in STATUSES else "FAILED"
        if self.monitor is not None:  # its last samples go in while the run is RUNNING
            self.monitor.finish()
            self.monitor = None
        self.client.set_terminated(self.run_id, status)


def end_recorded_run(ref: Mapping[str, Any], status: str) -> None:
    """End the MLflow run a trackers.json entry names (`{"run_id", "uri"}`) with `status`."""
    from mlflow.tracking import MlflowClient

    _set_process_defaults()
    status = status if status in STATUSES else "FAILED"
    client = MlflowClient(tracking_uri=stored_uri(str(ref["uri"])))
    client.set_terminated(str(ref["run_id"]), status)


# MLflow reads these from the environment on every request: no per-client setting exists.
# They are the same for every run, so they are the process's, set once (the first time this
# process opens an MLflow client) and only where the user has not set them: no telemetry, and a
# dead server mid-run costs seconds, not minutes, before the tracker is switched off.
MLFLOW_PROCESS_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


@functools.cache
def _set_process_defaults() -> None:
    """MLFLOW_PROCESS_DEFAULTS into the environment, once per process."""
    for key, value in MLFLOW_PROCESS_DEFAULTS.items():
        os.environ.setdefault(key, value)


def log_mlflow_model(tracker: MlflowTracker, run_dir: str | Path, input_example: Any) -> None:
    """The averaged model as an MLflow model named `model`, with its signature and an input
    example. Saved as a torch.export program ("pt2", MLflow's default): loading it runs no
    pickled code and needs no wash_sweeps."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    # MLflow's fluent API reads the process-wide URI: this run's store, only for this call
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from ..results import load_averaged

    model = load_averaged(run_dir)
    x = torch.as_tensor(input_example[:2]).detach().to("cpu", torch.float32)
    with torch.no_grad():
        y = model(x)
    signature = infer_signature(x.numpy(), y.numpy())
    # created here in the run's experiment (MLflow would use the process's active experiment)
    logged = tracker.client.create_logged_model(
        tracker.experiment_id, name=MODEL_NAME, source_run_id=tracker.run_id
    )
    with _use_tracking_uri(tracker.uri):
        mlflow.pytorch.log_model(
            model,
            name=MODEL_NAME,
            model_id=logged.model_id,
            run_id=tracker.run_id,
            signature=signature,
            input_example=x.numpy(),
            # given, not inferred: MLflow would otherwise load the model in a subprocess
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )


def _system_metrics(uri: str, run_id: str, resume: bool) -> Any:
    """MLflow's system metrics (CPU, memory, disk, network; GPU through nvidia-ml-py when there
    is one) sampled every 10 s for this run (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL), unless
    MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false. None when off or unavailable."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").lower() in ("false", "0"):
        return None
    try:
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # four INFO lines per run ("Started monitoring ...") would bury the trainer's output
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

        class Monitor(SystemMetricsMonitor):
            def finish(self) -> None:
                """MLflow drops the samples of the last, partial interval: a run shorter than
                one interval would have none. They are logged as one last step."""
                super().finish()
                try:
                    if any(m.metrics for m in self.monitors):
                        self.publish_metrics(self.aggregate_metrics())
                        self.mlflow_logger.flush()
                except Exception as e:  # the run's own metrics are in: never fail over these
                    warn(f"MLflow system metrics: last sample not logged ({first_line(e)})")

        monitor = Monitor(run_id, resume_logging=resume, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception as e:
        warn(f"MLflow system metrics are off for this run ({type(e).__name__}: {first_line(e)})")
        return None


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float))  # bools too: MLflow stores them as 0/1


def _param_value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text if len(text) <= MLFLOW_PARAM_MAX else text[: MLFLOW_PARAM_MAX - 3] + "..."


def _same(a: float | None, b: float) -> bool:
    return a is not None and (a == b or (math.isnan(a) and math.isnan(b)))
