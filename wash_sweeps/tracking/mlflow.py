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

W&B: `cfg.wandb_mode` is `offline` by default (`online` needs WANDB_API_KEY or a ~/.netrc entry,
else a warning and offline). Every file W&B writes goes under `<run_dir>/wandb/` (WANDB_DIR,
WANDB_CACHE_DIR, WANDB_CONFIG_DIR, WANDB_DATA_DIR point there). Barrier curves and the final
per-member metrics are W&B tables (`curves/barrier`, `tables/members`); the averaged model is the
artifact `averaged-model-<run id>` (type model: averaged.pt + config.json, for load_averaged).
Charts run along `train/step` (define_metric); the `val/` accuracies keep their best and last
value in the summary (`val/` losses: min and last). System stats are on
(WANDB_X_DISABLE_STATS=true turns them off). Read an offline run back with
`wash_sweeps.wandb_reader.read_run`.

MLflow: the tracking URI is `cfg.mlflow_uri`, else MLFLOW_TRACKING_URI, else
`sqlite:///<out_dir>/mlflow.db` with artifacts in `<out_dir>/mlartifacts`. Experiment =
`cfg.project`. Params are the resolved config (strings, cut at 6000 characters); metrics keep the
trainer's names (`val/acc_avg`, `member/3/val_acc`: `/` is valid in MLflow keys; any character
MLflow refuses becomes `_`). Artifacts: `results/` (config, metrics history, summary,
averaged.pt: a run directory for load_averaged), `curves/step_<N>.json` (loss-barrier curves),
and the MLflow model `model` (mlflow.pytorch, torch.export format, with a signature and an input
example): `mlflow.pytorch.load_model("runs:/<run id>/model")`. Tags: MLflow's source and git tags
(`mlflow.source.name`, `mlflow.source.git.commit`, ...). System metrics (`system/...`: CPU,
memory, disk, network, GPU when there is one) every 10 s unless
MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false. Runs use explicit run ids (MlflowClient), so several
runs in one process do not interfere. Studies and sweeps keep their trials in the store of their
output root (`shared_store`), beside the standalone runs there.

Provenance (git commit and dirty flag, package versions, device, seeds) is set on every run:
MLflow tags `prov/...`, W&B config `provenance/...`.

Resuming (`make_tracker(..., resume=True)`, as `train --resume` and a retried trial do): the ids
of the run's tracker runs are kept in `<run_dir>/trackers.json`. MLflow continues the same run
(status back to RUNNING; the steps it already holds are not logged twice). W&B continues the same
run online (`resume="allow"`); W&B cannot resume an offline run (wandb/wandb#2423: `resume` is
ignored offline, and `wandb sync` of two offline runs with one id keeps only one), so a resumed
offline run is a new run with `resumed_from=<id>` in its config, the same name and group.

Studies (Optuna or W&B sweeps) open one parent run and nest their trials under it:

    study = start_study_run(cfg, study_name="wash-p", kind="optuna")
    trial_cfg = cfg.replace(group="wash-p", mlflow_uri=study.mlflow_uri or "", ...)
    tracker = make_tracker(trial_cfg, trial_dir, mlflow_parent_run_id=study.mlflow_run_id)
    train_and_evaluate(trial_cfg, trial_dir, tracker=tracker)
    study.log_summary({"best/val_acc_avg": 0.93}); study.log_artifact("study.json")
    study.finish("FINISHED")
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .redact import argv_has_secret, redact_text, redact_url

TRACKERS = ("wandb", "mlflow")
TRACKERS_FILE = "trackers.json"  # in a run directory: the ids of its tracker runs, for resuming
MLFLOW_PARAM_MAX = 6000  # characters per MLflow param value
_MLFLOW_BAD_KEY = re.compile(r"[^\w\-. :/]")  # MLflow keys: alnum, _ - . space : /


