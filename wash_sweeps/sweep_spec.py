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
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .config import (
    ConfigError,
    TrainConfig,
    check_field,
    did_you_mean,
    field_names,
    field_type,
    unknown_field,
    unknown_preset,
)
from .presets import PRESETS

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
# the metrics train_and_evaluate emits, exactly (tests/test_sweep_spec.py compares them with a
# real run's summary): per split, the population, soups and ensemble; then the rest
SPLIT_METRICS = (
    "acc_member_mean",
    "acc_member_min",
    "acc_member_max",
    "loss_member_mean",
    "acc_ens",
    "loss_ens",
    "acc_avg",
    "loss_avg",
    "gap_ens_avg",
    "acc_greedy",
    "loss_greedy",
    "acc_aligned",  # at the end, with align_at_end
    "loss_aligned",
)
BN_METRICS = ("val/acc_avg_bn", "test/acc_avg_bn")  # models with BatchNorm only
OTHER_METRICS = (
    "val/greedy_size",
    "train/loss",
    "train/epoch",
    "train/step",
    "train/lr",
    "div/consensus",
    "div/pairwise_l2",
    "div/disagreement",
    "div/kl",
    "barrier/mean",
    "barrier/max",
    "barrier/member_avg_mean",
    "barrier/aligned_mean",
    "comm/bytes_total",
    "comm/bytes_per_member",
    "comm/bytes_per_step",
    "comm/dp_sgd_bytes_total",
    "time/train_s",
    "time/eval_s",
    "time/wall_s",
    "time/samples_per_s",
)
# keys with a member index or a layer name in them
METRIC_PATTERNS = (
    re.compile(r"member/\d+/(val|test)_acc"),
    re.compile(r"div/consensus/[A-Za-z0-9_.]+"),
)


def emitted_metrics() -> tuple[str, ...]:
    """Every fixed metric key train_and_evaluate writes (plus METRIC_PATTERNS' families)."""
    split = tuple(f"{s}/{m}" for s in ("val", "test") for m in SPLIT_METRICS)
    return (*split, *BN_METRICS, *OTHER_METRICS)


def is_emitted(name: str) -> bool:
    return name in emitted_metrics() or any(p.fullmatch(name) for p in METRIC_PATTERNS)


# per-epoch and final metrics of train_and_evaluate are namespaced by these prefixes
METRIC_PREFIXES = ("val/", "comm/", "div/", "barrier/", "train/", "time/", "member/")
# the test split is only reported: no objective, pruning or selection may read it
TEST_SPLIT_REFUSAL = (
    "tuning on the test split is not allowed (the test split is only reported); "
    "use the validation key"
)
GOALS = ("maximize", "minimize")
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
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
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
    objectives = _objectives(raw)
    base: dict[str, Any] = {"preset": preset}
    params: list[Param] = []
    for name, spec in params_raw.items():
        if name == "preset":
            continue
        p = _param(name, spec)
        if p.distribution == "constant" and len(p.values) == 1:
            base[name] = p.values[0]
        else:
            params.append(p)
    params = _attach_conditions(raw.get("conditions"), params, base)
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


def names_test_split(name: str) -> bool:
    """Whether a metric key is measured on the test split (`test/...`, `member/<i>/test_...`)."""
    parts = name.split("/")
    return parts[0] == "test" or (parts[0] == "member" and parts[-1].startswith("test_"))


def refuse_test_split(name: Any, where: str) -> None:
    """One line, exit 2 upstream: an objective on a test key would tune on the test split."""
    if isinstance(name, str) and names_test_split(name):
        val = name.replace("test/", "val/", 1).replace("/test_", "/val_")
        raise ConfigError(f"{where}: name={name!r}: {TEST_SPLIT_REFUSAL} ({val})")


def _check_metric(name: Any, goal: Any, where: str) -> tuple[str, str]:
    refuse_test_split(name, where)
    if not isinstance(name, str) or not is_emitted(name):
        allowed = [m for m in emitted_metrics() if not m.startswith("test/")]
        raise ConfigError(
            f"{where}: name={name!r} is not a metric of train_and_evaluate; allowed: "
            f"{', '.join(allowed)}, member/<i>/val_acc, div/consensus/<layer>"
        )
    if goal not in GOALS:
        raise ConfigError(f"{where}: goal={goal!r}: allowed values are maximize, minimize")
    return name, goal


def _objectives(raw: dict) -> tuple[tuple[str, str], ...]:
    objs = raw.get("objectives")
    metric = raw.get("metric")
    if metric is not None and not isinstance(metric, dict):
        raise ConfigError("metric: must be a mapping {name: ..., goal: maximize|minimize}")
    if objs is None:
        if metric is None:
            raise ConfigError("metric: missing; e.g. {name: val/acc_avg, goal: maximize}")
        return (_check_metric(metric.get("name"), metric.get("goal", "minimize"), "metric"),)
    if not isinstance(objs, list) or len(objs) < 2 or not all(isinstance(o, dict) for o in objs):
        raise ConfigError("objectives: must be a list of at least two {name, goal} mappings")
    out = tuple(
        _check_metric(o.get("name"), o.get("goal"), f"objectives[{i}]") for i, o in enumerate(objs)
    )
    if len({n for n, _ in out}) != len(out):
        raise ConfigError("objectives: the same metric appears twice")
    if metric is not None and (metric.get("name"), metric.get("goal", "minimize")) != out[0]:
        raise ConfigError("metric: must equal the first of objectives (W&B optimises that one)")
    return out


def _param(name: str, spec: Any) -> Param:
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


def _attach_conditions(conds: Any, params: list[Param], base: dict) -> list[Param]:
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
