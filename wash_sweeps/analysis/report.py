"""report.md and headline.md: settings chosen on validation, their test numbers as mean ± std
tables, paired per-seed comparisons, the headline sentence and the figures' captions.

    python -m wash_sweeps.analysis.report docs/results/tables docs/results   # after the figures

Accuracies are test accuracies in %, mean ± sample std over seeds, n = number of seeds. Every
setting shown as "chosen" was chosen on validation (`analysis.selection`); every "A vs B" is the
paired per-seed difference with its 95% t-interval (`analysis.stats`). The headline sentence is
built here from those numbers and written both into report.md and alone into headline.md, which
the README quotes. This module draws nothing and does not import `analysis.figures`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from wash_sweeps.analysis.aggregate import mean_std, read_tables
from wash_sweeps.analysis.selection import (
    REPORT_KEY,
    SELECT_KEY,
    ablation_runs,
    chosen_settings,
    column,
    compared,
    has_ablation,
    has_test,
    label_info,
    main_n,
    per_seed,
)
from wash_sweeps.analysis.stats import PairedDiff, describe, paired_difference

HEADLINE_FILE = "headline.md"
MAIN_COLUMNS = {
    "test/acc_avg": "averaged",
    "test/acc_ens": "ensemble",
    "test/acc_member_mean": "mean member",
    "test/acc_greedy": "greedy soup",
    "test/acc_aligned": "aligned average",
    "div/disagreement": "disagreement",
    "barrier/mean": "pair barrier (nats)",
    "comm/bytes_total": "MB sent",
}
# the chosen settings: the validation accuracy that chose them, then their test numbers
CHOSEN_COLUMNS = {
    SELECT_KEY: "averaged, validation (chooses)",
    "test/acc_avg": "averaged",
    "test/acc_ens": "ensemble",
    "test/acc_member_mean": "mean member",
    "test/acc_greedy": "greedy soup",
    "test/acc_aligned": "aligned average",
    "comm/bytes_total": "MB sent",
}
PERCENT = {f"{split}/{m}" for split in ("val", "test")
           for m in ("acc_avg", "acc_ens", "acc_member_mean", "acc_greedy",
                     "acc_aligned")}  # fmt: skip
METHOD_NAMES = {"independent": "independent", "papa": "PAPA", "papa_all": "PAPA-all",
                "papa2": "PAPA-2", "dart": "DART", "wash": "WASH"}  # fmt: skip
CAPTIONS = {
    "fig1_accuracy_vs_p": "Figure 1. WASH test accuracy against the shuffle probability p "
    "(averaged model, ensemble, mean member); independent members' naive average and the "
    "averaged model of PAPA's rate chosen on validation as horizontal lines (band: ± std); "
    "dotted vertical line: the WASH setting chosen on validation, when it is on this grid.",
    "fig2_accuracy_vs_n": "Figure 2. Test accuracy of the averaged model (left) and of the "
    "ensemble (right) against the population size N.",
    "fig3_diversity": "Figure 3. Member diversity over training: consensus distance (left, log) "
    "and prediction disagreement on the test split (right).",
    "fig4_barriers": "Figure 4. Test loss along the straight path between two members (solid) "
    "and from a member to the average (dashed) at the end of training (left); member-pair loss "
    "barrier over training (right).",
    "fig5_accuracy_vs_bytes": "Figure 5. Averaged-model test accuracy against the bytes the "
    "whole population communicated (log x; no communication at the marked left edge), with the "
    "Pareto front of the settings on validation accuracy, drawn at their test accuracy.",
    "fig6_ablation": "Figure 6. Ablation, test accuracy: uniform vs linear layer schedule of p, "
    "optimizer state shuffled or not.",
}


# --- cells and tables ----------------------------------------------------------------------------


def cell(
    mean: float, std: float, column: str, count: int | None = None, n: int | None = None
) -> str:
    """'81.0 ± 1.0' (accuracies in %, bytes in MB); '–' when no run has the metric; std '–'
    below two seeds; ' (n = k)' when only k of the row's n runs have the metric."""
    if pd.isna(mean) or count == 0:
        return "–"
    count = n if count is None else int(count)
    if column in PERCENT:
        m, s = f"{100 * mean:.1f}", f"{100 * std:.1f}"
    elif column == "comm/bytes_total":
        m, s = f"{mean / 1e6:.3g}", f"{std / 1e6:.2g}"
    else:
        m, s = f"{mean:.3f}", f"{std:.3f}"
    if pd.isna(std) or (count is not None and count < 2):
        s = "–"
    text = f"{m} ± {s}"
    return text if count is None or n is None or count == n else f"{text} (n = {count})"


