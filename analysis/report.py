"""report.md: the figures and mean ± std tables of a set of runs, written beside the figures.

    python -m analysis.report docs/results/tables docs/results     # after analysis.figures

Accuracies are test accuracies in %, mean ± sample std over seeds, n = number of seeds.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import figures
from analysis.aggregate import mean_std, read_tables

MAIN_COLUMNS = {
    "val/acc_avg": "averaged",
    "val/acc_ens": "ensemble",
    "val/acc_member_mean": "mean member",
    "val/acc_greedy": "greedy soup",
    "div/disagreement": "disagreement",
    "barrier/mean": "pair barrier (nats)",
    "comm/bytes_total": "MB sent",
}
PERCENT = {"val/acc_avg", "val/acc_ens", "val/acc_member_mean", "val/acc_greedy"}
CAPTIONS = {
    "fig1_accuracy_vs_p": "Figure 1. WASH accuracy against the shuffle probability p (averaged "
    "model, ensemble, mean member); independent members' naive average and PAPA's averaged "
    "model as horizontal lines (band: ± std).",
    "fig2_accuracy_vs_n": "Figure 2. Accuracy of the averaged model (left) and of the ensemble "
    "(right) against the population size N.",
    "fig3_diversity": "Figure 3. Member diversity over training: consensus distance (left, log) "
    "and prediction disagreement (right).",
    "fig4_barriers": "Figure 4. Loss along the straight path between two members (solid) and "
    "from a member to the average (dashed) at the end of training (left); member-pair loss "
    "barrier over training (right).",
    "fig5_accuracy_vs_bytes": "Figure 5. Averaged-model accuracy against the bytes the whole "
    "population communicated (log x; no communication at the marked left edge), with the Pareto "
    "front.",
    "fig6_ablation": "Figure 6. Ablation: uniform vs linear layer schedule of p, optimizer state "
    "shuffled or not.",
}


def cell(mean: float, std: float, column: str) -> str:
    if pd.isna(mean):
        return "–"
    if column in PERCENT:
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    if column == "comm/bytes_total":
        return f"{mean / 1e6:.3g} ± {std / 1e6:.2g}"
    return f"{mean:.3f} ± {std:.3f}"


def markdown_table(stats: pd.DataFrame, keys: list[str], columns: dict[str, str]) -> str:
    """A markdown table of `keys` + one 'mean ± std' cell per column + n."""
    cols = [c for c in columns if c in stats.columns]
    header = [*keys, *(columns[c] for c in cols), "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for vals in stats.to_dict(orient="records"):
        cells = [str(vals[k]) for k in keys]
        cells += [cell(vals[c], vals[f"{c}:std"], c) for c in cols]
        lines.append("| " + " | ".join([*cells, str(vals["n"])]) + " |")
    return "\n".join(lines)


def _stats(df: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    return mean_std(df, by, [c for c in columns if c in df.columns])


def main_table(runs: pd.DataFrame) -> str:
    chosen = figures.compared(runs)
    stats = _stats(chosen, ["label"], list(MAIN_COLUMNS))
    order = {lab: i for i, (lab, _, _) in enumerate(figures._label_info(chosen))}
    stats = stats.sort_values("label", key=lambda s: s.map(order))
    return markdown_table(stats, ["label"], MAIN_COLUMNS)


def size_table(runs: pd.DataFrame) -> str:
    sizes = runs.groupby("label")["n_members"].nunique()
    multi = runs[runs["label"].isin(sizes[sizes > 1].index)]
    stats = _stats(multi, ["label", "n_members"], ["val/acc_avg", "val/acc_ens"])
    return markdown_table(stats, ["label", "n_members"], MAIN_COLUMNS)


def ablation_table(runs: pd.DataFrame) -> str:
    abl = figures.ablation_runs(runs)
    by = ["layer_schedule", "shuffle_optimizer_state"]
    cols = ["val/acc_avg", "val/acc_ens", "val/acc_member_mean", "comm/bytes_total"]
    return markdown_table(_stats(abl, by, cols), by, MAIN_COLUMNS)


def setup_line(runs: pd.DataFrame) -> str:
    seeds = sorted(runs["seed"].unique().tolist())
    presets = ", ".join(sorted(runs["preset"].astype(str).unique()))
    epochs = ", ".join(str(e) for e in sorted(runs["epochs"].unique()))
    return (
        f"{len(runs)} runs; preset {presets}; dataset {runs['dataset'].iloc[0]}, model "
        f"{runs['model'].iloc[0]}; {epochs} epochs; seeds {seeds}; population sizes "
        f"{sorted(runs['n_members'].unique().tolist())}. Accuracies: test accuracy in %, "
        "mean ± sample std over seeds; n = seeds per row."
    )


def write_report(tables: Path, out: Path, results: dict[str, Any] | None = None) -> Path:
    """Write `out`/report.md from the tables; figures are linked from `out`/figures/."""
    runs = read_tables(tables)["runs"]
    parts = ["# WASH and baselines: CPU-scale results", "", setup_line(runs), ""]
    parts += ["## Main comparison (main N)", "", main_table(runs), ""]
    if runs["n_members"].nunique() > 1:
        parts += ["## Population size", "", size_table(runs), ""]
    if figures._has_ablation(runs):
        parts += ["## Ablation", "", ablation_table(runs), ""]
    parts += ["## Figures", ""]
    for stem, caption in CAPTIONS.items():
        if (out / "figures" / f"{stem}.png").exists():
            parts += [f"![{stem}](figures/{stem}.png)", "", caption, ""]
    for png in sorted((out / "figures").glob("fig7_*.png")):
        what = png.stem.removeprefix("fig7_").replace("_", " ")
        parts += [f"![{png.stem}](figures/{png.name})", "", f"Figure 7. Optuna study: {what}.", ""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    print(write_report(args.tables, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
