"""Where a study lives and how it samples: the storage (journal file or RDB URL), the sampler, the
pruner, the study created once, and the lock around "count the trials, then create one"."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import ConfigError, TrainConfig
from ..redact import STORAGE_ENV, redact_text, redact_url
from ..sweep_spec import SweepSpec
from .recovery import retry_killed_trials

JOURNAL_NAME = "optuna-journal.log"


def storage_url(given: str | None, out: Path) -> str:
    """`--storage`, else $WASH_SWEEPS_STORAGE, else the journal file in the study's directory."""
    return given or os.environ.get(STORAGE_ENV) or str(out / JOURNAL_NAME)


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

    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=kwargs,
        heartbeat_interval=heartbeat,
        grace_period=grace,
        heartbeat_stale_trial_callback=retry_killed_trials(max_retry),
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
        _describe_new_study(study, spec)
    return study


def _describe_new_study(study: Any, spec: SweepSpec) -> None:
    """Once, by the process that created the study: the sweep, its objectives, its grid."""
    study.set_user_attr("sweep", spec.raw)
    study.set_user_attr("objectives", [list(o) for o in spec.objectives])
    # the dashboard then names the objective (a validation key) instead of "Objective 0"
    study.set_metric_names([m for m, _ in spec.objectives])
    if spec.method == "grid":
        for point in spec.grid():
            study.enqueue_trial(point, skip_if_exists=True)


def shared_study(storage: Any, args: argparse.Namespace) -> bool:
    """Whether several workers ask the study at once: `--workers` > 1 here, or a PostgreSQL
    study (how the workers of several machines share one)."""
    return args.workers > 1 or _is_postgresql(storage)


def _is_postgresql(storage: Any) -> bool:
    engine = getattr(storage, "engine", None)
    return engine is not None and engine.dialect.name == "postgresql"


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
    if not _is_postgresql(storage):
        yield
        return
    from sqlalchemy import text

    key = zlib.crc32(f"wash-sweeps:{study_name}".encode())  # stable across processes
    with storage.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
