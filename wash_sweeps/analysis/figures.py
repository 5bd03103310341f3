"""The paper's figures, one function each, drawn from the tidy tables of `analysis.aggregate`.

    wash-sweeps figures --runs outputs/runs --out docs/results       # aggregate, draw, report
    wash-sweeps figures --tables docs/results/tables --out docs/results   # redraw from tables
    python -m wash_sweeps.analysis.figures --tables docs/results/tables --out docs/results

Every function takes tables (never a tracking server), writes `<out>/<name>.png` and `.pdf`, and
returns the arrays it plotted (the tests check those against the input). Mean +- std are over
seeds (sample std); each title states n. Accuracies are test accuracies (`test/` keys); a
setting singled out (PAPA's reference rate, the marked WASH p, the Pareto front) is chosen on
validation (`val/` keys) by `analysis.selection`. The report (`analysis.report`) is written
after the figures; it does not import this module.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import matplotlib.cm
import numpy as np
import pandas as pd

from wash_sweeps.analysis import report, style
from wash_sweeps.analysis.aggregate import mean_std, read_tables, write_tables
from wash_sweeps.analysis.selection import (
    REPORT_KEY,
    SELECT_KEY,
    ablation_runs,
    chosen_settings,
    column,
    compared,
    has_ablation,
    has_metric,
    label_info,
    main_n,
    wash_grid,
)

# what the accuracy figures plot: the test split (settings are chosen on validation elsewhere)
ACCS = ["test/acc_avg", "test/acc_ens", "test/acc_member_mean"]


def label_color(label: str, method: str, wash_ps: list[float], p: float) -> str:
    if method != "wash" or not wash_ps:
        return style.color(method)
    # darker red for larger p, so the p grid reads as one family
    rank = sorted(wash_ps).index(p) if p in wash_ps else 0
    return matplotlib.cm.Reds(0.35 + 0.6 * rank / max(len(wash_ps) - 1, 1))


def _short(label: str, method: str, p: float) -> str:
    if method == "wash":
        return f"WASH p={p:g}"
    if method == "papa":  # PAPA's rates are settings of their own: "PAPA rate=0.1"
        return f"{style.label(method)} {label.removeprefix('papa ')}"
    if method in ("papa2", "dart"):  # and their merge periods: "DART K=5"
        return f"{style.label(method)} {label.removeprefix(method + ' ')}"
    return style.label(method)


def _tested(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with a test accuracy (runs from before the validation split have none)."""
    return runs[column(runs, REPORT_KEY).notna()]


# --- figure 1 -----------------------------------------------------------------------------------


