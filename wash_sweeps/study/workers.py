"""The workers of a study: the loop each one runs (claim a slot under the lock, run a trial) and
the worker processes `--workers K` starts, each on its own GPUs with `--gpus`.

The cap `--n-trials K` counts trials that ended or run (complete, pruned, failed, running),
across all workers: a lock around "count, then create the next trial" (a file lock on one
machine, a PostgreSQL advisory lock across machines) keeps the workers from over-running it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..console import say
from ..redact import STORAGE_ENV
from ..runtime import assign_gpus, parse_gpus, visible_gpus
from ..sweep_spec import SweepSpec
from .recovery import fail_stale, used_slots
from .storage import slot_lock
from .trial import TrialSettings, run_trial


def work(
    study: Any,
    storage: Any,
    spec: SweepSpec,
    out: Path,
    n_trials: int,
    grace: int,
    settings: TrialSettings,
) -> int:
    """Run trials until the study holds `n_trials` ended trials; return how many ran here.

    When the cap is reached while other trials still run, wait for them: one of them may belong
    to a dead worker, and its retry (once its heartbeat is stale) is this worker's to run."""
    ran = 0
    while True:
        trial = _next_trial(study, storage, out, n_trials, grace, settings.max_retry)
        if trial is _DONE:
            return ran
        if trial is None:
            time.sleep(min(settings.heartbeat, 1))  # a cheap storage read per second
            continue
        run_trial(study, storage, trial, spec, out, settings)
        ran += 1


_DONE = object()  # the cap is reached and no trial runs any more


def _next_trial(
    study: Any, storage: Any, out: Path, n_trials: int, grace: int, max_retry: int
) -> Any:
    """Under the slot lock: fail stale trials, then a new trial, None (the cap is reached but
    trials still run: wait) or _DONE."""
    from optuna.trial import TrialState

    with slot_lock(out, storage, study.study_name):
        for n in fail_stale(study, storage, grace, max_retry):
            say(f"[{study.study_name}] trial {n}: no heartbeat for {grace} s, failed, retry queued")
        trials = study.get_trials(deepcopy=False)
        full = used_slots(trials) >= n_trials
        if full and not any(t.state == TrialState.RUNNING for t in trials):
            return _DONE
        return None if full else study.ask()


def worker_gpus(args: argparse.Namespace, spec: SweepSpec) -> list[str] | None:
    """Each worker's CUDA_VISIBLE_DEVICES from `--gpus` (None without it)."""
    text = getattr(args, "gpus", None)
    if text is None:
        return None
    if str(spec.base.get("device", "auto")) == "cpu":
        raise ConfigError(f"--gpus {text!r}: the trials run on device=cpu")
    gpus = parse_gpus(text, visible_gpus())
    return assign_gpus(gpus, args.workers, args.nproc_per_trial)


def run_workers(
    worker_args: list[str],
    n_workers: int,
    seed: int,
    storage_url: str,
    name: str,
    gpus: list[str] | None = None,
) -> list[int]:
    """Start `n_workers` processes of `wash-sweeps study WORKER_ARGS --seed S` (on their GPUs,
    when `gpus` assigns them) and wait for them; returns the exit codes of those that failed
    (killed or crashed)."""
    cmd = [sys.executable, "-m", "wash_sweeps", "study", *worker_args]
    # the storage URL (it may hold a password) through the environment: never on a command line
    env = {**os.environ, STORAGE_ENV: storage_url}
    procs = []
    for i in range(n_workers):
        # a worker's trials see only its devices: device=auto/cuda is then the assigned GPU
        worker_env = env if gpus is None else {**env, "CUDA_VISIBLE_DEVICES": gpus[i]}
        if gpus is not None:
            print(f"study {name!r}: worker {i} on CUDA device(s) {gpus[i]}", flush=True)
        # each worker samples with its own seed, else two workers propose the same first points
        procs.append(subprocess.Popen([*cmd, "--seed", str(seed + i)], env=worker_env))
    codes = [p.wait() for p in procs]
    return [c for c in codes if c != 0]