class Tracker:
    """The no-op tracker; the interface every tracker implements."""

    name = "noop"

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_curves(self, curves: Mapping[str, Sequence[float]], step: int) -> None: ...

    def log_summary(self, summary: Mapping[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path, name: str | None = None) -> None: ...

    def log_model(self, run_dir: str | Path, input_example: Any) -> None:
        """The run's averaged model (`<run_dir>/averaged.pt`, see results.load_averaged);
        `input_example`: a few model inputs (a tensor), for MLflow's signature and example."""

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...

    def ref(self) -> dict[str, Any]:
        """What it takes to continue this tracker's run later (kept in trackers.json)."""
        return {}


NoopTracker = Tracker


class Guarded(Tracker):
    """One tracker whose first failure prints one warning and switches it off."""

    def __init__(self, tracker: Tracker, where: str = ""):
        self.tracker, self.name, self.where = tracker, tracker.name, where
        self.failed: str | None = None

    def _call(self, method: str, *args: Any) -> None:
        if self.failed is not None:
            return
        try:
            getattr(self.tracker, method)(*args)
        except Exception as e:  # a tracker must never stop a run
            self.failed = f"{type(e).__name__}: {_first_line(e)}"
            warn(f"tracker {self.name} failed in {method} ({self.failed}); {self._rest()}")

    def _rest(self) -> str:
        tail = f"; local results in {self.where} are complete" if self.where else ""
        return f"it is off for the rest of this run{tail}"

    def log_params(self, params):
        self._call("log_params", params)

    def log_metrics(self, metrics, step):
        self._call("log_metrics", metrics, step)

    def log_curves(self, curves, step):
        self._call("log_curves", curves, step)

    def log_summary(self, summary):
        self._call("log_summary", summary)

    def log_artifact(self, path, name=None):
        self._call("log_artifact", path, name)

    def log_model(self, run_dir, input_example):
        self._call("log_model", run_dir, input_example)

    def set_tags(self, tags):
        self._call("set_tags", tags)

    def finish(self, status="FINISHED"):
        self._call("finish", status)


class FanOut(Tracker):
    """Sends every call to each tracker."""

    name = "fanout"

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    def _each(self, method: str, *args: Any) -> None:
        for t in self.trackers:
            getattr(t, method)(*args)

    def find(self, name: str) -> Tracker | None:
        """The live tracker called `name` (None if not tracked or switched off)."""
        for t in self.trackers:
            inner = t.tracker if isinstance(t, Guarded) else t
            if t.name == name and getattr(t, "failed", None) is None:
                return inner
        return None

    def log_params(self, params):
        self._each("log_params", params)

    def log_metrics(self, metrics, step):
        self._each("log_metrics", metrics, step)

    def log_curves(self, curves, step):
        self._each("log_curves", curves, step)

    def log_summary(self, summary):
        self._each("log_summary", summary)

    def log_artifact(self, path, name=None):
        self._each("log_artifact", path, name)

    def log_model(self, run_dir, input_example):
        self._each("log_model", run_dir, input_example)

    def set_tags(self, tags):
        self._each("set_tags", tags)

    def finish(self, status="FINISHED"):
        self._each("finish", status)


def warn(message: str) -> None:
    print(f"wash-sweeps: warning: {redact_text(message)}", file=sys.stderr, flush=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else repr(e)


def tracker_names(track: str) -> list[str]:
    names = [t.strip() for t in track.split(",") if t.strip()]
    for n in names:
        if n not in TRACKERS:
            raise ValueError(f"track={track!r}: allowed trackers are {', '.join(TRACKERS)}")
    return names


def make_tracker(
    cfg: Any, run_dir: str | Path, mlflow_parent_run_id: str | None = None, resume: bool = False
) -> Tracker:
    """The trackers named in `cfg.track` behind one guarded fan-out (a no-op if none).

    A trial of a study passes the study's MLflow run id to be nested under it. `resume`: continue
    the tracker runs recorded in `<run_dir>/trackers.json` (see the module doc)."""
    names = tracker_names(cfg.track)
    if not names:
        return Tracker()
    run_dir = Path(run_dir)
    name = cfg.run_name or cfg.default_run_name
    trackers = _open(
        names, cfg, run_dir, name, mlflow_parent_run_id, job_type=cfg.job_type, resume=resume
    )
    fan = FanOut(trackers)
    fan.set_tags(provenance_tags(cfg))
    return fan


def _open(
    names: Sequence[str],
    cfg: Any,
    run_dir: Path,
    run_name: str,
    parent: str | None,
    job_type: str,
    extra_tags: Mapping[str, str] | None = None,
    resume: bool = False,
) -> list[Tracker]:
    """Open each named tracker (continuing the runs in `run_dir`'s trackers.json if `resume`)
    and record their ids there."""
    previous = _previous(run_dir) if resume else {}
    out: list[Tracker] = []
    refs = dict(previous)
    for n in names:
        try:
            if n == "wandb":
                t: Tracker = WandbTracker(cfg, run_dir, run_name, job_type, previous.get(n))
            else:
                t = MlflowTracker(cfg, run_dir, run_name, parent, extra_tags, previous.get(n))
        except Exception as e:  # an unreachable tracker never stops the run
            warn(
                f"tracker {n} could not start ({type(e).__name__}: {_first_line(e)}); "
                f"the run goes on without it, local results in {run_dir}"
            )
            continue
        refs[n] = t.ref()
        out.append(Guarded(t, str(run_dir)))
    if out:
        from .results import write_json

        write_json(run_dir / TRACKERS_FILE, refs)
    return out


def tracker_refs(run_dir: str | Path) -> dict[str, Any]:
    """The tracker runs of a run directory, as trackers.json records them ({} if none):
    `{"mlflow": {"run_id", "uri"}, "wandb": {"id", "mode", "path"}}`."""
    return _previous(Path(run_dir))


def _previous(run_dir: Path) -> dict[str, Any]:
    """The tracker runs recorded in `run_dir` ({} if none or unreadable: new runs are opened)."""
    path = run_dir / TRACKERS_FILE
    if not path.exists():
        return {}
    try:
        refs = json.loads(path.read_text())
        if not isinstance(refs, dict):
            raise ValueError("not a JSON object")
        return refs
    except (OSError, ValueError) as e:
        warn(f"{path}: unreadable ({_first_line(e)}); the resumed run opens new tracker runs")
        return {}


def provenance_tags(cfg: Any, seeds: bool = True) -> dict[str, str]:
    """Git commit + dirty flag, package versions, device, seeds, as flat string tags."""
    from . import seeding
    from .results import git_state, versions

    tags = {f"prov/{k}": str(v) for k, v in git_state().items()}
    tags.update({f"prov/version/{k}": v for k, v in versions().items()})
    tags["prov/device"] = _device(cfg)
    if seeds:  # the same seeds the trainer derives (summary.json provenance)
        tags["prov/seed"] = str(cfg.seed)
        init = [seeding.derive(cfg.seed, seeding.INIT, m) for m in range(cfg.n_members)]
        tags["prov/seeds_init"] = json.dumps(init)
    return tags


def _device(cfg: Any) -> str:
    import torch

    from .results import device_info

    name = getattr(cfg, "device", "cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return device_info(torch.device(name))
    except (RuntimeError, AssertionError):
        return name


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float))  # bools too: MLflow stores them as 0/1


# --- Weights & Biases ---------------------------------------------------------------------------


def wandb_dirs(run_dir: str | Path) -> dict[str, str]:
    """Where W&B writes for a run: everything under `<run_dir>/wandb/`."""
    root = Path(run_dir).resolve() / "wandb"
    return {
        "WANDB_DIR": str(root.parent),  # W&B adds wandb/: runs land in <root>/offline-run-*
        "WANDB_CACHE_DIR": str(root / ".cache"),
        "WANDB_CONFIG_DIR": str(root / ".config"),
        "WANDB_DATA_DIR": str(root / ".data"),
    }


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class WandbTracker(Tracker):
    """One W&B run (offline by default), files under `<run_dir>/wandb/`."""

    name = "wandb"

    def __init__(
        self,
        cfg: Any,
        run_dir: Path,
        run_name: str,
        job_type: str,
        previous: Mapping[str, Any] | None = None,
    ):
        dirs = wandb_dirs(run_dir)
        for d in dirs.values():
            Path(d).mkdir(parents=True, exist_ok=True)
        # wandb reads these when it starts its service and stages files: set them for the process
        os.environ.update(dirs)
        mode = cfg.wandb_mode
        if mode == "online" and not _wandb_has_key():
            warn("wandb_mode=online but no WANDB_API_KEY (or ~/.netrc entry): logging offline")
            mode = "offline"
        import wandb

        self.wandb, self.mode = wandb, mode
        # only an online run can be continued (see the module doc)
        same = bool(previous) and previous.get("mode") == mode == "online"
        self.run = wandb.init(
            id=previous["id"] if same else None,
            resume="allow" if same else None,
            project=cfg.project,
            entity=cfg.wandb_entity or None,
            group=cfg.group or None,
            job_type=job_type,
            tags=[t.strip() for t in cfg.tags.split(",") if t.strip()] or None,
            name=run_name,
            dir=dirs["WANDB_DIR"],
            mode=mode,
            reinit="create_new",  # a study run and its trials can be open at once
            # system stats (CPU, memory, GPU) stay on: WANDB_X_DISABLE_STATS=true turns them off
            settings=wandb.Settings(
                console="off",
                init_timeout=60,
                # W&B's metadata holds the command line: not recorded when it holds a password
                x_disable_meta=argv_has_secret(sys.argv),
            ),
        )
        _define_metrics(self.run)
        self.step = 0
        self.logged: set[str] = set()  # history keys: their summaries follow define_metric
        # steps below this are already in a continued run (W&B drops them with a warning)
        self.first_step = int(getattr(self.run, "starting_step", 0) or 0) if same else 0
        if previous and not same:
            self.run.config.update({"resumed_from": previous.get("id", "")})

    def ref(self):
        # path: entity/project/id online (project/id offline), what wandb.Api().run() takes
        return {"id": self.run.id, "mode": self.mode, "path": self.run.path}

    def log_params(self, params):
        self.run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics, step):
        if step < self.first_step:
            return
        self.step = max(self.step, step)
        self.logged.update(metrics)
        self.run.log(dict(metrics), step=step)

    def log_curves(self, curves, step):
        if step < self.first_step:
            return
        rows = [
            [k, _alpha(i, len(c)), float(v)] for k, c in curves.items() for i, v in enumerate(c)
        ]
        table = self.wandb.Table(columns=["curve", "alpha", "loss"], data=rows)
        self.step = max(self.step, step)
        self.run.log({"curves/barrier": table}, step=step)

    def log_summary(self, summary):
        # a key of the history keeps the summary define_metric gives it (best and last of the
        # val/ accuracies and losses, else last): only the keys never logged are set here
        skip = self.logged | {"config"}
        self.run.summary.update({k: v for k, v in summary.items() if k not in skip})
        members = member_table(summary)
        if members:
            cols = ["member", *sorted({k for row in members.values() for k in row})]
            data = [[i, *(row.get(c) for c in cols[1:])] for i, row in sorted(members.items())]
            self.run.log(
                {"tables/members": self.wandb.Table(columns=cols, data=data)}, step=self.step
            )

    def log_artifact(self, path, name=None):
        path = Path(path)
        if name is None:  # result files: saved with the run's files
            self.run.save(str(path), base_path=str(path.parent), policy="now")
            return
        art = self.wandb.Artifact(name, type="model" if "model" in name else "result")
        art.add_file(str(path))
        self.run.log_artifact(art)

    def log_model(self, run_dir, input_example):
        # one name per run (W&B versions artifacts by name: a shared name would pile the models
        # of every run and trial into one history); with config.json it is a run directory
        # that results.load_averaged reads
        run_dir = Path(run_dir)
        art = self.wandb.Artifact(f"averaged-model-{self.run.id}", type="model")
        art.add_file(str(run_dir / "averaged.pt"))
        art.add_file(str(run_dir / "config.json"))
        self.run.log_artifact(art)

    def set_tags(self, tags):
        # provenance lives in the run config (W&B tags are short labels, not key-value pairs)
        self.run.config.update({k.replace("prov/", "provenance/"): v for k, v in tags.items()})

    def finish(self, status="FINISHED"):
        # a run stopped by its sweep (KILLED) ended as asked: exit 0, the status in the summary
        self.run.summary["run/status"] = status
        self.run.finish(exit_code=0 if status in ("FINISHED", "KILLED") else 1)


