"""Run directories -> tidy tables: the only input of the figures and the report.

    python -m wash_sweeps.analysis.aggregate outputs/runs docs/results/tables [--where k=v ...]

writes, under the output directory:
    runs.csv / runs.json   one row per run: `run`, `label`, every config field, final metrics
    history.csv            one row per evaluation of every run (metrics.jsonl), same keys
    curves.json            the final loss-interpolation curves of every run (summary["curves"])

Runs are found by their summary.json (unfinished runs are skipped). Two runs with the same
config up to run-control fields (same seed, same everything) are one run: the duplicate is
dropped, so a grid that lists a config twice does not count its seeds twice. `--where
field=value` keeps only runs whose config has that value: run directories of an earlier grid
(say, another number of epochs) stay on disk and must not be averaged with the current ones.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wash_sweeps.config import RUN_CONTROL, coerce
from wash_sweeps.config_cli import parse_overrides
from wash_sweeps.results import RunFiles, read_json, write_json

KEY_COLUMNS = ["run", "label", "method", "n_members", "p", "layer_schedule",
               "shuffle_optimizer_state", "seed", "epochs"]  # fmt: skip


def label(cfg: dict[str, Any]) -> str:
    """The name of a configuration across seeds: what a mean +- std is taken over."""
    method = cfg["method"]
    if method == "wash":
        opt = "on" if cfg["shuffle_optimizer_state"] else "off"
        return f"wash p={cfg['p']:g} {cfg['layer_schedule']} opt-state-{opt}"
    if method == "papa":
        return f"papa rate={cfg['papa_rate']:g}"
    if method in ("papa2", "dart"):  # merge period K in epochs (papa_all_every)
        return f"{method} K={cfg['papa_all_every']}"
    return method


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    # per-member columns would make N-dependent tables; their mean/min/max are kept
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("member/")
    }


def load_runs(
    root: str | Path, where: dict[str, str] | None = None, only: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every finished run under `root` whose config matches `where` (field -> value as text)
    and, when `only` is given, whose directory (relative to `root`) is listed there:
    {"run", "path", "config", "summary", "history"}."""
    root = Path(root)
    wanted = {k: coerce(k, v) for k, v in (where or {}).items()}
    runs, seen = [], set()
    for summary_path in sorted(root.rglob(RunFiles.SUMMARY)):
        if only is not None and str(summary_path.parent.relative_to(root)) not in only:
            continue
        summary = read_json(summary_path)
        cfg = summary["config"]
        if any(cfg.get(k) != v for k, v in wanted.items()):
            continue
        identity = json.dumps(
            {k: v for k, v in cfg.items() if k not in RUN_CONTROL}, sort_keys=True
        )
        if identity in seen:
            continue
        seen.add(identity)
        path = summary_path.parent
        runs.append(
            {
                "run": str(path.relative_to(root)),
                "path": path,
                "config": cfg,
                "summary": summary,
                "history": RunFiles(path).metrics(),
            }
        )
    return runs


def _keys(run: dict[str, Any]) -> dict[str, Any]:
    return {"run": run["run"], "label": label(run["config"])}


def runs_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: keys, every config field, every final scalar metric."""
    rows = []
    for run in runs:
        metrics = {k: v for k, v in run["summary"].items() if k not in run["config"]}
        rows.append({**_keys(run), **run["config"], **_scalars(metrics)})
    return _ordered(pd.DataFrame(rows))


def history_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per evaluation of every run (the records of metrics.jsonl)."""
    rows = []
    for run in runs:
        cfg = run["config"]
        keys = {**_keys(run), **{k: cfg[k] for k in KEY_COLUMNS if k in cfg}}
        for rec in run["history"]:
            rows.append({**keys, "step": rec["step"], **_scalars(rec["metrics"])})
    return _ordered(pd.DataFrame(rows))