def markdown_table(stats: pd.DataFrame, keys: list[str], columns: dict[str, str]) -> str:
    """A markdown table of `keys` + one 'mean ± std' cell per column + n (runs of the row)."""
    cols = [c for c in columns if c in stats.columns]
    header = [*keys, *(columns[c] for c in cols), "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for vals in stats.to_dict(orient="records"):
        n = int(vals["n"])
        cells = [str(vals[k]) for k in keys]
        cells += [cell(vals[c], vals[f"{c}:std"], c, vals.get(f"{c}:n"), n) for c in cols]
        lines.append("| " + " | ".join([*cells, str(n)]) + " |")
    return "\n".join(lines)


def _stats(df: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    # a metric no run has shows –; one some runs lack says how many have it
    return mean_std(df, by, columns)


def _in_label_order(stats: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    order = {lab: i for i, (lab, _, _) in enumerate(label_info(df))}
    return stats.sort_values("label", key=lambda s: s.map(order), kind="stable")


def main_table(runs: pd.DataFrame) -> str:
    """Every compared setting at the main N (baselines and the WASH p grid), test numbers."""
    chosen = compared(runs)
    stats = _in_label_order(_stats(chosen, ["label"], list(MAIN_COLUMNS)), chosen)
    return markdown_table(stats, ["label"], MAIN_COLUMNS)


def chosen_table(runs: pd.DataFrame) -> str:
    """One row per method: the setting chosen on validation at the main N, with its test
    numbers (runs without test metrics take no part)."""
    chosen = chosen_settings(runs)
    if not chosen:
        return (
            "No setting can be chosen: no run at the main N has both validation and test metrics."
        )
    n = main_n(runs)
    rows = runs[runs["label"].isin(chosen.values()) & (runs["n_members"] == n) & has_test(runs)]
    stats = _in_label_order(_stats(rows, ["label"], list(CHOSEN_COLUMNS)), rows)
    by_label = {lab: METHOD_NAMES.get(m, m) for m, lab in chosen.items()}
    stats.insert(0, "method", stats["label"].map(by_label))
    return markdown_table(stats.rename(columns={"label": "setting"}), ["method", "setting"],
                          CHOSEN_COLUMNS)  # fmt: skip


def size_table(runs: pd.DataFrame) -> str:
    sizes = runs.groupby("label")["n_members"].nunique()
    multi = runs[runs["label"].isin(sizes[sizes > 1].index)]
    stats = _stats(multi, ["label", "n_members"], ["test/acc_avg", "test/acc_ens"])
    return markdown_table(stats, ["label", "n_members"], MAIN_COLUMNS)


def ablation_table(runs: pd.DataFrame) -> str:
    abl = ablation_runs(runs)
    by = ["layer_schedule", "shuffle_optimizer_state"]
    cols = ["test/acc_avg", "test/acc_ens", "test/acc_member_mean", "comm/bytes_total"]
    return markdown_table(_stats(abl, by, cols), by, MAIN_COLUMNS)


# --- paired comparisons --------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """A vs B on one test metric each, paired by seed: `a` and `b` hold the paired seeds only."""

    what: str
    a: dict[int, float]
    b: dict[int, float]
    diff: PairedDiff


def compare(what: str, a: dict[int, float], b: dict[int, float]) -> Comparison:
    common = set(a) & set(b)
    diff = paired_difference(a, b)
    return Comparison(what, {s: a[s] for s in common}, {s: b[s] for s in common}, diff)


def comparisons(runs: pd.DataFrame) -> list[Comparison]:
    """Each method's chosen setting vs PAPA's (averaged model, then ensemble for WASH), WASH vs
    the naive average of independent members, and each chosen setting's averaged model vs its
    own ensemble: all on test accuracy at the main N, settings chosen on validation."""
    chosen = chosen_settings(runs)
    name = {m: f"{METHOD_NAMES.get(m, m)} ({lab})" for m, lab in chosen.items()}

    def seeds(method: str, key: str = REPORT_KEY) -> dict[int, float]:
        return per_seed(runs, chosen[method], key)

    out = []
    if "papa" in chosen:
        versus = f" vs {name['papa']}"
        for m in chosen:
            if m != "papa":
                out.append(compare(f"{name[m]}{versus}, averaged model", seeds(m), seeds("papa")))
        if "wash" in chosen:
            ens = "test/acc_ens"
            out.append(
                compare(f"{name['wash']}{versus}, ensemble", seeds("wash", ens), seeds("papa", ens))
            )
    if "wash" in chosen and "independent" in chosen:
        what = f"{name['wash']} vs independent, naive average"
        out.append(compare(what, seeds("wash"), seeds("independent")))
    for m in chosen:
        what = f"{name[m]}: averaged model vs its ensemble"
        out.append(compare(what, seeds(m), seeds(m, "test/acc_ens")))
    return out


def _mean_sd(values: dict[int, float]) -> tuple[float, float, int]:
    """Mean, sample std (NaN below 2 values) and count of `values`."""
    v = pd.Series(list(values.values()), dtype=float)
    return float(v.mean()), float(v.std(ddof=1)), len(v)


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {'–' if math.isnan(std) else f'{100 * std:.1f}'}"


def _acc(values: dict[int, float]) -> str:
    m, s, k = _mean_sd(values)
    return cell(m, s, REPORT_KEY, k)


def comparison_table(comps: list[Comparison]) -> str:
    if not comps:
        return "No comparison: the runs have no chosen setting with test metrics."
    lines = [
        "| comparison (A vs B) | A | B | A − B in points [95% t-interval], n: verdict |",
        "|---|---|---|---|",
    ]
    for c in comps:
        lines.append(f"| {c.what} | {_acc(c.a)} | {_acc(c.b)} | {describe(c.diff)} |")
    return "\n".join(lines)


# --- the headline --------------------------------------------------------------------------------


def headline(runs: pd.DataFrame) -> str:
    """One sentence from the numbers: WASH's chosen setting vs PAPA's on averaged-model test
    accuracy (paired difference, interval, verdict) and the share of PAPA's bytes WASH sent."""
    n = main_n(runs)
    chosen = chosen_settings(runs, n)
    dataset = ", ".join(sorted(runs["dataset"].astype(str).unique()))
    if "wash" not in chosen or "papa" not in chosen:
        return (
            f"No headline on {dataset}, N={n}: the runs have no WASH and PAPA settings with both "
            "validation and test metrics to compare."
        )
    wash = per_seed(runs, chosen["wash"], REPORT_KEY, n)
    papa = per_seed(runs, chosen["papa"], REPORT_KEY, n)
    (wm, ws, _), (pm, ps, _) = _mean_sd(wash), _mean_sd(papa)
    text = (
        f"On {dataset}, N={n}, with settings chosen on validation ({chosen['wash']}; PAPA "
        f"{chosen['papa'].removeprefix('papa ')}), WASH's averaged model reaches "
        f"{_pct(wm, ws)} % test accuracy vs PAPA's {_pct(pm, ps)} % "
        f"(paired difference {describe(paired_difference(wash, papa))})"
    )
    at_n = runs[(runs["n_members"] == n) & has_test(runs)]
    wash_b, papa_b = (
        column(at_n[at_n["label"] == chosen[m]], "comm/bytes_total").mean()
        for m in ("wash", "papa")
    )
    if math.isfinite(wash_b) and math.isfinite(papa_b) and papa_b > 0:
        share = 100 * wash_b / papa_b
        text += f" while sending {share:.2g}" if share < 10 else f" while sending {share:.0f}"
        text += " % of PAPA's bytes"
    return text + "."


# --- the report ----------------------------------------------------------------------------------


def setup_line(runs: pd.DataFrame) -> str:
    seeds = sorted(runs["seed"].unique().tolist())
    presets = ", ".join(sorted(runs["preset"].astype(str).unique()))
    epochs = ", ".join(str(e) for e in sorted(runs["epochs"].unique()))
    line = (
        f"{len(runs)} runs; preset {presets}; dataset {runs['dataset'].iloc[0]}, model "
        f"{runs['model'].iloc[0]}; {epochs} epochs; seeds {seeds}; population sizes "
        f"{sorted(runs['n_members'].unique().tolist())}. Accuracies: test accuracy in %, "
        "mean ± sample std over seeds; n = seeds per row. Each method's setting is chosen on "
        "the validation accuracy of its averaged model; comparisons are paired by seed."
    )
    old = int((~has_test(runs)).sum())
    if old:
        line += (
            f" {old} of {len(runs)} runs have no test metrics (recorded before the validation "
            "split existed; their val/ keys are test numbers): their cells show –, and they "
            "take no part in a choice or a comparison."
        )
    return line


def write_report(tables: Path, out: Path) -> Path:
    """Write `out`/report.md and `out`/headline.md from the tables; figures are linked from
    `out`/figures/ when they exist."""
    runs = read_tables(tables)["runs"]
    sentence = headline(runs)
    parts = ["# WASH and baselines: CPU-scale results", "", setup_line(runs), ""]
    parts += [sentence, ""]
    parts += ["## Settings chosen on validation (main N)", "", chosen_table(runs), ""]
    parts += ["## Paired comparisons (test accuracy in %)", "",
              comparison_table(comparisons(runs)), ""]  # fmt: skip
    parts += ["## Every setting (main N)", "", main_table(runs), ""]
    if runs["n_members"].nunique() > 1:
        parts += ["## Population size", "", size_table(runs), ""]
    if has_ablation(runs):
        parts += ["## Ablation", "", ablation_table(runs), ""]
    parts += ["## Figures", ""]
    for stem, caption in CAPTIONS.items():
        if (out / "figures" / f"{stem}.png").exists():
            parts += [f"![{stem}](figures/{stem}.png)", "", caption, ""]
    for png in sorted((out / "figures").glob("fig7_*.png")):
        what = png.stem.removeprefix("fig7_").replace("_", " ")
        parts += [f"![{png.stem}](figures/{png.name})", "", f"Figure 7. Optuna study: {what}.", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / HEADLINE_FILE).write_text(sentence + "\n")
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
