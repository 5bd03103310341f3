"""Tuning: one Optuna study per task x method, the same number of trials for every method.

Each study is an ordinary sweep file (written beside its results, so that it can be re-run or
read) over the method's own knobs, on the tuning seed, maximising the validation metric, with
median pruning on validation; `wash-sweeps study` runs it (and continues it when re-run: the
trials already finished are kept). The chosen setting is the best trial's knob values.

    outputs/showcase/<task>/tuning/<method>/sweep.yaml, study_summary.json, trials/...
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError
from ..console import say
from .spec import Showcase, Task

SUMMARY = "study_summary.json"


def study_dir(out: Path, task: str, method: str) -> Path:
    return out / task / "tuning" / method


def sweep_of(spec: Showcase, task: Task, method: str) -> dict[str, Any]:
    """The sweep file of `method`'s tuning study on `task`."""
    fixed = {k: v for k, v in spec.base(task, method).items() if k != "preset"}
    fixed |= {"seed": spec.tuning_seed, "threads": 1, "progress": False}
    return {
        "name": f"{task.name}-{method}",
        "preset": task.preset,
        "method": "random",
        "metric": {"name": spec.metric, "goal": "maximize"},
        "parameters": {**{k: {"value": v} for k, v in fixed.items()}, **spec.methods[method]},
    }


def tune_task(spec: Showcase, task: Task, out: Path) -> list[str]:
    """Run (or finish) every tuned method's study on `task`; returns the methods that failed."""
    failed = []
    for method, knobs in spec.methods.items():
        if not knobs:
            continue  # nothing to tune (independent training)
        where = study_dir(out, task.name, method)
        where.mkdir(parents=True, exist_ok=True)
        sweep = where / "sweep.yaml"
        sweep.write_text(yaml.safe_dump(sweep_of(spec, task, method), sort_keys=False))
        say(f"[tune {task.name}] {method}: {task.trials} trials over {', '.join(knobs)}")
        cmd = [sys.executable, "-m", "wash_sweeps", "study", str(sweep), "--out", str(where)]
        cmd += ["--n-trials", str(task.trials), "--workers", str(spec.workers)]
        cmd += ["--pruner", "median", "--seed", str(spec.tuning_seed)]
        if subprocess.run(cmd).returncode != 0:
            failed.append(method)
    return failed


def chosen_setting(out: Path, task: str, method: str, knobs: dict[str, Any]) -> dict[str, Any]:
    """The knob values of the best tuning trial ({} for a method without knobs)."""
    if not knobs:
        return {}
    path = study_dir(out, task, method) / SUMMARY
    if not path.is_file():
        raise ConfigError(f"{path}: missing: run `wash-sweeps showcase tune ... --task {task}`")
    best = json.loads(path.read_text()).get("best_trial") or {}
    params = best.get("params")
    if not isinstance(params, dict) or not set(knobs) <= set(params):
        raise ConfigError(f"{path}: no finished trial with every knob of {method}")
    return {k: params[k] for k in knobs}


def tuning_record(out: Path, task: str, method: str) -> dict[str, Any]:
    """What the report shows of a study: trials by state, best validation value, its trial."""
    path = study_dir(out, task, method) / SUMMARY
    if not path.is_file():
        return {}
    s = json.loads(path.read_text())
    best = s.get("best_trial") or {}
    return {
        "states": s.get("states", {}),
        "n_trials": s.get("n_trials"),
        "best_value": (best.get("values") or [None])[0],
        "best_number": best.get("number"),
    }