def fig_accuracy_vs_p(runs: pd.DataFrame, out: Path) -> dict[str, Any]:
    """WASH's averaged / ensemble / mean-member test accuracy against p (log x), with the naive
    average of independent members and the averaged model of PAPA's setting chosen on
    validation as horizontal references; the WASH p chosen on validation is marked."""
    n = main_n(runs)
    chosen = chosen_settings(runs, n)
    runs = _tested(runs)
    stats = mean_std(wash_grid(runs, n), ["p"], ACCS)
    fig, ax = style.figure()
    data: dict[str, Any] = {"p": stats["p"].to_numpy(), "n": stats["n"].tolist()}
    for col, kw in style.KIND_STYLE.items():
        m, s = stats[col].to_numpy() * 100, stats[f"{col}:std"].to_numpy() * 100
        kw = {**kw, "label": f"WASH {kw['label']}"}
        ax.errorbar(data["p"], m, yerr=s, color=style.color("wash"), capsize=3, **kw)
        data[col] = (m, s)
    for method in ("independent", "papa"):
        ref = runs[(runs["label"] == chosen.get(method)) & (runs["n_members"] == n)]
        if ref.empty:
            continue
        m, s = ref[REPORT_KEY].mean() * 100, ref[REPORT_KEY].std(ddof=1) * 100
        s = 0.0 if np.isnan(s) else s
        name = _short(chosen[method], method, 0.0)
        ax.axhline(m, color=style.color(method), linestyle="-.", label=name)
        ax.axhspan(m - s, m + s, color=style.color(method), alpha=0.12)
        data[method] = (m, s)
    wash_label = chosen.get("wash")
    grid = wash_grid(runs, n)
    data["chosen_p"] = None
    if wash_label in set(grid["label"]):
        data["chosen_p"] = float(grid.loc[grid["label"] == wash_label, "p"].iloc[0])
        ax.axvline(data["chosen_p"], color="black", linewidth=0.8, linestyle=":",
                   label=f"p chosen on validation ({data['chosen_p']:g})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("WASH shuffle probability p (per coordinate per step, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"Test accuracy vs shuffle probability (N = {n}; mean ± std, {style.n_note(data['n'])})"
    )
    ax.legend(loc="best")
    data["files"] = style.save(fig, out / "fig1_accuracy_vs_p")
    return data


# --- figure 2 -----------------------------------------------------------------------------------


def fig_accuracy_vs_n(runs: pd.DataFrame, out: Path) -> dict[str, Any]:
    """Averaged-model and ensemble accuracy against population size N, one line per method
    (the configurations that were run at more than one N)."""
    runs = _tested(runs)
    sizes = runs.groupby("label")["n_members"].nunique()
    multi = runs[runs["label"].isin(sizes[sizes > 1].index)]
    fig, axes = style.figure(2)
    data: dict[str, Any] = {}
    for label, method, p in label_info(multi):
        stats = mean_std(multi[multi["label"] == label], ["n_members"], ACCS[:2])
        entry = {"N": stats["n_members"].to_numpy(), "n": stats["n"].tolist()}
        for ax, col in zip(axes, ACCS[:2], strict=True):
            m, s = stats[col].to_numpy() * 100, stats[f"{col}:std"].to_numpy() * 100
            ax.errorbar(entry["N"], m, yerr=s, color=style.color(method), marker="o", capsize=3,
                        label=_short(label, method, p))  # fmt: skip
            entry[col] = (m, s)
        data[label] = entry
    ns = [k for e in data.values() for k in e["n"]]
    for ax, title in zip(
        axes, ("averaged model (uniform soup)", "ensemble of members"), strict=True
    ):
        ax.set_xlabel("population size N (members)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{title}, test; mean ± std, {style.n_note(ns)}")
        ax.set_xticks(sorted(multi["n_members"].unique()))
        ax.legend(loc="best")
    data["files"] = style.save(fig, out / "fig2_accuracy_vs_n")
    return data


# --- figure 3 -----------------------------------------------------------------------------------


def _over_training(history: pd.DataFrame, runs: pd.DataFrame, key: str, ax) -> dict[str, Any]:
    """Mean +- std of `key` against epoch, one line per compared configuration."""
    chosen = compared(runs)
    wash_ps = sorted(chosen.loc[chosen["method"] == "wash", "p"].unique().tolist())
    hist = history[history["run"].isin(chosen["run"]) & column(history, key).notna()]
    data = {}
    for label, method, p in label_info(chosen):
        stats = mean_std(hist[hist["label"] == label], ["train/epoch"], [key])
        if stats.empty:
            continue
        x, m, s = stats["train/epoch"].to_numpy(), stats[key].to_numpy(), stats[f"{key}:std"]
        c = label_color(label, method, wash_ps, p)
        ax.plot(x, m, color=c, label=_short(label, method, p))
        ax.fill_between(x, m - s.to_numpy(), m + s.to_numpy(), color=c, alpha=0.15)
        data[label] = {"epoch": x, "mean": m, "std": s.to_numpy(), "n": stats["n"].tolist()}
    return data


def fig_diversity(history: pd.DataFrame, runs: pd.DataFrame, out: Path) -> dict[str, Any]:
    """Consensus distance and prediction disagreement of the members over training."""
    fig, axes = style.figure(2)
    data = {
        "div/consensus": _over_training(history, runs, "div/consensus", axes[0]),
        "div/disagreement": _over_training(history, runs, "div/disagreement", axes[1]),
    }
    ns = [k for d in data.values() for e in d.values() for k in e["n"]]
    # symmetric log: PAPA-all's members are identical (distance 0) right after a replacement
    axes[0].set_yscale("symlog", linthresh=1e-3)
    axes[0].set_ylabel("consensus distance (1/N) Σ‖w_i − w̄‖² (symlog; 0 = identical)")
    axes[1].set_ylabel("prediction disagreement (fraction of test inputs)")
    for ax, what in zip(axes, ("consensus distance", "disagreement"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(f"Member {what} over training (N = {main_n(runs)}; {style.n_note(ns)})")
    axes[1].legend(loc="best")
    data["files"] = style.save(fig, out / "fig3_diversity")
    return data


# --- figure 4 -----------------------------------------------------------------------------------


def _mean_curve(records: list[dict[str, Any]], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std, over every curve of every run, of the curves whose key starts with prefix."""
    curves = [c for r in records for k, c in r["curves"].items() if k.startswith(prefix)]
    if not curves:
        return np.array([]), np.array([])
    arr = np.asarray(curves, dtype=float)
    return arr.mean(axis=0), arr.std(axis=0)


def fig_barriers(
    curves: list[dict[str, Any]], history: pd.DataFrame, runs: pd.DataFrame, out: Path
) -> dict[str, Any]:
    """(a) Test loss along the straight path between two members (solid) and between a member
    and the average (dashed) at the end of training; (b) the member-pair barrier over training."""
    chosen = compared(runs)
    wash_ps = sorted(chosen.loc[chosen["method"] == "wash", "p"].unique().tolist())
    fig, axes = style.figure(2)
    data: dict[str, Any] = {"interpolation": {}}
    for label, method, p in label_info(chosen):
        recs = [r for r in curves if r["label"] == label and r["run"] in set(chosen["run"])]
        pair, _ = _mean_curve(recs, "pair/")
        to_avg, _ = _mean_curve(recs, "avg/")
        c = label_color(label, method, wash_ps, p)
        if pair.size:
            alpha = np.linspace(0, 1, pair.size)
            axes[0].plot(alpha, pair, color=c, label=_short(label, method, p))
        if to_avg.size:
            axes[0].plot(np.linspace(0, 1, to_avg.size), to_avg, color=c, linestyle="--")
        data["interpolation"][label] = {"pair": pair, "avg": to_avg, "n": len(recs)}
    data["barrier/mean"] = _over_training(history, runs, "barrier/mean", axes[1])
    ns = [e["n"] for e in data["interpolation"].values()]
    axes[0].set_xlabel("interpolation weight α (0 = member A, 1 = member B or the average)")
    axes[0].set_ylabel("test loss (cross-entropy, nats)")
    axes[0].set_title(f"Loss along the path at the end (solid: pairs, dashed: to average; "
                      f"{style.n_note(ns)})")  # fmt: skip
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("loss barrier between members (nats)")
    axes[1].set_title(f"Member-pair loss barrier over training ({style.n_note(ns)})")
    axes[0].legend(loc="best")
    data["files"] = style.save(fig, out / "fig4_barriers")
    return data


# --- figure 5 -----------------------------------------------------------------------------------


def pareto_front(bytes_: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both (fewer bytes, higher accuracy),
    ordered by bytes."""
    order = np.lexsort((-acc, bytes_))
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return np.asarray(front, dtype=int)


def fig_accuracy_vs_bytes(runs: pd.DataFrame, out: Path) -> dict[str, Any]:
    """Averaged-model test accuracy against the total bytes the population communicated (log x;
    no communication is drawn at a marked left edge), with the Pareto front of the settings:
    chosen on validation accuracy (fewer bytes, higher validation accuracy), drawn at their
    test accuracy."""
    n = main_n(runs)
    at_n = _tested(runs[runs["n_members"] == n])
    stats = mean_std(at_n, ["label"], [SELECT_KEY, REPORT_KEY, "comm/bytes_total"])
    info = {lab: (m, p) for lab, m, p in label_info(at_n)}
    mb = stats["comm/bytes_total"].to_numpy() / 1e6
    positive = mb[mb > 0]
    zero_x = positive.min() / 10 if positive.size else 1.0  # where "0 bytes" is drawn
    x = np.where(mb > 0, mb, zero_x)
    acc = stats[REPORT_KEY].to_numpy() * 100
    err = stats[f"{REPORT_KEY}:std"].to_numpy() * 100
    val = stats[SELECT_KEY].to_numpy() * 100
    wash_ps = sorted(p for m, p in info.values() if m == "wash")
    fig, ax = style.figure()
    main_wash = set(wash_grid(runs, n)["label"]) if (runs["method"] == "wash").any() else set()
    other_markers = iter("sDvP^<>")
    for i, lab in enumerate(stats["label"]):
        method, p = info[lab]
        main = method != "wash" or lab in main_wash
        # WASH variants off the main grid (the ablation) keep their full label and own marker
        name, marker = (_short(lab, method, p), "o")
        if not main:
            name, marker = lab.replace("wash", "WASH", 1), next(other_markers, "x")
        color = label_color(lab, method, wash_ps, p)
        ax.errorbar(x[i], acc[i], yerr=err[i], marker=marker, capsize=3, linestyle="none",
                    color=color, label=name)  # fmt: skip
    front = pareto_front(mb, np.nan_to_num(val, nan=-np.inf))
    ax.step(x[front], acc[front], where="post", color="black", alpha=0.6,
            label="Pareto front (chosen on validation)")  # fmt: skip
    ax.set_xscale("log")
    ax.axvline(zero_x * 1.8, color="black", linewidth=0.6, linestyle=":")
    ticks = [t for t in ax.get_xticks() if t > zero_x * 2]
    ax.set_xticks([zero_x, *ticks], ["0", *[f"{t:g}" for t in ticks]])
    ax.set_xlim(zero_x / 2, np.nanmax([mb.max(), zero_x]) * 3)
    ax.set_xlabel("total bytes communicated by the population (MB, log scale; 0 at the left)")
    ax.set_ylabel("averaged-model test accuracy (%)")
    ax.set_title(f"Test accuracy vs communication (N = {n}; mean ± std, "
                 f"{style.n_note(stats[f'{REPORT_KEY}:n'].tolist())})")  # fmt: skip
    ax.legend(loc="best", fontsize=7)
    files = style.save(fig, out / "fig5_accuracy_vs_bytes")
    return {"label": stats["label"].tolist(), "mb": mb, "acc": acc, "std": err, "val": val,
            "front": stats["label"].to_numpy()[front].tolist(), "files": files}  # fmt: skip


# --- figure 6 -----------------------------------------------------------------------------------


def fig_ablation(runs: pd.DataFrame, out: Path) -> dict[str, Any]:
    """Uniform vs linear layer schedule, optimizer state shuffled or not: grouped bars."""
    abl = ablation_runs(_tested(runs))
    stats = mean_std(abl, ["layer_schedule", "shuffle_optimizer_state"], ACCS)
    names = [
        f"{r.layer_schedule} p\nopt. state {'on' if r.shuffle_optimizer_state else 'off'}"
        for r in stats.itertuples()
    ]
    fig, ax = style.figure()
    xs, width = np.arange(len(stats)), 0.26
    data: dict[str, Any] = {"variant": names, "n": stats["n"].tolist()}
    for k, (col, kw) in enumerate(style.KIND_STYLE.items()):
        m, s = stats[col].to_numpy() * 100, stats[f"{col}:std"].to_numpy() * 100
        ax.bar(xs + (k - 1) * width, m, width, yerr=s, capsize=3, label=kw["label"],
               color=style.color("wash"), alpha=(1.0, 0.65, 0.35)[k])  # fmt: skip
        data[col] = (m, s)
    ax.set_xticks(xs, names)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("WASH variant (layer schedule of p; momentum shuffled with its weights)")
    n, p = int(abl["n_members"].iloc[0]), float(abl["p"].iloc[0])
    ax.set_title(f"Ablation at p = {p:g}, N = {n} (test; mean ± std, {style.n_note(data['n'])})")
    ax.legend(loc="upper center", ncol=3)
    ends = np.concatenate([np.concatenate([m - s, m + s]) for m, s in (data[c] for c in ACCS)])
    ends = ends[np.isfinite(ends)]
    if ends.size:  # headroom for the legend
        ax.set_ylim(max(0.0, ends.min() - 10), min(ends.max() + 12, 110))
    data["files"] = style.save(fig, out / "fig6_ablation")
    return data


# --- figure 7 -----------------------------------------------------------------------------------


def fig_studies(study_dir: Path | None, out: Path) -> list[Path]:
    """Collect the Optuna study PNGs (`wash-sweeps study-report --out DIR`) into the output as
    fig7_<study>_<name>.png. Returns the copied files (none when there is no study)."""
    if study_dir is None or not Path(study_dir).is_dir():
        return []
    copied = []
    for png in sorted(Path(study_dir).rglob("*.png")):
        rel = png.relative_to(study_dir).with_suffix("")
        dest = out / f"fig7_{'_'.join(rel.parts)}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, dest)
        copied.append(dest)
    return copied


# --- all of them ----------------------------------------------------------------------------------


def draw_all(tables: Path, out: Path, study_dir: Path | None = None) -> dict[str, Any]:
    """Every figure whose runs exist in `tables`; skipped figures map to None. The accuracy
    figures (1, 2, 5, 6) need test metrics: tables of runs recorded before the validation split
    existed have none, and only figures 3, 4 and 7 are drawn from them."""
    t = read_tables(tables)
    runs, history = t["runs"], t["history"]
    has = set(_tested(runs)["method"])
    tested = has_metric(runs, REPORT_KEY)
    results: dict[str, Any] = {
        "fig1": fig_accuracy_vs_p(runs, out) if tested and "wash" in has else None,
        "fig2": fig_accuracy_vs_n(runs, out) if tested and _multi_n(runs) else None,
        "fig3": fig_diversity(history, runs, out),
        "fig4": fig_barriers(t["curves"], history, runs, out),
        "fig5": fig_accuracy_vs_bytes(runs, out) if tested else None,
        "fig6": fig_ablation(runs, out) if tested and has_ablation(_tested(runs)) else None,
        "fig7": fig_studies(study_dir, out),
    }
    return results


def _multi_n(runs: pd.DataFrame) -> bool:
    sizes = _tested(runs).groupby("label")["n_members"].nunique()
    return bool((sizes > 1).any())


# --- CLI: `wash-sweeps figures` -------------------------------------------------------------------


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", type=Path, help="run directories: aggregate them into OUT/tables")
    src.add_argument("--tables", type=Path, help="tables written by analysis.aggregate")
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="output directory")
    parser.add_argument(
        "--studies", type=Path, default=None, help="directory of PNGs of `wash-sweeps study-report`"
    )
    parser.add_argument("--no-report", action="store_true", help="figures only, no report.md")


def run(command: str, args: argparse.Namespace) -> int:
    tables = args.tables
    if args.runs is not None:
        tables = args.out / "tables"
        write_tables(args.runs, tables)
    results = draw_all(tables, args.out / "figures", args.studies)
    if not args.no_report:
        path = report.write_report(tables, args.out)
        print(f"report: {path}, headline: {path.parent / report.HEADLINE_FILE}")
    for name, res in results.items():
        files = res if isinstance(res, list) else (res or {}).get("files", [])
        print(f"{name}: {', '.join(str(f) for f in files) or 'skipped (no runs for it)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments("figures", parser)
    return run("figures", parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
