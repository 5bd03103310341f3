"""`<run_dir>/trackers.json`: the ids of a run directory's tracker runs, for resuming.

    {"mlflow": {"run_id": ..., "uri": ...}, "wandb": {"id": ..., "mode": ..., "path": ...}}

The MLflow URI is kept with its password as *** (`redact.redact_url`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..results import RunFiles
from .base import first_line, warn

TRACKERS_FILE = RunFiles.TRACKERS  # in a run directory: the ids of its tracker runs, for resuming


def tracker_refs(run_dir: str | Path) -> dict[str, Any]:
    """The tracker runs of a run directory, as trackers.json records them ({} if none):
    `{"mlflow": {"run_id", "uri"}, "wandb": {"id", "mode", "path"}}`."""
    return read_refs(Path(run_dir))


def read_refs(run_dir: Path) -> dict[str, Any]:
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
        warn(f"{path}: unreadable ({first_line(e)}); the resumed run opens new tracker runs")
        return {}


def write_refs(run_dir: Path, refs: Mapping[str, Any]) -> None:
    from ..results import write_json

    write_json(run_dir / TRACKERS_FILE, dict(refs))
