"""One swept parameter of a sweep file: its distribution, its grid values, how Optuna draws it,
and the conditions under which it is sampled."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .config import ConfigError, check_field, did_you_mean, field_names, field_type

PARAM_KEYS = ("value", "values", "min", "max", "distribution", "q")
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "log_uniform_values",
    "log_uniform",
    "q_uniform",
)
DISCRETE = ("constant", "categorical", "int_uniform", "q_uniform")


@dataclasses.dataclass(frozen=True)
class Param:
    """One swept field and its distribution; `when` = ((field, allowed values), ...)."""

    name: str
    distribution: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    q: float | None = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def is_int(self) -> bool:
        return field_type(self.name) is int

    def grid_values(self) -> list[Any]:
        """Every value a grid takes (discrete distributions only)."""
        if self.distribution in ("constant", "categorical"):
            return list(self.values)
        if self.distribution == "int_uniform":
            return list(range(int(self.low), int(self.high) + 1))
        if self.distribution == "q_uniform":
            n = math.floor((self.high - self.low) / self.q + 1e-9)
            vals = [self.low + i * self.q for i in range(n + 1)]
            return [round(v) if self.is_int else round(v, 12) for v in vals]
        raise ConfigError(
            f"parameter {self.name!r} has a continuous distribution ({self.distribution}); "
            "a grid needs values, int_uniform or q_uniform"
        )

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial (define-by-run)."""
        d, name = self.distribution, self.name
        if d in ("constant", "categorical"):
            return trial.suggest_categorical(name, list(self.values))
        if d == "int_uniform" or (d == "q_uniform" and self.is_int):
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.q or 1))
        if d == "q_uniform":
            return trial.suggest_float(name, self.low, self.high, step=self.q)
        log = d in ("log_uniform_values", "log_uniform")
        return trial.suggest_float(name, self.low, self.high, log=log)


def parse_param(name: str, spec: Any) -> Param:
    if name not in field_names():
        raise ConfigError(
            f"parameter {name!r} is not a config field; {did_you_mean(name, field_names())}"
            "(`wash-sweeps fields` lists every field)"
        )
    if not isinstance(spec, dict):
        raise ConfigError(f"parameter {name!r}: must be a mapping such as {{values: [...]}}")
    extra = sorted(set(spec) - set(PARAM_KEYS))
    if extra:
        raise ConfigError(
            f"parameter {name!r}: key {extra[0]!r} is not supported; allowed: "
            f"{', '.join(PARAM_KEYS)}"
        )
    dist = spec.get("distribution") or _infer(name, spec)
    if dist not in DISTRIBUTIONS:
        raise ConfigError(
            f"parameter {name!r}: distribution {dist!r} is not supported; "
            f"allowed: {', '.join(DISTRIBUTIONS)}"
        )
    where = f"parameter {name!r}"
    if dist in ("constant", "categorical"):
        vals = [spec["value"]] if "value" in spec else spec.get("values")
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}: {dist} needs value: X or a non-empty values: [...]")
        return Param(name, dist, values=tuple(_value(name, v) for v in vals))
    if "min" not in spec or "max" not in spec:
        raise ConfigError(f"{where}: distribution {dist} needs min and max")
    lo, hi = spec["min"], spec["max"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)):
        raise ConfigError(f"{where}: min and max must be numbers, got {lo!r} and {hi!r}")
    if not lo < hi:
        raise ConfigError(f"{where}: min={lo} must be less than max={hi}")
    if dist == "log_uniform":  # W&B's log_uniform takes min/max as natural logarithms
        lo, hi = math.exp(lo), math.exp(hi)
    if dist == "log_uniform_values" and lo <= 0:
        raise ConfigError(f"{where}: log_uniform_values needs min > 0, got {lo}")
    q = spec.get("q")
    if dist == "q_uniform" and (not isinstance(q, int | float) or isinstance(q, bool) or q <= 0):
        raise ConfigError(f"{where}: q_uniform needs q > 0, got {q!r}")
    if dist == "q_uniform" and field_type(name) is int and not float(q).is_integer():
        raise ConfigError(f"{where}: {name} is an integer field; q must be a whole number, got {q}")
    if field_type(name) is int and dist in ("uniform", "log_uniform_values", "log_uniform"):
        raise ConfigError(f"{where}: {name} is an integer field; use int_uniform or values")
    if field_type(name) not in (int, float):
        raise ConfigError(f"{where}: {name} is not numeric; use values: [...]")
    _value(name, lo), _value(name, hi)
    return Param(name, dist, low=lo, high=hi, q=q)


def _infer(name: str, spec: dict) -> str:
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int):
        return "int_uniform" if field_type(name) is int else "uniform"
    return "uniform"


def _value(name: str, v: Any) -> Any:
    try:
        return check_field(name, v)
    except ConfigError as e:
        raise ConfigError(f"parameter {name!r}: {e}") from None


def attach_conditions(conds: Any, params: list[Param], base: dict) -> list[Param]:
    if conds is None:
        return params
    if not isinstance(conds, dict):
        raise ConfigError("conditions: must map a parameter to {field: value or [values]}")
    by_name = {p.name: p for p in params}
    for name, cond in conds.items():
        if name not in by_name:
            raise ConfigError(f"conditions: {name!r} is not a swept parameter of this file")
        if not isinstance(cond, dict) or not cond:
            raise ConfigError(f"conditions.{name}: must be a mapping {{field: value or [values]}}")
        when = []
        for field, allowed in cond.items():
            if field not in field_names():
                raise ConfigError(
                    f"conditions.{name}: {field!r} is not a config field; "
                    f"{did_you_mean(field, field_names())}"
                )
            if field in conds:
                raise ConfigError(
                    f"conditions.{name}: {field!r} is itself conditional; "
                    "a condition may only read unconditioned fields"
                )
            allowed = allowed if isinstance(allowed, list) else [allowed]
            try:
                when.append((field, tuple(check_field(field, v) for v in allowed)))
            except ConfigError as e:
                raise ConfigError(f"conditions.{name}: {e}") from None
        by_name[name] = dataclasses.replace(by_name[name], when=tuple(when))
    return [by_name[p.name] for p in params]