# W&B summaries of the history keys: the validation accuracies and losses keep their best and
# their last value (the final evaluation's); test/ keys keep only the last (never chosen on)
WANDB_SUMMARIES = {"val/acc*": "max,last", "val/loss*": "min,last"}
WANDB_STEP = "train/step"  # the x axis of every chart: optimizer steps (train/epoch beside it)


def _define_metrics(run: Any) -> None:
    run.define_metric(WANDB_STEP)
    run.define_metric("*", step_metric=WANDB_STEP)
    for glob, summary in WANDB_SUMMARIES.items():
        run.define_metric(glob, step_metric=WANDB_STEP, summary=summary)


def _alpha(i: int, n: int) -> float:
    return i / (n - 1) if n > 1 else 0.0


def member_table(summary: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """`member/<i>/<name>` keys -> {i: {name: value}}."""
    out: dict[int, dict[str, Any]] = {}
    for key, value in summary.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "member" and parts[1].isdigit():
            out.setdefault(int(parts[1]), {})[parts[2]] = value
    return out


# --- MLflow -------------------------------------------------------------------------------------


def mlflow_uri(cfg: Any) -> str:
    """cfg.mlflow_uri, else MLFLOW_TRACKING_URI, else SQLite in cfg.out_dir."""
    if cfg.mlflow_uri:
        return cfg.mlflow_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(cfg.out_dir).resolve() / 'mlflow.db'}"


