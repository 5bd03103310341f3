"""Build a run's trackers from its config, and end a recorded run from outside it.

`make_tracker(cfg, run_dir)` opens the trackers `cfg.track` names (`config.trackers`; each
imported only when named) behind one guarded fan-out, and records their run ids in
`<run_dir>/trackers.json` (`refs`). `end_run(run_dir, status)` ends the MLflow run recorded
there: for a job stopped from outside (a killed torchrun job), whose own trackers never finished.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import TRACKERS, trackers
from .base import FanOut, Guarded, Tracker, first_line, warn
from .provenance import provenance_tags
from .refs import TRACKERS_FILE, read_refs, write_refs


def tracker_names(cfg: Any) -> tuple[str, ...]:
    """The trackers `cfg.track` names; ValueError on one this package does not know."""
    names = trackers(cfg)
    if any(n not in TRACKERS for n in names):
        raise ValueError(f"track={cfg.track!r}: allowed trackers are {', '.join(TRACKERS)}")
    return names


def make_tracker(
    cfg: Any, run_dir: str | Path, mlflow_parent_run_id: str | None = None, resume: bool = False
) -> Tracker:
    """The trackers named in `cfg.track` behind one guarded fan-out (a no-op if none).

    A trial of a study passes the study's MLflow run id to be nested under it. `resume`: continue
    the tracker runs recorded in `<run_dir>/trackers.json` (see the package doc)."""
    names = tracker_names(cfg)
    if not names:
        return Tracker()
    run_dir = Path(run_dir)
    name = cfg.run_name or cfg.default_run_name
    opened = open_trackers(
        names, cfg, run_dir, name, mlflow_parent_run_id, job_type=cfg.job_type, resume=resume
    )
    fan = FanOut(opened)
    fan.set_tags(provenance_tags(cfg))
    return fan


def open_trackers(
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
    and record their ids there. A tracker that cannot start is left out with one warning."""
    previous = read_refs(run_dir) if resume else {}
    out: list[Tracker] = []
    refs = dict(previous)
    for n in names:
        try:
            t = _open_one(n, cfg, run_dir, run_name, parent, job_type, extra_tags, previous.get(n))
        except Exception as e:  # an unreachable tracker never stops the run
            warn(
                f"tracker {n} could not start ({type(e).__name__}: {first_line(e)}); "
                f"the run goes on without it, local results in {run_dir}"
            )
            continue
        refs[n] = t.ref()
        out.append(Guarded(t, str(run_dir)))
    if out:
        write_refs(run_dir, refs)
    return out


def _open_one(
    name: str,
    cfg: Any,
    run_dir: Path,
    run_name: str,
    parent: str | None,
    job_type: str,
    extra_tags: Mapping[str, str] | None,
    previous: Mapping[str, Any] | None,
) -> Tracker:
    if name == "wandb":
        from .wandb import WandbTracker

        return WandbTracker(cfg, run_dir, run_name, job_type, previous)
    from .mlflow import MlflowTracker

    return MlflowTracker(cfg, run_dir, run_name, parent, extra_tags, previous)


def end_run(run_dir: str | Path, status: str = "KILLED") -> None:
    """End the MLflow run that `<run_dir>/trackers.json` records with `status` (FINISHED,
    FAILED or KILLED), for a job stopped from outside: its MLflow run shows `status`, not
    RUNNING. Best effort and silent: nothing recorded, an unreadable file or a store that does
    not answer is no error (the local results are what count). W&B needs nothing: an offline run
    has no server state, and an online run that stops reporting is marked crashed by W&B."""
    from .mlflow import end_recorded_run

    with contextlib.suppress(Exception):
        ref = json.loads((Path(run_dir) / TRACKERS_FILE).read_text())["mlflow"]
        end_recorded_run(ref, status)
