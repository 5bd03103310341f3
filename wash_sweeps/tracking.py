"""The tracker facade: params, metrics at a step, artifacts, tags, finish.

The trainer talks to one `Tracker`; `make_tracker(cfg, run_dir)` builds a fan-out over the
trackers named in `cfg.track`. Local results (`results.RunDir`) are always written first by the
trainer itself, so a tracker that fails never loses a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class Tracker:
    """The no-op tracker; the interface every tracker implements."""

    name = "noop"

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_curves(self, curves: Mapping[str, Sequence[float]], step: int) -> None: ...

    def log_summary(self, summary: Mapping[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path, name: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


NoopTracker = Tracker


class FanOut(Tracker):
    """Sends every call to each tracker."""

    name = "fanout"

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for t in self.trackers:
            getattr(t, method)(*args, **kwargs)

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

    def set_tags(self, tags):
        self._each("set_tags", tags)

    def finish(self, status="FINISHED"):
        self._each("finish", status)


def make_tracker(cfg: Any, run_dir: str | Path) -> Tracker:
    names = [t.strip() for t in cfg.track.split(",") if t.strip()]
    if not names:
        return Tracker()
    raise NotImplementedError(f"trackers {names} arrive with the tracking issue")
