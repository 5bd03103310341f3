"""DVC's tabular plots: small CSV files with fixed x and y columns, so that `dvc plots diff`
overlays them across experiments (image plots can only sit side by side).

    python -m wash_sweeps.analysis.plot_tables docs/results/tables        # after analysis.aggregate

writes, under `<tables>/plots/`:
    accuracy_over_epochs.csv   epoch + one test-accuracy column per method (its setting chosen
                               on validation), the averaged model, mean over seeds
    accuracy_vs_p.csv          WASH's p + averaged / ensemble / mean-member test accuracy
    accuracy_vs_bytes.csv      one row per setting: MB the population sent, averaged test accuracy

Columns that a grid lacks are left empty, so the files keep their shape whatever was run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from wash_sweeps.analysis.aggregate import read_tables
from wash_sweeps.analysis.selection import (
    METHOD_ORDER,
    REPORT_KEY,
    chosen_settings,
    column,
    compared,
    has_test,
    main_n,
    wash_grid,
)

PLOTS_DIR = "plots"
FILES = ("accuracy_over_epochs.csv", "accuracy_vs_p.csv", "accuracy_vs_bytes.csv")


def over_epochs(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """epoch x method: the averaged model's test accuracy of each method's chosen setting."""
    chosen = chosen_settings(runs) if has_test(runs).any() else {}
    n = main_n(runs)
    epochs = sorted(pd.to_numeric(history["train/epoch"], errors="coerce").dropna().unique())
    out = pd.DataFrame({"epoch": [int(e) for e in epochs]})
    for method in METHOD_ORDER:
        label = chosen.get(method)
        rows = history[(history["label"] == label) & (history["n_members"] == n)]
        curve = column(rows, REPORT_KEY).groupby(rows["train/epoch"]).mean()
        out[method] = [curve.get(e, float("nan")) for e in epochs]
    return out


def accuracy_vs_p(runs: pd.DataFrame) -> pd.DataFrame:
    """WASH's p grid at the main N: test accuracies, mean over seeds."""
    if not (runs["method"] == "wash").any():
        return pd.DataFrame(columns=["p", "averaged", "ensemble", "mean_member"])
    wash = wash_grid(runs)
    keys = {"averaged": "test/acc_avg", "ensemble": "test/acc_ens"}
    keys["mean_member"] = "test/acc_member_mean"
    out = pd.DataFrame({name: column(wash, key) for name, key in keys.items()})
    out.insert(0, "p", wash["p"].astype(float))
    return out.groupby("p", as_index=False).mean()


def accuracy_vs_bytes(runs: pd.DataFrame) -> pd.DataFrame:
    """One point per setting at the main N: MB sent by the population, averaged test accuracy."""
    df = compared(runs)
    out = pd.DataFrame(
        {
            "setting": df["label"],
            "mb_sent": column(df, "comm/bytes_total") / 1e6,
            "averaged": column(df, REPORT_KEY),
        }
    )
    return out.groupby("setting", as_index=False, sort=False).mean()


def write_plot_tables(tables: str | Path) -> list[Path]:
    """Write the three plot tables under `<tables>/plots/`; returns their paths."""
    data = read_tables(tables)
    runs, history = data["runs"], data["history"]
    out = Path(tables) / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    frames = (over_epochs(runs, history), accuracy_vs_p(runs), accuracy_vs_bytes(runs))
    paths = []
    for name, frame in zip(FILES, frames, strict=True):
        frame.round(6).to_csv(out / name, index=False)
        paths.append(out / name)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", help="directory of the tables of analysis.aggregate")
    args = parser.parse_args(argv)
    for path in write_plot_tables(args.tables):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
