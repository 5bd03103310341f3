"""The metric keys a run emits and the objectives a sweep may name (never the test split).

`emitted_metrics()` lists every fixed key `train_and_evaluate` writes (a test compares it with a
real run's summary); `objectives_of(raw)` reads a sweep file's `metric` / `objectives` and
refuses, in one line, a name that is not emitted or that names the test split.
"""

from __future__ import annotations

import re
from typing import Any

from .config import ConfigError

# the metrics train_and_evaluate emits, exactly (tests/test_study_reliability.py compares them
# with a real run's summary): per split, the population, soups and ensemble; then the rest
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


def names_test_split(name: str) -> bool:
    """Whether a metric key is measured on the test split (`test/...`, `member/<i>/test_...`)."""
    parts = name.split("/")
    return parts[0] == "test" or (parts[0] == "member" and parts[-1].startswith("test_"))


def refuse_test_split(name: Any, where: str) -> None:
    """One line, exit 2 upstream: an objective on a test key would tune on the test split."""
    if isinstance(name, str) and names_test_split(name):
        val = name.replace("test/", "val/", 1).replace("/test_", "/val_")
        raise ConfigError(f"{where}: name={name!r}: {TEST_SPLIT_REFUSAL} ({val})")


def check_metric(name: Any, goal: Any, where: str) -> tuple[str, str]:
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


def objectives_of(raw: dict) -> tuple[tuple[str, str], ...]:
    objs = raw.get("objectives")
    metric = raw.get("metric")
    if metric is not None and not isinstance(metric, dict):
        raise ConfigError("metric: must be a mapping {name: ..., goal: maximize|minimize}")
    if objs is None:
        if metric is None:
            raise ConfigError("metric: missing; e.g. {name: val/acc_avg, goal: maximize}")
        return (check_metric(metric.get("name"), metric.get("goal", "minimize"), "metric"),)
    if not isinstance(objs, list) or len(objs) < 2 or not all(isinstance(o, dict) for o in objs):
        raise ConfigError("objectives: must be a list of at least two {name, goal} mappings")
    out = tuple(
        check_metric(o.get("name"), o.get("goal"), f"objectives[{i}]") for i, o in enumerate(objs)
    )
    if len({n for n, _ in out}) != len(out):
        raise ConfigError("objectives: the same metric appears twice")
    if metric is not None and (metric.get("name"), metric.get("goal", "minimize")) != out[0]:
        raise ConfigError("metric: must equal the first of objectives (W&B optimises that one)")
    return out