def curves_records(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The final interpolation curves of every run, with the run's keys."""
    out = []
    for run in runs:
        cfg = run["config"]
        keys = {**_keys(run), **{k: cfg[k] for k in KEY_COLUMNS if k in cfg}}
        out.append({**keys, "curves": run["summary"].get("curves", {})})
    return out


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    first = [c for c in KEY_COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def write_tables(
    runs_root: str | Path,
    out: str | Path,
    where: dict[str, str] | None = None,
    only: list[str] | None = None,
) -> dict[str, Path]:
    """Aggregate the runs under `runs_root` (matching `where`, listed in `only`) into the
    tables under `out`; returns their paths."""
    runs = load_runs(runs_root, where, only)
    if not runs:
        raise FileNotFoundError(f"no finished run (summary.json) under {str(runs_root)!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = runs_table(runs)
    paths = {
        "runs_csv": out / "runs.csv",
        "runs_json": out / "runs.json",
        "history": out / "history.csv",
        "curves": out / "curves.json",
        "summary": out / "summary.json",
    }
    table.to_csv(paths["runs_csv"], index=False)
    records = json.loads(table.to_json(orient="records"))
    paths["runs_json"].write_text(json.dumps(records, indent=1) + "\n")
    history_table(runs).to_csv(paths["history"], index=False)
    paths["curves"].write_text(json.dumps(curves_records(runs)) + "\n")
    write_json(paths["summary"], summary_metrics(table))
    return paths


# the validation accuracy that chooses a setting, then the test numbers that report it
SUMMARY_METRICS = ["val/acc_avg", "test/acc_avg", "test/acc_ens", "test/acc_member_mean",
                   "comm/bytes_total"]  # fmt: skip


def summary_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """{"N5 wash p=0.01 ...": {"test/acc_avg": mean, ..., "n": seeds}}: DVC's metrics file,
    small enough for `dvc metrics show` / `dvc exp show`. Metrics the runs lack are left out."""
    present = [m for m in SUMMARY_METRICS if m in table.columns]
    stats = mean_std(table, ["n_members", "label"], present)
    out = {}
    for row in stats.to_dict(orient="records"):
        key = f"N{row['n_members']} {row['label']}"
        values = {m: round(float(row[m]), 6) for m in present if finite(row[m])}
        out[key] = values | {"n": int(row["n"])}
    return out


def read_tables(tables: str | Path) -> dict[str, Any]:
    """The tables written by :func:`write_tables`: {"runs", "history", "curves"}."""
    tables = Path(tables)
    return {
        "runs": pd.read_csv(tables / "runs.csv"),
        "history": pd.read_csv(tables / "history.csv"),
        "curves": json.loads((tables / "curves.json").read_text()),
    }


def mean_std(df: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1; 0 for one seed) and n over seeds of `columns`, per `by` group:
    columns c, c:std, c:n (runs with a value of c) and n (runs in the group). A column no run
    has (a metric older run directories lack) is all NaN with c:n = 0."""
    df = df.assign(**{c: np.nan for c in columns if c not in df.columns})
    grouped = df.groupby(by, sort=True, dropna=False)
    out = grouped[columns].mean()
    std = grouped[columns].std(ddof=1)
    count = grouped[columns].count()
    for c in columns:
        out[f"{c}:std"] = std[c].where(count[c] != 1, 0.0)
        out[f"{c}:n"] = count[c]
    out["n"] = grouped.size()
    return out.reset_index()


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="directory holding run directories (searched recursively)")
    parser.add_argument("out", help="directory of the tables")
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="keep only runs whose config field has this value (repeatable)",
    )
    parser.add_argument(
        "--list",
        default=None,
        metavar="GRID_JSON",
        help="keep only the run directories listed there ({runs: [name, ...]}, as written by "
        "`wash-sweeps grid`): runs of an earlier grid stay on disk but are not averaged",
    )
    args = parser.parse_args(argv)
    only = read_json(args.list)["runs"] if args.list else None
    paths = write_tables(args.runs, args.out, parse_overrides(args.where), only)
    n = len(pd.read_csv(paths["runs_csv"]))
    print(f"{n} runs -> {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
