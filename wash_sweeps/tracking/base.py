"""The tracker interface, its no-op, the guard that switches a failing tracker off, the fan-out.

Local results (`results.RunDir`) are written first by the trainer, so a tracker never loses a
run: every call to a tracker goes through `Guarded`, and on its first failure the tracker prints
one warning to stderr and is switched off for the rest of the run.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..console import say
from ..redact import redact_text


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


class _Forwarding(Tracker):
    """A tracker that hands each call of the interface to `_send(method, *args)`."""

    def _send(self, method: str, *args: Any) -> None:
        raise NotImplementedError

    def log_params(self, params):
        self._send("log_params", params)

    def log_metrics(self, metrics, step):
        self._send("log_metrics", metrics, step)

    def log_curves(self, curves, step):
        self._send("log_curves", curves, step)

    def log_summary(self, summary):
        self._send("log_summary", summary)

    def log_artifact(self, path, name=None):
        self._send("log_artifact", path, name)

    def log_model(self, run_dir, input_example):
        self._send("log_model", run_dir, input_example)

    def set_tags(self, tags):
        self._send("set_tags", tags)

    def finish(self, status="FINISHED"):
        self._send("finish", status)


class Guarded(_Forwarding):
    """One tracker whose first failure prints one warning and switches it off."""

    def __init__(self, tracker: Tracker, where: str = ""):
        self.tracker, self.name, self.where = tracker, tracker.name, where
        self.failed: str | None = None

    def _send(self, method: str, *args: Any) -> None:
        if self.failed is not None:
            return
        try:
            getattr(self.tracker, method)(*args)
        except Exception as e:  # a tracker must never stop a run
            self.failed = f"{type(e).__name__}: {first_line(e)}"
            warn(f"tracker {self.name} failed in {method} ({self.failed}); {self._rest()}")

    def _rest(self) -> str:
        tail = f"; local results in {self.where} are complete" if self.where else ""
        return f"it is off for the rest of this run{tail}"


class FanOut(_Forwarding):
    """Sends every call to each tracker."""

    name = "fanout"

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    def _send(self, method: str, *args: Any) -> None:
        for t in self.trackers:
            getattr(t, method)(*args)

    def find(self, name: str) -> Tracker | None:
        """The live tracker called `name` (None if not tracked or switched off)."""
        for t in self.trackers:
            inner = t.tracker if isinstance(t, Guarded) else t
            if t.name == name and getattr(t, "failed", None) is None:
                return inner
        return None


def warn(message: str) -> None:
    say(f"wash-sweeps: warning: {redact_text(message)}", sys.stderr)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for a warning."""
    text = str(e).strip().splitlines()
    return text[0][:300] if text else repr(e)
