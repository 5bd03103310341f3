"""One sweep file -> Optuna distributions, a W&B sweep config and a DVC parameter grid.

A sweep file is a W&B sweep config (`method`, `metric`, `parameters`, optional `early_terminate`)
whose parameter names are `TrainConfig` fields, plus three keys of ours that are stripped before
W&B or the `sweeps` package see the file:

    preset: mnist1d-fast          # the base config (also accepted as `parameters.preset.value`)
    conditions:                   # a parameter is sampled only when these fields match
      p: {method: wash}
      papa_rate: {method: [papa]}
    objectives:                   # several objectives -> a multi-objective (NSGA-II) study
      - {name: val/acc_avg, goal: maximize}
      - {name: comm/bytes_total, goal: minimize}

How conditions map to each engine: Optuna samples define-by-run, so an inactive parameter is
never suggested. W&B has no conditions: its agent samples every parameter and `resolve` drops
the inactive ones (the field keeps its base value), so a W&B grid may propose duplicates, which
the offline controller skips. The DVC grid (`dvc_grid`) drops inactive values and de-duplicates.

    spec = load_spec("sweeps/wash_p.yaml")
    cfg = spec.resolve({"method": "wash", "p": 0.01})     # -> TrainConfig (ConfigError if bad)
    dvc_grid(load_spec("sweeps/method_grid.yaml"))        # -> [{field: value, ...}, ...]

A parameter's distribution lives in `sweep_params`, the metric names a sweep may optimise (never
a test/ key) in `objectives`.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import (
    ConfigError,
    TrainConfig,
    check_field,
    field_names,
    unknown_field,
    unknown_preset,
)
from .objectives import objectives_of
from .presets import PRESETS
from .sweep_params import Param, attach_conditions, parse_param
from .yaml_file import read_yaml

# `sweeps` 0.3 declares a pydantic-v1 config key; pydantic 2 warns about it at every import
warnings.filterwarnings("ignore", message="Valid config keys have changed in V2")

# keys of ours at the top level of a sweep file (not W&B's)
EXTENSIONS = ("preset", "conditions", "objectives")
# W&B top-level keys we accept (command/program are ignored: the program is always ours)
WANDB_KEYS = (
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "name",
    "description",
    "run_cap",
    "command",
    "program",
    "project",
    "entity",
)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    path: str
    name: str
    method: str  # grid | random | bayes
    objectives: tuple[tuple[str, str], ...]  # ((metric, goal), ...); the first is W&B's metric
    base: dict[str, Any]  # preset + constants + --set overrides: what every trial shares
    params: tuple[Param, ...]  # what is sampled (constants excluded)
    early_terminate: dict[str, Any] | None
    run_cap: int | None
    raw: dict[str, Any]  # the file as read

    @property
    def metric(self) -> str:
        return self.objectives[0][0]

    @property
    def goal(self) -> str:
        return self.objectives[0][1]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [g for _, g in self.objectives]

    def ordered_params(self) -> list[Param]:
        """Unconditioned parameters first, so a condition reads an already drawn value."""
        return [p for p in self.params if not p.when] + [p for p in self.params if p.when]

    def is_active(self, param: Param, chosen: Mapping[str, Any]) -> bool:
        return all(chosen.get(f, self.base.get(f, _default(f))) in ok for f, ok in param.when)

    def active_params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The swept values that apply to this combination (inactive conditionals dropped)."""
        out: dict[str, Any] = {}
        for p in self.ordered_params():
            if p.name in values and self.is_active(p, {**values, **out}):
                out[p.name] = values[p.name]
        return out

    def resolve(self, values: Mapping[str, Any]) -> TrainConfig:
        """The trial's config: base + active swept values. ConfigError for a bad combination."""
        unknown = sorted(set(values) - {p.name for p in self.params} - set(self.base))
        if unknown:
            raise ConfigError(f"{self.path}: {unknown[0]!r} is not a parameter of this sweep")
        return TrainConfig.from_dict({**self.base, **self.active_params(values)})

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Define-by-run: draw the active parameters from an Optuna trial."""
        chosen: dict[str, Any] = {}
        for p in self.ordered_params():
            if self.is_active(p, chosen):
                chosen[p.name] = p.suggest(trial)
        return chosen

    def grid(self) -> list[dict[str, Any]]:
        """Every distinct combination of active values (discrete parameters only), in order."""
        free = [p for p in self.params if not p.when]
        cond = [p for p in self.params if p.when]
        points: list[dict[str, Any]] = []
        seen: set[tuple] = set()
        for combo in itertools.product(*(p.grid_values() for p in free)):
            partial = [dict(zip((p.name for p in free), combo, strict=True))]
            for p in cond:
                partial = [
                    {**pt, p.name: v} if self.is_active(p, pt) else pt
                    for pt in partial
                    for v in (p.grid_values() if self.is_active(p, pt) else [None])
                ]
            for pt in partial:
                key = tuple(sorted((k, repr(v)) for k, v in pt.items()))
                if key not in seen:
                    seen.add(key)
                    points.append(pt)
        return points

    def wandb_config(self) -> dict[str, Any]:
        """The W&B-valid sweep config: our extension keys removed, the preset a constant."""
        cfg = {k: v for k, v in self.raw.items() if k not in EXTENSIONS}
        params: dict[str, Any] = {k: {"value": v} for k, v in self.base.items()}
        params.update({p.name: self.raw["parameters"][p.name] for p in self.params})
        cfg["parameters"] = params
        cfg["metric"] = {"name": self.metric, "goal": self.goal}
        cfg.setdefault("name", self.name)
        return cfg

    def with_overrides(self, overrides: Mapping[str, Any]) -> SweepSpec:
        """Fix fields for every trial (`--set`); a swept field named here stops being swept."""
        if not overrides:
            return self
        fixed = {}
        for k, v in overrides.items():
            if k not in field_names():
                raise ConfigError(f"--set {k}: {unknown_field(k)}")
            fixed[k] = check_field(k, v)
        base = {**self.base, **fixed}
        TrainConfig.from_dict(base)
        params = tuple(p for p in self.params if p.name not in fixed)
        return dataclasses.replace(self, base=base, params=params)


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def safe_name(name: str, where: str) -> str:
    """A name used as a directory name: one plain path component (no /, no .., no leading -)."""
    if not SAFE_NAME.fullmatch(str(name)) or ".." in str(name):
        raise ConfigError(
            f"{where}={name!r}: must be a plain name of letters, digits, '.', '_' and '-' "
            "(it names a directory)"
        )
    return str(name)


def _default(field: str) -> Any:
    return getattr(TrainConfig(), field)


# --- loading and validation ---------------------------------------------------------------------


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read and validate a sweep file; every problem is a one-line ConfigError naming the file."""
    path = Path(path)
    raw = read_yaml(path, "sweep")
    try:
        spec = parse_spec(raw, str(path))
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    return spec.with_overrides(overrides or {})