def shared_store(cfg: Any) -> dict[str, str]:
    """`{"mlflow_uri": ...}` for runs whose out_dir is moved under a study or sweep directory:
    they keep the store of their output root `cfg.out_dir` (`<out_dir>/mlflow.db`, where the
    standalone runs of that root go), so one `mlflow ui` shows both. {} when MLflow is not
    tracked or its store is named elsewhere (cfg.mlflow_uri, MLFLOW_TRACKING_URI)."""
    if "mlflow" not in tracker_names(cfg.track) or cfg.mlflow_uri:
        return {}
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return {}
    return {"mlflow_uri": mlflow_uri(cfg)}


def stored_uri(recorded: str) -> str:
    """The tracking URI a trackers.json entry names: it is kept with its password as ***, so the
    password comes back from MLFLOW_TRACKING_URI when that is the same store."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    return env if env and redact_url(env) == recorded else recorded


def mlflow_key(key: str) -> str:
    """The metric/param key MLflow accepts: characters it refuses become `_`."""
    return _MLFLOW_BAD_KEY.sub("_", key)[:250]


def _check_server(uri: str, timeout_s: float = 3.0) -> None:
    """Fail at once on a server that does not answer (MLflow would retry for minutes)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            r.read()
    except (OSError, urllib.error.URLError) as e:
        raise ConnectionError(
            f"MLflow server {redact_url(uri)} does not answer: {redact_text(str(e))}"
        ) from None


