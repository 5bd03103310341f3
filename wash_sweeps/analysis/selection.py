"""Which runs a figure or table compares, and which setting of each method is chosen.

A setting (a WASH p and schedule, a PAPA rate) is chosen on the validation split
(`SELECT_KEY`, mean over seeds) and then reported with its test numbers (`REPORT_KEY`): the
test split decides nothing. Runs recorded before the validation split existed have no `test/`
keys and their `val/` keys were computed on the test split, so they never take part in a choice.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

SELECT_KEY = "val/acc_avg"  # every choice: the averaged model's validation accuracy
REPORT_KEY = "test/acc_avg"  # what a choice is reported with
BASELINES = ["independent", "papa", "papa_all", "papa2", "dart"]
METHOD_ORDER = [*BASELINES, "wash"]


def column(runs: pd.DataFrame, key: str) -> pd.Series:
    """runs[key], or all-NaN when no run has that metric (old run directories, a skipped eval)."""
    if key in runs.columns:
        return pd.to_numeric(runs[key], errors="coerce")
    return pd.Series(np.nan, index=runs.index, dtype=float)


def has_metric(runs: pd.DataFrame, key: str) -> bool:
    return bool(column(runs, key).notna().any())


def has_test(runs: pd.DataFrame) -> pd.Series:
    """Per run: whether it recorded any `test/` metric (False for runs from before the split)."""
    cols = [c for c in runs.columns if str(c).startswith("test/")]
    if not cols:
        return pd.Series(False, index=runs.index)
    return runs[cols].notna().any(axis=1)


# --- the runs a figure or table compares ---------------------------------------------------------


def main_n(runs: pd.DataFrame) -> int:
    """The population size of the main grid: the N with the most runs."""
    return int(runs["n_members"].mode().iloc[0])


def main_wash_setting(runs: pd.DataFrame) -> tuple[str, bool]:
    """(layer_schedule, shuffle_optimizer_state) of the p grid: the one with the most p values."""
    wash = runs[runs["method"] == "wash"]
    counts = wash.groupby(["layer_schedule", "shuffle_optimizer_state"])["p"].nunique()
    schedule, opt = counts.idxmax()
    return str(schedule), bool(opt)


def wash_grid(runs: pd.DataFrame, n: int | None = None) -> pd.DataFrame:
    """WASH runs of the main setting at population size `n` (default: the main N)."""
    n = main_n(runs) if n is None else n
    schedule, opt = main_wash_setting(runs)
    keep = (
        (runs["method"] == "wash")
        & (runs["n_members"] == n)
        & (runs["layer_schedule"] == schedule)
        & (runs["shuffle_optimizer_state"] == opt)
    )
    return runs[keep]


def compared(runs: pd.DataFrame) -> pd.DataFrame:
    """The baselines and the WASH p grid at the main N (figures 3-5, the main table)."""
    n = main_n(runs)
    base = runs[runs["method"].isin(BASELINES) & (runs["n_members"] == n)]
    if not (runs["method"] == "wash").any():
        return base
    return pd.concat([base, wash_grid(runs, n)])


def label_info(df: pd.DataFrame) -> list[tuple[str, str, float]]:
    """(label, method, p) of every configuration in `df`: baselines first, WASH by p, then by
    label (PAPA by rate)."""
    first = df.drop_duplicates("label")[["label", "method", "p"]]
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows = sorted(
        first.itertuples(index=False), key=lambda r: (order.get(r.method, 9), r.p, r.label)
    )
    return [(r.label, r.method, float(r.p)) for r in rows]


def ablation_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """WASH runs at the (N, p) where the most (schedule, optimizer-state) variants were run."""
    wash = runs[runs["method"] == "wash"]
    variants = wash.groupby(["n_members", "p"])[["layer_schedule", "shuffle_optimizer_state"]]
    counts = variants.apply(lambda g: len(g.drop_duplicates()))
    n, p = counts.idxmax()
    return wash[(wash["n_members"] == n) & (wash["p"] == p)]


def has_ablation(runs: pd.DataFrame) -> bool:
    wash = runs[runs["method"] == "wash"]
    return len(wash[["layer_schedule", "shuffle_optimizer_state"]].drop_duplicates()) > 1


# --- the chosen settings -------------------------------------------------------------------------


def chosen_settings(
    runs: pd.DataFrame, n: int | None = None, key: str = SELECT_KEY
) -> dict[str, str]:
    """{method: label} of the setting of each method with the highest mean `key` (validation)
    over its seeds, among the runs at population size `n` (default: the main N) that recorded
    test metrics. Every WASH setting run at that N competes (p, schedule, optimizer state); a
    method with one setting (independent) is chosen trivially. Ties go to the first label in
    `label_info` order (baselines, then WASH by increasing p)."""
    n = main_n(runs) if n is None else n
    at_n = runs[(runs["n_members"] == n) & has_test(runs)]
    score = column(at_n, key).groupby(at_n["label"]).mean()
    chosen: dict[str, str] = {}
    for label, method, _ in label_info(at_n):
        value = score.get(label, math.nan)
        if not math.isfinite(value):
            continue
        best = chosen.get(method)
        if best is None or value > score[best]:
            chosen[method] = label
    return chosen


def per_seed(runs: pd.DataFrame, label: str, key: str, n: int | None = None) -> dict[int, float]:
    """{seed: value of `key`} of the runs of `label` at population size `n` (default: main N);
    runs without the metric are left out. Pairs for `stats.paired_difference`."""
    n = main_n(runs) if n is None else n
    rows = runs[(runs["label"] == label) & (runs["n_members"] == n)]
    values = column(rows, key)
    keep = values.notna()
    # one run per (label, N, seed) after aggregate's de-duplication, unless tables mix grids
    grouped = values[keep].groupby(rows.loc[keep, "seed"]).mean()
    return {int(s): float(v) for s, v in grouped.items()}
