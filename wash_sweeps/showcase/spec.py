"""The showcase file (sweeps/showcase.yaml): tasks, each method's knobs, seeds, fronts and map.

    spec = load_showcase("sweeps/showcase.yaml")
    spec.tasks["digits"].preset, spec.tasks["digits"].trials, spec.methods["wash"]

Every field is checked on load; a bad one is a ConfigError naming it and what is allowed.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, Method, TrainConfig, field_names
from ..objectives import objectives_of
from ..presets import PRESETS
from ..sweep_params import parse_param
from ..yaml_file import read_yaml

TOP = ("metric", "n_members", "tuning_seed", "seeds", "workers", "jobs", "methods", "tasks")
TASK = ("preset", "trials", "set", "fronts", "map")
MAP = ("p", "epochs", "n_members")
# the communication axis each method may be swept along in a front
AXES = {"wash": ("p",), "papa": ("papa_every", "papa_rate"), "papa_all": ("papa_all_every",)}
AXES |= {"papa2": ("papa_all_every",), "dart": ("papa_all_every",)}
METHODS = typing.get_args(Method)
NAME_OK = "letters, digits, '-' and '_'"


@dataclass(frozen=True)
class Task:
    name: str
    preset: str
    trials: int
    set: dict[str, Any] = field(default_factory=dict)
    fronts: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    map: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Showcase:
    path: Path
    metric: str
    n_members: int
    tuning_seed: int
    seeds: list[int]
    workers: int
    jobs: int
    methods: dict[str, dict[str, Any]]
    tasks: dict[str, Task]

    def task(self, name: str) -> Task:
        if name not in self.tasks:
            raise ConfigError(f"--task {name!r}: {self.path} has tasks {', '.join(self.tasks)}")
        return self.tasks[name]

    def base(self, task: Task, method: str) -> dict[str, Any]:
        """The config overrides every run of `method` on `task` starts from."""
        return {"preset": task.preset, **task.set, "method": method, "n_members": self.n_members}


def _fail(path: Path, where: str, what: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {what}")


def _mapping(path: Path, where: str, value: Any, allowed: tuple[str, ...] | None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, where, "must be a mapping")
    extra = [k for k in value if allowed is not None and k not in allowed]
    if extra:
        raise _fail(path, f"{where}.{extra[0]}", f"unknown key; allowed: {', '.join(allowed)}")
    return value


def _int(path: Path, where: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(path, where, f"must be an integer >= {low}, got {value!r}")
    return value


def _name(path: Path, where: str, name: Any) -> str:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise _fail(path, where, f"{name!r} is not a name ({NAME_OK})")
    return name


def _check_values(path: Path, where: str, fields: dict[str, Any], base: dict[str, Any]) -> None:
    """Each field: value must be a valid config over `base` (a list: each of its values)."""
    for key, values in fields.items():
        if key not in field_names():
            raise _fail(path, f"{where}.{key}", "not a config field (`wash-sweeps fields`)")
        for v in values if isinstance(values, list) else [values]:
            try:
                TrainConfig.from_dict({**base, key: v})
            except ConfigError as e:
                raise _fail(path, f"{where}.{key}", str(e)) from None


def _task(path: Path, name: str, raw: Any, methods: dict[str, Any]) -> Task:
    where = f"tasks.{_name(path, 'tasks', name)}"
    raw = _mapping(path, where, raw, TASK)
    preset = raw.get("preset")
    if preset not in PRESETS:
        raise _fail(path, f"{where}.preset", f"{preset!r}; allowed: {', '.join(PRESETS)}")
    sets = _mapping(path, f"{where}.set", raw.get("set"), None)
    _check_values(path, f"{where}.set", sets, {"preset": preset})
    base = {"preset": preset, **sets}
    fronts = _mapping(path, f"{where}.fronts", raw.get("fronts"), tuple(AXES))
    for method, axes in fronts.items():
        if method not in methods:
            raise _fail(path, f"{where}.fronts.{method}", "not one of the file's methods")
        axes = _mapping(path, f"{where}.fronts.{method}", axes, AXES[method])
        if not all(isinstance(v, list) and v for v in axes.values()):
            raise _fail(path, f"{where}.fronts.{method}", "each axis needs a list of values")
        _check_values(path, f"{where}.fronts.{method}", axes, {**base, "method": method})
    fmap = _mapping(path, f"{where}.map", raw.get("map"), MAP)
    for key, values in fmap.items():
        if not isinstance(values, list):
            raise _fail(path, f"{where}.map.{key}", "must be a list of values")
    _check_values(path, f"{where}.map", fmap, {**base, "method": "wash"})
    trials = _int(path, f"{where}.trials", raw.get("trials"), 1)
    return Task(name, preset, trials, dict(sets), fronts, fmap)


def parse_showcase(raw: Any, path: Path) -> Showcase:
    raw = _mapping(path, "top level", raw, TOP)
    metric = raw.get("metric", "val/acc_avg")
    try:
        objectives_of({"metric": {"name": metric, "goal": "maximize"}})
    except ConfigError as e:
        raise _fail(path, "metric", str(e)) from None
    methods = _mapping(path, "methods", raw.get("methods"), tuple(METHODS))
    if not methods:
        raise _fail(path, "methods", f"name at least one of {', '.join(METHODS)}")
    for m, knobs in methods.items():
        for name, knob in _mapping(path, f"methods.{m}", knobs, None).items():
            try:  # a sweep-file parameter of the method's tuning study
                parse_param(name, knob)
            except ConfigError as e:
                raise _fail(path, f"methods.{m}.{name}", str(e)) from None
    seeds = raw.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise _fail(path, "seeds", "must be a non-empty list of seeds")
    seeds = [_int(path, "seeds", s, 0) for s in seeds]
    tuning_seed = _int(path, "tuning_seed", raw.get("tuning_seed", 100), 0)
    if tuning_seed in seeds:
        raise _fail(path, "tuning_seed", f"{tuning_seed} is one of seeds: reported seeds are fresh")
    tasks_raw = _mapping(path, "tasks", raw.get("tasks"), None)
    if not tasks_raw:
        raise _fail(path, "tasks", "name at least one task (preset, trials)")
    tasks = {name: _task(path, name, t, methods) for name, t in tasks_raw.items()}
    return Showcase(
        path=path,
        metric=metric,
        n_members=_int(path, "n_members", raw.get("n_members", 5), 2),
        tuning_seed=tuning_seed,
        seeds=seeds,
        workers=_int(path, "workers", raw.get("workers", 1), 1),
        jobs=_int(path, "jobs", raw.get("jobs", 1), 1),
        methods={m: dict(k or {}) for m, k in methods.items()},
        tasks=tasks,
    )


def load_showcase(path: str | Path) -> Showcase:
    path = Path(path)
    raw = read_yaml(path, "showcase")
    return parse_showcase(raw, path)