def parse_spec(raw: Any, path: str = "<sweep>") -> SweepSpec:
    if not isinstance(raw, dict):
        raise ConfigError("a sweep file must be a mapping with method, metric and parameters")
    unknown = sorted(set(raw) - set(WANDB_KEYS) - set(EXTENSIONS))
    if {"tasks", "methods"} <= set(raw):
        raise ConfigError(
            "a showcase file, not a sweep file: run `wash-sweeps showcase tune` and `plan` on it"
        )
    if unknown:
        raise ConfigError(
            f"unknown top-level key {unknown[0]!r}; allowed: {', '.join(WANDB_KEYS + EXTENSIONS)}"
        )
    if raw.get("method") not in ("grid", "random", "bayes"):
        raise ConfigError(f"method={raw.get('method')!r}: allowed values are grid, random, bayes")
    params_raw = raw.get("parameters")
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError("parameters: must be a non-empty mapping of config field -> spec")
    preset = _preset(raw, params_raw)
    objectives = objectives_of(raw)
    base: dict[str, Any] = {"preset": preset}
    params: list[Param] = []
    for name, spec in params_raw.items():
        if name == "preset":
            continue
        p = parse_param(name, spec)
        if p.distribution == "constant" and len(p.values) == 1:
            base[name] = p.values[0]
        else:
            params.append(p)
    params = attach_conditions(raw.get("conditions"), params, base)
    early = _early_terminate(raw)
    cap = raw.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ConfigError(f"run_cap={cap!r}: must be a positive integer")
    _schema_check(raw)
    TrainConfig.from_dict(base)  # the shared part must be a valid config on its own
    spec = SweepSpec(
        path=path,
        name=safe_name(str(raw["name"]), "name") if raw.get("name") else Path(path).stem,
        method=raw["method"],
        objectives=objectives,
        base=base,
        params=tuple(params),
        early_terminate=early,
        run_cap=cap,
        raw=raw,
    )
    if spec.method == "grid":
        spec.grid()  # raises for a continuous parameter
    return spec


def _preset(raw: dict, params_raw: dict) -> str:
    top = raw.get("preset")
    par = params_raw.get("preset")
    if par is not None:
        if not isinstance(par, dict) or set(par) != {"value"}:
            raise ConfigError(
                "parameter 'preset' must be a single value ({value: NAME}); "
                "a sweep over presets is one sweep file per preset"
            )
        par = par["value"]
        if top is not None and top != par:
            raise ConfigError(f"preset given twice with different values: {top!r} and {par!r}")
    name = top if top is not None else par
    if name is None:
        name = "mnist1d-fast"
    if name not in PRESETS:
        raise ConfigError(unknown_preset(name))
    return name


def _schema_check(raw: dict) -> None:
    """The `sweeps` package's W&B schema, on the file without our extension keys."""
    from sweeps import schema_violations_from_proposed_config

    wb = {k: v for k, v in raw.items() if k not in EXTENSIONS}
    violations = schema_violations_from_proposed_config(wb)
    if violations:
        # the last message names the parameter; the first is the schema's generic complaint
        raise ConfigError(f"W&B sweep schema: {violations[-1]}")


def _early_terminate(raw: dict) -> dict[str, Any] | None:
    et = raw.get("early_terminate")
    if et is None:
        return None
    if not isinstance(et, dict):
        raise ConfigError(f"early_terminate={et!r}: must be a mapping {{type: hyperband, ...}}")
    if et.get("type") != "hyperband":
        raise ConfigError(f"early_terminate.type={et.get('type')!r}: only hyperband is supported")
    if "min_iter" not in et and "max_iter" not in et:
        raise ConfigError("early_terminate: hyperband needs min_iter (or max_iter and s)")
    return dict(et)


# --- engines ------------------------------------------------------------------------------------


def dvc_grid(spec: SweepSpec) -> list[dict[str, Any]]:
    """One dict of config overrides per distinct run (for DVC's params.yaml / foreach).

    Each dict holds the preset, the sweep's constants and one grid point, so that
    `TrainConfig.from_dict(d)` builds that run's config. Continuous parameters raise ConfigError.
    Combinations that no config accepts (e.g. N=1 for WASH) are dropped.
    """
    out = []
    for point in spec.grid():
        d = {**spec.base, **point}
        try:
            TrainConfig.from_dict(d)
        except ConfigError:
            continue
        out.append(d)
    return out
