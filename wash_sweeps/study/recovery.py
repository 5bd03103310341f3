"""Surviving killed workers: heartbeats, stale trials failed and retried, the cap's count.

A worker killed mid-trial stops beating its heartbeat; after the grace period another worker (or
the next `study` command) marks that trial failed and enqueues a retry with the same parameters,
which resumes from the killed trial's checkpoint. Optuna 5 has heartbeats only on RDB storages
(SQLite, PostgreSQL); on the journal file this module keeps the heartbeat in a trial system
attribute and fails stale trials itself, the same way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

HEARTBEAT_ATTR = "wash:heartbeat"  # journal storage: time.time() of the trial's last beat
FAIL_REASON = "fail_reason"  # user attr: why a trial failed ("" for a retry still running)


def retry_killed_trials(max_retry: int) -> Any:
    """The one retry policy of every path (RDB heartbeats, journal stale trials, Ctrl-C): the
    same parameters, up to `max_retry` times, keeping the reported epochs."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback(max_retry, inherit_intermediate_values=True)


def stored_trial_id(storage: Any, study: Any, number: int) -> int:
    """The storage's id of trial `number` of `study`, through the public storage API (Trial and
    FrozenTrial keep it only in a private attribute)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def retried_from(storage: Any, trial_id: int) -> int | None:
    """The number of the killed trial this one retries, or None for a first attempt (the Trial
    handle of Optuna 5 does not show system attrs; the stored trial does)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback.retried_trial_number(storage.get_trial(trial_id))


def queue_retry(study: Any, storage: Any, trial_id: int, max_retry: int) -> None:
    """Enqueue the retry of a trial just failed (unless it has been retried `max_retry` times)."""
    retry_killed_trials(max_retry)(study, storage.get_trial(trial_id))


def used_slots(trials: list[Any]) -> int:
    """Trials that count against --n-trials: all but the waiting ones and the killed ones that
    were retried (their retry counts instead)."""
    from optuna.trial import TrialState

    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials if t.state != TrialState.WAITING and t.number not in retried)


def fail_stale(study: Any, storage: Any, grace: int, max_retry: int) -> list[int]:
    """Fail running trials whose heartbeat is older than `grace` s, enqueue their retries; return
    their numbers. RDB storages do it natively; this does the same on the journal file."""
    import optuna
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
        trial_id = stored_trial_id(storage, study, t.number)
        try:  # the journal refuses a second FAIL: only one process retries the trial
            storage.set_trial_user_attr(trial_id, FAIL_REASON, "stale heartbeat (killed?)")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        queue_retry(study, storage, trial_id, max_retry)
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
