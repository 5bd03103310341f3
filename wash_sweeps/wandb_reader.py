"""Read a W&B offline run back: config, history, summary, from its `.wandb` log alone.

W&B 0.31 offline writes no wandb-summary.json or config.yaml; the run lives in its
transaction log `run-<id>.wandb`. This reader runs `wandb leet inspect --json` (W&B's own
decoder of that log, one JSON record per line) and folds the records back together.

    from wash_sweeps.wandb_reader import find_runs, read_run
    run = read_run(find_runs("runs/mnist1d-wash-N5-p0.01-s0")[0])
    run.history[-1]["val/acc_avg"], run.last("val/acc_avg"), run.config["p"]

From a shell: `wandb leet inspect --summary --json <offline-run dir>` (latest values) or
`wandb leet <run_dir>/wandb` (the terminal UI).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class WandbRun:
    path: Path  # the offline-run-* directory
    run_id: str
    project: str
    group: str
    job_type: str
    tags: list[str]
    config: dict[str, Any]
    history: list[dict[str, Any]]  # one row per step, with "_step"
    summary: dict[str, Any]
    exit_code: int | None
    artifacts: list[dict[str, Any]]  # name, type, files (paths inside the artifact)
    # define_metric declarations: {"name" or "glob_name", "step_metric", "summary": {"max": true}}
    metric_defs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stats: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # system stats samples

    def last(self, key: str) -> Any:
        """The summary's last value of `key`. With define_metric(summary="max,last") W&B writes
        {"max": .., "last": ..} once its backend has folded the history in, and the plain last
        value when the run ended before that: either way, the last value."""
        value = self.summary[key]
        if isinstance(value, dict) and "last" in value:
            return value["last"]
        return value


def find_runs(root: str | Path) -> list[Path]:
    """Offline (or synced online) run directories under `root`, oldest first."""
    root = Path(root)
    found = {p.parent for p in root.rglob("run-*.wandb")}
    return sorted(found, key=lambda p: p.name)


def _wandb_cli() -> str:
    beside = Path(sys.executable).parent / "wandb"  # the venv's CLI, even if not on PATH
    if beside.exists():
        return str(beside)
    found = shutil.which("wandb")
    if found is None:
        raise FileNotFoundError("the `wandb` command is not installed (pip install wandb)")
    return found


def records(run_path: str | Path) -> list[dict[str, Any]]:
    """Every record of the run's `.wandb` log, decoded by `wandb leet inspect --json`."""
    run_path = Path(run_path)
    if not run_path.exists():
        raise FileNotFoundError(f"W&B run {str(run_path)!r} does not exist")
    out = subprocess.run(
        [_wandb_cli(), "leet", "inspect", "--json", str(run_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"wandb leet inspect {run_path} failed: {out.stderr.strip().splitlines()[-1:]}"
        )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _unflatten_media(item: dict[str, Any]) -> dict[str, Any]:
    """History/summary flatten media (tables) to `key._type`, `key.path`...: fold them back."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        head, dot, field = key.rpartition(".")
        if dot and field in _MEDIA_FIELDS and f"{head}._type" in item:
            out.setdefault(head, {})[field] = value
        else:
            out[key] = value
    return out


_MEDIA_FIELDS = {
    "_type",
    "_latest_artifact_path",
    "artifact_path",
    "log_mode",
    "ncols",
    "nrows",
    "path",
    "sha256",
    "size",
}


def read_run(run_path: str | Path) -> WandbRun:
    """Config, history (one row per step), summary and artifacts of one W&B run directory."""
    run_path = Path(run_path)
    meta: dict[str, Any] = {}
    config: dict[str, Any] = {}
    rows: dict[int, dict[str, Any]] = {}
    summary: dict[str, Any] = {}
    artifacts: list[dict[str, Any]] = []
    metric_defs: list[dict[str, Any]] = []
    stats: list[dict[str, Any]] = []
    exit_code = None
    for rec in records(run_path):
        kind = rec.get("type")
        if kind == "run":
            meta = rec["run"]
            config.update(meta.get("config", {}).get("update", {}))
        elif kind == "config":
            config.update(rec["config"].get("update", {}))
        elif kind == "history":
            item = _unflatten_media(rec["history"]["item"])
            step = int(rec["history"].get("step", {}).get("num", item.get("_step", 0)))
            rows.setdefault(step, {"_step": step}).update(item)
        elif kind == "summary":
            summary.update(_unflatten_media(rec["summary"].get("update", {})))
        elif kind == "artifact":
            a = rec["artifact"]
            files = [c["path"] for c in a.get("manifest", {}).get("contents", [])]
            artifacts.append({"name": a.get("name"), "type": a.get("type"), "files": files})
        elif kind == "metric":
            metric_defs.append(rec["metric"])
        elif kind == "stats":
            stats.append(rec["stats"].get("item", {}))
        elif kind == "exit":
            exit_code = rec["exit"].get("exit_code", 0)
    config.pop("_wandb", None)
    return WandbRun(
        path=run_path,
        run_id=meta.get("run_id", ""),
        project=meta.get("project", ""),
        group=meta.get("run_group", ""),
        job_type=meta.get("job_type", ""),
        tags=list(meta.get("tags", [])),
        config=config,
        history=[rows[s] for s in sorted(rows)],
        summary=summary,
        exit_code=exit_code,
        artifacts=artifacts,
        metric_defs=metric_defs,
        stats=stats,
    )