@contextlib.contextmanager
def _sqlite_lock(uri: str) -> Iterator[None]:
    """Serialise MLflow's first use of a SQLite file across processes: workers that open a fresh
    database at once race on its schema migration (3 of 4 failed here without this lock)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(uri[len("sqlite:///") :] + ".lock")
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _experiment_id(client: Any, name: str, artifact_root: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root)
    except Exception:  # another process created it meanwhile
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


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

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # a dead server mid-run costs seconds, not minutes, before the tracker is switched off
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.uri = mlflow_uri(cfg)
        artifact_root = None
        if self.uri.startswith(("http://", "https://")):
            _check_server(self.uri)
        elif self.uri.startswith("sqlite:///"):
            db = Path(self.uri[len("sqlite:///") :])
            db.parent.mkdir(parents=True, exist_ok=True)
            # must be set when the experiment is created; otherwise it is ./mlruns
            artifact_root = str(db.parent.resolve() / "mlartifacts")
        self.scratch = Path(run_dir) / "mlflow_files"
        self.done_step = -1  # steps up to this one are already in a continued run
        self.latest: dict[str, float] = {}  # the last value of each key (a continued run's too)
        self.held: dict[str, str] = {}  # the params a continued run holds (MLflow's are final)
        with _sqlite_lock(self.uri):  # the client creates a new database's schema
            self.client = MlflowClient(tracking_uri=self.uri)
            run_id = self._continue(previous)
            continued = run_id is not None
            if run_id is None:
                tags = {**(extra_tags or {})}
                if previous and previous.get("run_id"):
                    tags["resumed_from"] = str(previous["run_id"])
                run_id = self._create_run(cfg, run_name, parent_run_id, tags, artifact_root)
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
            warn(f"MLflow run {previous['run_id']} not found ({_first_line(e)}); opening a new run")
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
            exp_id = _experiment_id(self.client, cfg.project, artifact_root)
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
            warn(f"MLflow model of {run_dir} not logged ({type(e).__name__}: {_first_line(e)})")

    def set_tags(self, tags):
        from mlflow.entities import RunTag

        items = [RunTag(mlflow_key(k), str(v)[:MLFLOW_PARAM_MAX]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i : i + 100])

    def finish(self, status="FINISHED"):
        status = status if status in ("FINISHED", "FAILED", "KILLED") else "FAILED"
        if self.monitor is not None:  # its last samples go in while the run is RUNNING
            self.monitor.finish()
            self.monitor = None
        self.client.set_terminated(self.run_id, status)


MODEL_NAME = "model"  # mlflow.pytorch.load_model("runs:/<run id>/model")
SYSTEM_PREFIX = "system/"  # MLflow's system metrics: system/cpu_utilization_percentage, ...


def log_mlflow_model(tracker: MlflowTracker, run_dir: str | Path, input_example: Any) -> None:
    """The averaged model as an MLflow model named `model`, with its signature and an input
    example. Saved as a torch.export program ("pt2", MLflow's default): loading it runs no
    pickled code and needs no wash_sweeps."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    # MLflow's fluent API reads the process-wide URI: this run's store, only for this call
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from .results import load_averaged

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
        monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception as e:
        warn(f"MLflow system metrics are off for this run ({type(e).__name__}: {_first_line(e)})")
        return None


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags (mlflow.user, mlflow.source.name/type, mlflow.source.git.*)
    with the git state of the code that runs: this package's checkout, not the entry script's
    (a console script in a venv)."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import mlflow_tags as mt

    from .results import git_state

    tags = {
        k: v for k, v in resolve_tags({}).items() if k.startswith(("mlflow.source", "mlflow.user"))
    }
    git = git_state()
    if git["git_commit"]:
        tags[mt.MLFLOW_GIT_COMMIT] = git["git_commit"]
        tags[mt.MLFLOW_GIT_DIRTY] = str(bool(git["git_dirty"])).lower()
        tags.update(_git_branch_and_remote())
    return tags


def _git_branch_and_remote() -> dict[str, str]:
    import subprocess

    from mlflow.utils import mlflow_tags as mt

    here = Path(__file__).resolve().parent
    out = {}
    for tag, cmd in (
        (mt.MLFLOW_GIT_BRANCH, ["git", "rev-parse", "--abbrev-ref", "HEAD"]),
        (mt.MLFLOW_GIT_REPO_URL, ["git", "remote", "get-url", "origin"]),
    ):
        try:
            r = subprocess.run(cmd, cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0 and r.stdout.strip():
            out[tag] = _without_credentials(r.stdout.strip())
    return out


def _without_credentials(url: str) -> str:
    """A remote URL without its user-info (https://TOKEN@host/... carries a token as the user)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return url


def _param_value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text if len(text) <= MLFLOW_PARAM_MAX else text[: MLFLOW_PARAM_MAX - 3] + "..."


def _same(a: float | None, b: float) -> bool:
    return a is not None and (a == b or (math.isnan(a) and math.isnan(b)))


# --- studies ------------------------------------------------------------------------------------


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
    from .config import TrainConfig

    if not isinstance(cfg, TrainConfig):
        cfg = TrainConfig.from_dict(dict(cfg))
    cfg = cfg.replace(group=study_name, job_type="study", run_name=study_name)
    run_dir = Path(run_dir) if run_dir else Path(cfg.out_dir) / study_name
    tags = {"study": study_name, "study_kind": kind}
    trackers = _open(
        tracker_names(cfg.track),
        cfg,
        run_dir,
        study_name,
        None,
        job_type="study",
        extra_tags=tags,
        resume=resume,
    )
    study = StudyRun(trackers)
    study.set_tags({**tags, **provenance_tags(cfg, seeds=False)})
    return study
