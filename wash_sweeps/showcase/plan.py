"""The showcase's runs, from the tuning studies: a `wash-sweeps grid` params file and the role of
every run (report, front, map), for the analysis.

- report: each method's chosen setting on every fresh seed;
- front: each method along its own communication axis (seed `seeds[0]`, its other knobs as
  chosen); the chosen setting's seed-0 run is a point of it too;
- map: WASH (chosen knobs) over p x schedule length, beside naive averaging (independent) and
  PAPA at each length; and WASH, PAPA and independent training over N (seed `seeds[0]`).

A run wanted by two roles (the same config) is trained once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..grid import grid_configs
from .spec import Showcase, Task
from .tune import chosen_setting

GRID = "grid.yaml"
ROLES = "roles.json"
RUNS = "runs"
COMPARATORS = ("independent", "papa")  # what WASH's failure map is drawn beside


def _chosen(spec: Showcase, task: Task, out: Path) -> dict[str, dict[str, Any]]:
    return {m: chosen_setting(out, task.name, m, k) for m, k in spec.methods.items()}


def task_runs(spec: Showcase, task: Task, out: Path) -> list[tuple[dict[str, Any], str, str]]:
    """(config overrides, method, role) of every run of `task`."""
    chosen, seed0 = _chosen(spec, task, out), spec.seeds[0]

    def cfg(method: str, **extra: Any) -> dict[str, Any]:
        return {**spec.base(task, method), **chosen[method], "seed": seed0, **extra}

    runs = [(cfg(m, seed=s), m, "report") for m in spec.methods for s in spec.seeds]
    for method, axes in task.fronts.items():
        runs += [(cfg(method, **{a: v}), method, "front") for a, vs in axes.items() for v in vs]
    fmap = task.map
    if "wash" in spec.methods:
        epochs = [*fmap.get("epochs", []), None]  # None: the task's own schedule
        for e in epochs:
            at = {} if e is None else {"epochs": e}
            runs += [(cfg("wash", p=p, **at), "wash", "map") for p in fmap.get("p", [])]
            runs += [(cfg("wash", **at), "wash", "map")]  # its chosen p too
            runs += [(cfg(m, **at), m, "map") for m in COMPARATORS if m in spec.methods]
        for n in fmap.get("n_members", []):
            runs += [
                (cfg(m, n_members=n), m, "map") for m in ("wash", *COMPARATORS) if m in spec.methods
            ]
    return runs


def plan(spec: Showcase, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The grid params (jobs, runs) and the roles of each run directory name."""
    runs: list[dict[str, Any]] = []
    roles: dict[str, dict[str, Any]] = {}
    for task in spec.tasks.values():
        for overrides, method, role in task_runs(spec, task, out):
            (config,) = grid_configs({"runs": [overrides]}, out / RUNS)
            name = config.run_dir().name
            if name not in roles:
                runs.append(overrides)
                roles[name] = {"task": task.name, "method": method, "roles": []}
            if role not in roles[name]["roles"]:
                roles[name]["roles"].append(role)
    # the reported runs of every task first: what the comparison needs before the fronts/maps
    names = list(roles)
    runs = [r for _, r in sorted(zip(names, runs, strict=True), key=lambda nr: _late(roles, nr))]
    return {"jobs": spec.jobs, "train": {"progress": False}, "runs": runs}, roles


def _late(roles: dict[str, dict[str, Any]], name_run: tuple[str, Any]) -> int:
    return 0 if "report" in roles[name_run[0]]["roles"] else 1


def write_plan(spec: Showcase, out: Path) -> tuple[Path, int]:
    params, roles = plan(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    head = f"# written by `wash-sweeps showcase plan {spec.path}`: do not edit\n"
    (out / GRID).write_text(head + yaml.safe_dump(params, sort_keys=False))
    (out / ROLES).write_text(json.dumps(roles, indent=1, sort_keys=True) + "\n")
    return out / GRID, len(params["runs"])
