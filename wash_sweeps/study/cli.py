"""Optuna studies from a sweep file: `wash-sweeps study` and `wash-sweeps study-report`.

    wash-sweeps study sweeps/wash_p.yaml --n-trials 30 --workers 2      # runs/studies/wash-p/
    wash-sweeps study sweeps/wash_p.yaml --n-trials 30                  # same command: continues
    wash-sweeps study sweeps/acc_vs_bytes.yaml --n-trials 40 --track mlflow,wandb
    wash-sweeps study sweeps/wash_p.yaml --n-trials 8 --nproc-per-trial 4  # each trial: torchrun
    wash-sweeps study sweeps/wash_p.yaml --n-trials 40 --workers 8 --gpus auto   # 2 per GPU on 4
    wash-sweeps study sweeps/wash_p.yaml --n-trials 100 \\
        --storage postgresql+psycopg2://USER@HOST:5432/DB             # one per machine, shared DB
    PGPASSWORD=... wash-sweeps study ...      # the password from the environment, never argv
    WASH_SWEEPS_STORAGE=postgresql+psycopg2://USER:PW@HOST/DB wash-sweeps study ...   # or so
    wash-sweeps study-report --out runs/studies/wash-p                  # PNG figures
    optuna-dashboard --host 127.0.0.1 runs/studies/wash-p/optuna-journal.log

Storage: by default Optuna's journal file `<out>/optuna-journal.log` (safe for several local
processes); `--storage` (or the environment variable WASH_SWEEPS_STORAGE) takes an SQLite or
PostgreSQL URL, or another journal file path. The study is created once before any worker starts
(workers racing on a fresh schema crash). The URL reaches the worker processes through their
environment, never their command line, and is printed with its password as `***`.

Each trial is `train_and_evaluate` in `<out>/trials/trial-<number>`; it reports the sweep's
metric every epoch and may be pruned (single objective); several objectives use NSGA-II with no
pruning. With `--nproc-per-trial K` a trial is a torchrun job of K processes
(`distributed.run_torchrun`): its evaluations are read from its metrics.jsonl as they are
written, reported and pruned the same way (a pruned job is stopped).

The cap `--n-trials K` counts trials that ended or run (complete, pruned, failed,
running), across all workers: a lock around "count, then create the next trial" (a file lock on
one machine, a PostgreSQL advisory lock across machines) keeps the workers from over-running it.
A worker killed mid-trial stops beating its heartbeat; after the grace period another worker (or
the next `study` command) marks that trial failed and enqueues a retry with the same parameters,
which resumes from the killed trial's checkpoint. Optuna 5 has
heartbeats only on RDB storages (SQLite, PostgreSQL); on the journal file this module keeps the
heartbeat in a trial system attribute and fails stale trials itself, the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import math
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import (
    ConfigError,
    TrainConfig,
    add_nproc_argument,
    add_set_argument,
    parse_overrides,
)
from .errors import RunFailure
from .redact import STORAGE_ENV, redact_text, redact_url
from .results import read_json, write_json
from .runtime import assign_gpus, parse_gpus, visible_gpus
from .sweep_spec import SweepSpec, load_spec, safe_name
from .tracking import shared_store, tracker_refs

JOURNAL_NAME = "optuna-journal.log"
HEARTBEAT_ATTR = "wash:heartbeat"  # journal storage: time.time() of the trial's last beat
FAIL_REASON = "fail_reason"


# --- CLI ----------------------------------------------------------------------------------------


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    if command == "study-report":
        p.add_argument("--out", default=None, help="the study's output dir (figures go here)")
        p.add_argument(
            "--storage",
            default=None,
            help=f"URL or journal file (default ${STORAGE_ENV}, else OUT/{JOURNAL_NAME})",
        )
        p.add_argument("--study-name", default=None, help="default: the only study in storage")
        return
    p.add_argument("sweep_file", help="a sweep file (see sweeps/)")
    p.add_argument("--n-trials", type=int, default=None, help="trials in total (all workers)")
    p.add_argument(
        "--storage",
        default=None,
        help=f"URL or journal file (default ${STORAGE_ENV}, else OUT/{JOURNAL_NAME})",
    )
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


# --- storage and study --------------------------------------------------------------------------


def open_storage(url: str, heartbeat: int = 10, grace: int = 60, max_retry: int = 2) -> Any:
    """An RDB storage (URL with '://') with heartbeats and retries, else a journal file."""
    import optuna

    if "://" in url:
        # several local processes on one SQLite file wait for the lock instead of failing
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        with warnings.catch_warnings():
            # heartbeats are "experimental" in Optuna 5; they are what makes a study crash-safe
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return _rdb(url, kwargs, heartbeat, grace, max_retry)
            except Exception as e:  # a bad URL, no driver, no server: one line, no password
                raise ConfigError(
                    f"--storage {redact_url(url)}: cannot open it ({type(e).__name__}: "
                    f"{redact_text(_first_line(e))})"
                ) from None
    from optuna.storages.journal import JournalFileBackend

    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__


def _rdb(url: str, kwargs: dict, heartbeat: int, grace: int, max_retry: int) -> Any:
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=kwargs,
        heartbeat_interval=heartbeat,
        grace_period=grace,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
            max_retry, inherit_intermediate_values=True
        ),
    )


def sampler_seed(seed: int, n_existing: int) -> int:
    """The sampler seed of a process joining a study that holds `n_existing` trials: the same
    command on the same study state draws the same points, a continued study new ones."""
    return zlib.crc32(f"wash-sweeps-sampler:{seed}:{n_existing}".encode())


def make_sampler(spec: SweepSpec, seed: int, shared: bool = False) -> Any:
    """`shared`: several workers ask at once; TPE then counts the running trials as bad
    (constant liar), so concurrent workers do not all draw the same promising point."""
    import optuna

    if spec.multi_objective:
        return optuna.samplers.NSGAIISampler(seed=seed)
    if spec.method == "bayes":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=shared)
    # grid points are enqueued; random proposes the rest (and a grid never has a rest)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec: SweepSpec, name: str) -> Any:
    import optuna

    # a grid is a comparison (methods x seeds): every point runs to the end unless asked
    auto_off = name == "auto" and spec.method == "grid" and not spec.early_terminate
    if spec.multi_objective or name == "none" or auto_off:
        return optuna.pruners.NopPruner()
    et = spec.early_terminate
    if name == "hyperband" or (name == "auto" and et):
        et = et or {}
        return optuna.pruners.HyperbandPruner(
            min_resource=int(et.get("min_iter", 1)), reduction_factor=int(et.get("eta", 3))
        )
    # the averaged model sits at chance until the members share a basin (epoch ~15 of 40 for
    # WASH on MNIST-1D): no pruning in the first half of training
    epochs = TrainConfig.from_dict(spec.base).epochs
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, epochs // 2))


def load_or_create(storage: Any, name: str, spec: SweepSpec, args: argparse.Namespace) -> Any:
    import optuna

    directions = spec.directions
    shared = shared_study(storage, args)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=directions,
        sampler=make_sampler(spec, args.seed, shared),
        pruner=make_pruner(spec, args.pruner),
        load_if_exists=True,
    )
    # a continued study must not re-propose its first points: the seed also depends on how many
    # trials the study holds when this process joins it (and on --seed, distinct per worker)
    study.sampler = make_sampler(
        spec, sampler_seed(args.seed, len(study.get_trials(deepcopy=False))), shared
    )
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(
            f"study {name!r} exists with directions {[d.name.lower() for d in study.directions]}, "
            f"but {spec.path} asks for {directions}; use another --study-name"
        )
    if "sweep" not in study.user_attrs:
        study.set_user_attr("sweep", spec.raw)
        study.set_user_attr("objectives", [list(o) for o in spec.objectives])
        # the dashboard then names the objective (a validation key) instead of "Objective 0"
        study.set_metric_names([m for m, _ in spec.objectives])
        if spec.method == "grid":  # once, by the process that created the study
            for point in spec.grid():
                study.enqueue_trial(point, skip_if_exists=True)
    return study


def shared_study(storage: Any, args: argparse.Namespace) -> bool:
    """Whether several workers ask the study at once: `--workers` > 1 here, or a PostgreSQL
    study (how the workers of several machines share one)."""
    engine = getattr(storage, "engine", None)
    return args.workers > 1 or (engine is not None and engine.dialect.name == "postgresql")


def target_trials(spec: SweepSpec, n_trials: int | None) -> int:
    if spec.method == "grid":
        n = len(spec.grid())
        if n_trials is not None and n_trials < n:
            return n_trials
        return n
    n = n_trials if n_trials is not None else spec.run_cap
    if n is None or n < 1:
        raise ConfigError(f"{spec.path}: --n-trials K (K >= 1) is needed for a {spec.method} sweep")
    return n


# --- the cap, heartbeats and stale trials -------------------------------------------------------


def used_slots(trials: list[Any]) -> int:
    """Trials that count against --n-trials: all but the waiting ones and the killed ones that
    were retried (their retry counts instead)."""
    from optuna.trial import TrialState

    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials if t.state != TrialState.WAITING and t.number not in retried)


@contextlib.contextmanager
def slot_lock(out: Path, storage: Any, study_name: str) -> Iterator[None]:
    """Serialise "count the trials, then create one" among all workers: a file lock for the
    processes of this machine, plus a PostgreSQL advisory lock for those of other machines."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".study.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            with _pg_advisory_lock(storage, study_name):
                yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _pg_advisory_lock(storage: Any, study_name: str) -> Iterator[None]:
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        yield
        return
    from sqlalchemy import text

    key = zlib.crc32(f"wash-sweeps:{study_name}".encode())  # stable across processes
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def fail_stale(study: Any, storage: Any, grace: int, max_retry: int) -> list[int]:
    """Fail running trials whose heartbeat is older than `grace` s, enqueue their retries.
    RDB storages do it natively; this does the same on the journal file."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    if isinstance(storage, optuna.storages.RDBStorage):
        before = {t.number for t in study.get_trials(states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        # not `before - still running`: other workers' trials end meanwhile (outside this lock);
        # a trial that fails by itself has a reason, a stale one failed by Optuna has none
        return [
            t.number
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.number in before and not t.user_attrs.get(FAIL_REASON)
        ]
    now, failed = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = t.system_attrs.get(HEARTBEAT_ATTR) or t.datetime_start.timestamp()
        if now - last <= grace:
            continue
        try:  # the journal refuses a second FAIL: only one process retries the trial
            storage.set_trial_user_attr(t._trial_id, FAIL_REASON, "stale heartbeat (killed?)")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        retry = RetryHeartbeatStaleTrialCallback(max_retry, inherit_intermediate_values=True)
        retry(study, storage.get_trial(t._trial_id))
        failed.append(t.number)
    return failed


class Heartbeat:
    """Beats every `interval` s while a trial runs (a thread, so a long epoch still beats)."""

    def __init__(self, storage: Any, trial_id: int, interval: int):
        import optuna

        if isinstance(storage, optuna.storages.RDBStorage):
            self._beat = lambda: storage.record_heartbeat(trial_id)
        else:
            self._beat = lambda: storage.set_trial_system_attr(
                trial_id, HEARTBEAT_ATTR, time.time()
            )
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a missed beat is only a late beat
                self._beat()
            self._stop.wait(self._interval)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# --- one trial ----------------------------------------------------------------------------------


def run_trial(
    study: Any, storage: Any, trial: Any, spec: SweepSpec, out: Path, ctx: dict[str, Any]
) -> None:
    """Train one trial and tell the study how it ended (complete, pruned or failed + reason)."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from .distributed import run_torchrun
    from .results import RunDir
    from .tracking import make_tracker
    from .train import train_and_evaluate

    start = time.perf_counter()
    params: dict[str, Any] = {}
    # the Trial handle of Optuna 5 does not show system attrs; the stored trial does
    origin = RetryHeartbeatStaleTrialCallback.retried_trial_number(
        storage.get_trial(trial._trial_id)
    )
    number = trial.number if origin is None else origin  # a retry reuses the run directory
    run_dir = out / "trials" / f"trial-{number}"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # which GPU(s) ran it (--gpus)
        trial.set_user_attr("cuda_visible_devices", os.environ["CUDA_VISIBLE_DEVICES"])
    if origin is not None:
        trial.set_user_attr(FAIL_REASON, "")  # the killed attempt's reason is not this one's
    state, values, note = TrialState.FAIL, None, ""
    try:
        params = spec.suggest(trial)
        cfg = spec.resolve(params).replace(
            out_dir=str(out / "trials"),
            run_name=f"trial-{number}",
            group=study.study_name,
            progress=False,
            **ctx["fixed"],
        )
        resume = (run_dir / "checkpoint.pt").exists()
        if resume:
            done = RunDir(run_dir).read_metrics()
            trial.set_user_attr("resumed_at_epoch", done[-1]["epoch"] if done else 0)
        with Heartbeat(storage, trial._trial_id, ctx["heartbeat"]):
            if ctx["nproc"] > 1:  # a torchrun job, followed through its metrics.jsonl
                summary = run_torchrun(
                    cfg,
                    ctx["nproc"],
                    run_dir,
                    resume=resume,
                    on_epoch=_reporter(trial, spec),
                    mlflow_parent_run_id=ctx["mlflow_parent"],
                )
            else:
                tracker = make_tracker(
                    cfg, run_dir, mlflow_parent_run_id=ctx["mlflow_parent"], resume=resume
                )
                link_trackers(trial, run_dir)  # while it runs: the dashboard finds its runs
                summary = train_and_evaluate(
                    cfg, run_dir, tracker=tracker, on_epoch=_reporter(trial, spec), resume=resume
                )
        values = [float(summary[m]) for m, _ in spec.objectives]
        if all(math.isfinite(v) for v in values):
            state = TrialState.COMPLETE
        else:
            note = f"non-finite objective {values}"
            trial.set_user_attr(FAIL_REASON, note)
    except KeyboardInterrupt:
        # Ctrl-C: fail the trial and queue its retry now, so the same command resumes it from
        # its checkpoint without waiting for the heartbeat's grace period
        trial.set_user_attr(FAIL_REASON, "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        retry = RetryHeartbeatStaleTrialCallback(ctx["max_retry"], inherit_intermediate_values=True)
        retry(study, storage.get_trial(trial._trial_id))
        raise
    except optuna.TrialPruned as e:
        state, note = TrialState.PRUNED, str(e)
    except Exception as e:
        # a bad sampled combination, a NaN loss, a checkpoint that does not match, a failed
        # torchrun job, a bug: the trial fails with its reason (never left RUNNING), the study
        # goes on
        note = redact_text(f"{type(e).__name__}: {str(e).strip()[:500]}")
        if not isinstance(e, (ConfigError, RunFailure)):
            import traceback

            traceback.print_exc()  # an unexpected error: its traceback for the worker's log
        trial.set_user_attr(FAIL_REASON, note)
    link_trackers(trial, run_dir)  # a torchrun job's rank 0 opened them
    study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
    res = ", ".join(
        f"{m}={v:.4g}" for (m, _), v in zip(spec.objectives, values or [], strict=False)
    )
    print(
        f"[{study.study_name}] trial {trial.number} {state.name} {res or note} ({shown}) "
        f"{time.perf_counter() - start:.1f} s, pid {os.getpid()}",
        flush=True,
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


# --- workers and the command ----------------------------------------------------------------------


def work(
    study: Any, storage: Any, spec: SweepSpec, out: Path, n_trials: int, args: Any, ctx: dict
) -> int:
    """Run trials until the study holds `n_trials` ended trials; return how many ran here.

    When the cap is reached while other trials still run, wait for them: one of them may belong
    to a dead worker, and its retry (once its heartbeat is stale) is this worker's to run."""
    from optuna.trial import TrialState

    ran = 0
    while True:
        with slot_lock(out, storage, study.study_name):
            for n in fail_stale(study, storage, args.grace, args.max_retry):
                print(
                    f"[{study.study_name}] trial {n}: no heartbeat for {args.grace} s, "
                    "failed, retry queued",
                    flush=True,
                )
            trials = study.get_trials(deepcopy=False)
            full = used_slots(trials) >= n_trials
            if full and not any(t.state == TrialState.RUNNING for t in trials):
                return ran
            trial = None if full else study.ask()
        if trial is None:
            time.sleep(min(args.heartbeat, 1))  # a cheap storage read per second
            continue
        run_trial(study, storage, trial, spec, out, ctx)
        ran += 1


def study_command(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    if args.track is not None:
        overrides["track"] = args.track
    check_study_args(args)
    spec = load_spec(args.sweep_file, overrides)
    gpus = worker_gpus(args, spec)  # a bad --gpus fails before any storage is touched
    name = safe_name(args.study_name or spec.name, "--study-name" if args.study_name else "name")
    root = TrainConfig.from_dict(spec.base)  # out_dir: the output root of the study's runs
    out = Path(args.out or Path(root.out_dir) / "studies" / name)
    storage_url = args.storage or os.environ.get(STORAGE_ENV) or str(out / JOURNAL_NAME)
    # the parent run and its trials in the MLflow store of the output root, beside the plain
    # runs there (`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows all of them)
    spec = spec.with_overrides(shared_store(root))
    n_trials = target_trials(spec, args.n_trials)
    storage = open_storage(storage_url, args.heartbeat, args.grace, args.max_retry)
    study = load_or_create(storage, name, spec, args)
    if args.create_only:
        print(f"study {name!r} ready in {redact_url(storage_url)} ({n_trials} trials)")
        return 0
    ctx = {
        "mlflow_parent": args.mlflow_parent,
        "heartbeat": args.heartbeat,
        "max_retry": args.max_retry,
        "nproc": args.nproc_per_trial,
        "fixed": {},
    }
    procs = args.workers * args.nproc_per_trial
    if procs > 1 and spec.base.get("threads", 0) == 0:
        # the training processes share the cores instead of each taking all of them
        ctx["fixed"]["threads"] = max(1, (os.cpu_count() or 1) // procs)
    if args.worker:
        work(study, storage, spec, out, n_trials, args, ctx)
        return 0
    parent = _start_parent(spec, name, out)
    ctx["mlflow_parent"] = parent.mlflow_run_id if parent else None
    if parent:
        parent.log_params(study_params(spec, study, args, ctx["fixed"]))
    print(
        f"study {name!r}: {n_trials} trials, {args.workers} worker(s), "
        f"storage {redact_url(storage_url)}, out {out}",
        flush=True,
    )
    status = "FAILED"
    try:
        died: list[int] = []
        if args.workers == 1 and gpus is None:
            work(study, storage, spec, out, n_trials, args, ctx)
        else:
            died = _run_workers(args, name, out, storage_url, n_trials, ctx, gpus)
        summary = study_summary(study, spec)
        write_json(out / "study_summary.json", summary)
        if parent:
            parent.log_params(best_params(summary))
            parent.log_summary(_flat_summary(summary))
            parent.log_artifact(out / "study_summary.json")
        print(_describe(summary, out))
        if died:
            raise RunFailure(
                f"study {name!r}: {len(died)} worker(s) died (exit codes {died}); "
                "run the same command again to continue (their trials are retried)"
            )
        status = "FINISHED"
    finally:
        if parent:
            parent.finish(status)
    return 0


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


def study_params(
    spec: SweepSpec, study: Any, args: argparse.Namespace, fixed: dict[str, Any]
) -> dict[str, Any]:
    """The parent run's params: every result-changing field the trials share (the sweep's
    constants and --set), and how the study samples, prunes and what it optimises."""
    swept = {p.name for p in spec.params}
    cfg = TrainConfig.from_dict({**spec.base, **fixed})
    shared = {k: v for k, v in cfg.result_config().items() if k not in swept}
    return {
        **shared,
        "study/sweep_file": spec.path,
        "study/method": spec.method,
        "study/objectives": [f"{m} ({g})" for m, g in spec.objectives],
        "study/swept": sorted(swept),
        "study/sampler": type(study.sampler).__name__,
        "study/pruner": type(study.pruner).__name__,
    }


def best_params(summary: dict[str, Any]) -> dict[str, Any]:
    """The best trial's number and parameters (categorical ones too: `best/method=wash`);
    none for a multi-objective study (its Pareto front is in study_summary.json)."""
    best = summary.get("best_trial")
    if not best:
        return {}
    return {"best/trial": best["number"], **{f"best/{k}": v for k, v in best["params"].items()}}


def _start_parent(spec: SweepSpec, name: str, out: Path) -> Any:
    from .tracking import start_study_run

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


def worker_gpus(args: argparse.Namespace, spec: SweepSpec) -> list[str] | None:
    """Each worker's CUDA_VISIBLE_DEVICES from `--gpus` (None without it)."""
    text = getattr(args, "gpus", None)
    if text is None:
        return None
    if str(spec.base.get("device", "auto")) == "cpu":
        raise ConfigError(f"--gpus {text!r}: the trials run on device=cpu")
    gpus = parse_gpus(text, visible_gpus())
    return assign_gpus(gpus, args.workers, args.nproc_per_trial)


def _run_workers(
    args: Any,
    name: str,
    out: Path,
    storage_url: str,
    n_trials: int,
    ctx: dict,
    gpus: list[str] | None = None,
) -> list[int]:
    """Start the worker processes (on their GPUs, when `gpus` assigns them) and wait for them;
    returns the exit codes of those that failed (killed or crashed)."""
    cmd = [
        sys.executable,
        "-m",
        "wash_sweeps",
        "study",
        args.sweep_file,
        "--worker",
        "--study-name",
        name,
        "--out",
        str(out),
        "--n-trials",
        str(n_trials),
        "--pruner",
        args.pruner,
        "--heartbeat",
        str(args.heartbeat),
        "--grace",
        str(args.grace),
        "--max-retry",
        str(args.max_retry),
        "--workers",
        str(args.workers),
        "--nproc-per-trial",
        str(args.nproc_per_trial),
    ]
    for item in args.overrides:
        cmd += ["--set", item]
    if args.track is not None:
        cmd += ["--track", args.track]
    if ctx["mlflow_parent"]:
        cmd += ["--mlflow-parent", ctx["mlflow_parent"]]
    # the storage URL (it may hold a password) through the environment: never on a command line
    env = {**os.environ, STORAGE_ENV: storage_url}
    procs = []
    for i in range(args.workers):
        # a worker's trials see only its devices: device=auto/cuda is then the assigned GPU
        worker_env = env if gpus is None else {**env, "CUDA_VISIBLE_DEVICES": gpus[i]}
        if gpus is not None:
            print(f"study {name!r}: worker {i} on CUDA device(s) {gpus[i]}", flush=True)
        # each worker samples with its own seed, else two workers propose the same first points
        procs.append(subprocess.Popen([*cmd, "--seed", str(args.seed + i)], env=worker_env))
    codes = [p.wait() for p in procs]
    return [c for c in codes if c != 0]


# --- summary and report ---------------------------------------------------------------------------


def study_summary(study: Any, spec: SweepSpec) -> dict[str, Any]:
    """Best trial (or Pareto front), counts by state, parameter importances."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    out: dict[str, Any] = {
        "study_name": study.study_name,
        "sweep_file": spec.path,
        "objectives": [{"name": m, "goal": g} for m, g in spec.objectives],
        "n_trials": len(trials),
        "states": counts,
        "failures": {
            t.number: t.user_attrs[FAIL_REASON] for t in trials if t.user_attrs.get(FAIL_REASON)
        },
    }
    if done:
        if spec.multi_objective:
            out["pareto_front"] = [_trial_record(t) for t in study.best_trials]
        else:
            out["best_trial"] = _trial_record(study.best_trial)
            out["best_config"] = spec.resolve(study.best_trial.params).to_dict()
    out["importances"] = _importances(study, spec, done)
    return out


def _trial_record(t: Any) -> dict[str, Any]:
    """A chosen trial: its objective values (validation) and, only reported, its test numbers."""
    return {
        "number": t.number,
        "values": t.values,
        "params": t.params,
        "run_dir": t.user_attrs.get("run_dir"),
        "test": _test_numbers(t.user_attrs.get("run_dir")),
    }


def _test_numbers(run_dir: str | None) -> dict[str, float]:
    """The `test/` metrics of a finished trial's run (reported beside the chosen setting; never
    used to choose it). Empty when the run directory or its summary is gone."""
    path = Path(run_dir) / "summary.json" if run_dir else None
    if path is None or not path.is_file():
        return {}
    try:
        summary = read_json(path)
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in summary.items() if k.startswith("test/") and isinstance(v, float)}


def _importances(study: Any, spec: SweepSpec, done: list[Any]) -> dict[str, Any]:
    import optuna

    if len(done) < 2:
        return {}
    out = {}
    for i, (metric, goal) in enumerate(spec.objectives):
        sign = -1.0 if goal == "maximize" else 1.0  # the evaluator ranks params for low targets
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                imp = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i, s=sign: s * t.values[i]
                )
            out[metric] = {k: float(v) for k, v in imp.items()}
        except (RuntimeError, ValueError) as e:  # e.g. one parameter value only
            out[metric] = {"unavailable": str(e).splitlines()[0]}
    return out


def _flat_summary(summary: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {f"study/states/{k}": v for k, v in summary["states"].items()}
    best = summary.get("best_trial")
    if best:
        flat["study/best_trial"] = best["number"]
        flat["study/best_value"] = best["values"][0]
        flat.update({f"study/best_{k}": v for k, v in best.get("test", {}).items()})
    if "pareto_front" in summary:
        flat["study/pareto_size"] = len(summary["pareto_front"])
    for metric, imp in summary["importances"].items():
        flat.update(
            {f"study/importance/{metric}/{k}": v for k, v in imp.items() if isinstance(v, float)}
        )
    return flat


def _describe(summary: dict[str, Any], out: Path) -> str:
    lines = [f"trials by state: {summary['states']}"]
    if "best_trial" in summary:
        b = summary["best_trial"]
        lines.append(
            f"best trial {b['number']}: {summary['objectives'][0]['name']}={b['values'][0]:.4f} "
            f"params {b['params']}  ({b['run_dir']})"
        )
        test = b.get("test", {})
        if test:
            lines.append(
                "  its test numbers (reported, not used to choose): "
                + "  ".join(
                    f"{k}={test[k]:.4f}" for k in ("test/acc_avg", "test/acc_ens") if k in test
                )
            )
    if "pareto_front" in summary:
        lines.append(f"Pareto front: {len(summary['pareto_front'])} trials")
        for r in summary["pareto_front"]:
            lines.append(f"  trial {r['number']}: values {r['values']} params {r['params']}")
    lines.append(
        f"summary: {out / 'study_summary.json'}; figures: wash-sweeps study-report --out {out}"
    )
    return "\n".join(lines)


def report(args: argparse.Namespace) -> int:
    """Optuna's figures as PNGs (matplotlib, offline): history, importances, contour of p x N,
    Pareto front, intermediate values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    given = args.storage or os.environ.get(STORAGE_ENV)
    if not args.out and not given:
        raise ConfigError("study-report: give --out (the study's directory) or --storage")
    out = Path(args.out or ".")
    url = given or str(out / JOURNAL_NAME)
    if "://" not in url and not Path(url).is_file():
        raise ConfigError(f"study-report: storage file {url!r} does not exist")
    storage = open_storage(url)
    names = optuna.get_all_study_names(storage)
    name = args.study_name or (names[0] if len(names) == 1 else None)
    if name not in names:
        raise ConfigError(f"study-report: --study-name is one of {names}")
    study = optuna.load_study(study_name=name, storage=storage)
    objectives = study.user_attrs.get("objectives") or [["value", "maximize"]]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, draw in _figures(study, objectives):
        try:
            ax = draw()
        except (ValueError, RuntimeError) as e:
            print(f"skipped {fname}: {str(e).splitlines()[0]}")
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.savefig(out / fname, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(out / fname)
    for p in written:
        print(p)
    return 0


def _figures(study: Any, objectives: list[list[str]]) -> list[tuple[str, Any]]:
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as vis

    multi = len(objectives) > 1
    first = objectives[0][0]
    target = (lambda t: t.values[0]) if multi else None
    name = first
    figs = [
        (
            "optimization_history.png",
            lambda: vis.plot_optimization_history(study, target=target, target_name=name),
        ),
        (
            "param_importances.png",
            lambda: vis.plot_param_importances(study, target=target, target_name=name),
        ),
    ]
    both = [t.params for t in study.get_trials(states=(TrialState.COMPLETE,))]
    both = [q for q in both if "p" in q and "n_members" in q]  # p is often WASH-only
    if all(len({q[k] for q in both}) >= 2 for k in ("p", "n_members")):
        figs.append(
            (
                "contour_p_n_members.png",
                lambda: vis.plot_contour(
                    study, params=["p", "n_members"], target=target, target_name=name
                ),
            )
        )
    if multi:
        figs.append(
            (
                "pareto_front.png",
                lambda: vis.plot_pareto_front(study, target_names=[o[0] for o in objectives]),
            )
        )
    elif any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        figs.append(("intermediate_values.png", lambda: vis.plot_intermediate_values(study)))
    return figs
