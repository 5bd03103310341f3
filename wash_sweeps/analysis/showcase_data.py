"""The showcase's runs as one tidy table, and the statistics the report states.

    runs = showcase_table(Path("outputs/showcase"))   # one row per run: task, method, roles, ...
    report_runs(runs, "digits")                        # the chosen settings x fresh seeds
    paired(runs, "digits", "wash", "test/acc_avg", "papa", "test/acc_avg")  # -> PairedDiff

Every row comes from a finished run directory that roles.json (written by `wash-sweeps showcase
plan`) lists; a listed run that has not finished is counted as missing, never silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from wash_sweeps.config import ConfigError
from wash_sweeps.results import RunFiles, read_json

from .stats import PairedDiff, paired_difference

ROLES, RUNS = "roles.json", "runs"
CONFIG_COLUMNS = (
    "seed",
    "epochs",
    "n_members",
    "p",
    "layer_schedule",
    "shuffle_optimizer_state",
    "shuffle_until",
    "papa_rate",
    "papa_every",
    "papa_all_every",
    "preset",
)
# the test numbers of the report's main table (fractions; bytes in MB)
REPORTED = {
    "test/acc_avg": "averaged",
    "test/acc_aligned": "aligned average",
    "test/acc_ens": "ensemble",
    "test/acc_greedy": "greedy soup",
    "test/acc_member_mean": "mean member",
    "div/disagreement": "disagreement",
    "barrier/mean": "pair barrier (nats)",
    "comm/mb_total": "MB sent",
}
METHOD_ORDER = ("independent", "papa", "papa_all", "papa2", "dart", "wash")


def _row(name: str, role: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    cfg = summary["config"]
    row = {"run": name, "task": role["task"], "method": role["method"]}
    row |= {"roles": ",".join(role["roles"]), **{k: cfg.get(k) for k in CONFIG_COLUMNS}}
    for k, v in summary.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("member/"):
            row[k] = v
    row["comm/mb_total"] = summary.get("comm/bytes_total", 0.0) / 1e6
    return row


def showcase_table(out: Path) -> tuple[pd.DataFrame, list[str]]:
    """(one row per finished run, the names of listed runs that have not finished)."""
    path = out / ROLES
    if not path.is_file():
        raise ConfigError(f"{path}: missing: run `wash-sweeps showcase plan` first")
    roles = json.loads(path.read_text())
    rows, missing = [], []
    for name, role in sorted(roles.items()):
        summary_path = out / RUNS / name / RunFiles.SUMMARY
        if not summary_path.is_file():
            missing.append(name)
            continue
        rows.append(_row(name, role, read_json(summary_path)))
    return pd.DataFrame(rows), missing


def has_role(runs: pd.DataFrame, role: str) -> pd.Series:
    return runs["roles"].str.split(",").apply(lambda r: role in r)


def report_runs(runs: pd.DataFrame, task: str) -> pd.DataFrame:
    """The chosen setting of every method on its fresh seeds, on `task`."""
    if runs.empty:
        return runs
    return runs[(runs["task"] == task) & has_role(runs, "report")]


def methods_in(runs: pd.DataFrame) -> list[str]:
    present = set(runs["method"]) if not runs.empty else set()
    return [m for m in METHOD_ORDER if m in present]


def per_seed(runs: pd.DataFrame, task: str, method: str, key: str) -> dict[int, float]:
    """seed -> value of `key` for `method`'s reported runs on `task`."""
    df = report_runs(runs, task)
    df = df[df["method"] == method]
    if key not in df.columns:
        return {}
    return {int(s): float(v) for s, v in zip(df["seed"], df[key], strict=True) if pd.notna(v)}


def paired(
    runs: pd.DataFrame, task: str, method: str, key: str, other: str, other_key: str
) -> PairedDiff:
    """`method`'s `key` minus `other`'s `other_key`, paired by seed, on `task`."""
    a = per_seed(runs, task, method, key)
    return paired_difference(a, per_seed(runs, task, other, other_key))


def mean_std(values: dict[int, float]) -> tuple[float, float, int]:
    s = pd.Series(list(values.values()), dtype=float)
    return float(s.mean()), float(s.std(ddof=1)) if len(s) > 1 else float("nan"), len(s)


def seed0_runs(runs: pd.DataFrame, task: str, role: str) -> pd.DataFrame:
    """`role` runs (front, map) of `task`: one seed each."""
    if runs.empty:
        return runs
    return runs[(runs["task"] == task) & has_role(runs, role)]
