"""The showcase's report: docs/results/report.md, headline.md, the tables and the figures.

    python -m wash_sweeps.analysis.showcase_report --spec sweeps/showcase.yaml \
        --showcase outputs/showcase --out docs/results

Everything is chosen on validation (the tuning studies) and read on test (the fresh seeds).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from wash_sweeps.config import ConfigError
from wash_sweeps.results import atomic_write
from wash_sweeps.showcase.spec import Showcase, load_showcase
from wash_sweeps.showcase.tune import chosen_setting, tuning_record

from . import style
from .showcase_claims import Claim, claims, interval
from .showcase_data import (
    REPORTED,
    mean_std,
    methods_in,
    paired,
    per_seed,
    report_runs,
    seed0_runs,
    showcase_table,
)
from .showcase_figures import draw


def mb(x: float) -> str:
    """Megabytes without exponents: 2905, 155, 4.75, 0.0123."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _fmt(key: str, values: dict[int, float]) -> str:
    if not values:
        return "—"
    mean, std, _ = mean_std(values)
    scale, digits = (100, 1) if "/acc" in key else (1, 1 if key == "comm/mb_total" else 3)
    if key == "div/disagreement":
        scale, digits = 100, 2  # percent of test samples
    sd = f" ± {std * scale:.{digits}f}" if math.isfinite(std) else ""
    return f"{mean * scale:.{digits}f}{sd}"


def results_table(runs: pd.DataFrame, task: str) -> str:
    methods = methods_in(report_runs(runs, task))
    head = "| method | n | " + " | ".join(REPORTED.values()) + " |"
    lines = [head, "|" + "---|" * (len(REPORTED) + 2)]
    for m in methods:
        n = len(per_seed(runs, task, m, "test/acc_avg"))
        cells = [_fmt(k, per_seed(runs, task, m, k)) for k in REPORTED]
        lines.append(f"| {style.label(m)} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _setting(knobs: dict[str, Any]) -> str:
    if not knobs:
        return "(nothing to tune)"
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in knobs.items()
    )


def tuning_table(spec: Showcase, showcase: Path, task: str) -> str:
    lines = [
        "| method | trials (by state) | chosen on validation | best val/acc_avg |",
        "|---|---|---|---|",
    ]
    for m, knobs in spec.methods.items():
        rec = tuning_record(showcase, task, m) if knobs else {}
        try:
            chosen = _setting(chosen_setting(showcase, task, m, knobs))
        except ConfigError:
            chosen = "(no finished study)"
        states = ", ".join(f"{v} {k.lower()}" for k, v in rec.get("states", {}).items()) or "—"
        best = rec.get("best_value")
        lines.append(
            f"| {style.label(m)} | {states} | {chosen} | "
            f"{'—' if best is None else f'{best * 100:.1f}'} |"
        )
    return "\n".join(lines)


def comparisons(runs: pd.DataFrame, task: str) -> list[tuple[str, Any]]:
    """(what, paired difference) of every comparison the report states, in points."""
    out = []
    for m in methods_in(report_runs(runs, task)):
        name = "independent, naive average" if m == "independent" else f"{style.label(m)} averaged"
        if m != "papa":
            what = f"{name} - PAPA averaged"
            out.append((what, paired(runs, task, m, "test/acc_avg", "papa", "test/acc_avg")))
        what = f"{name} - independent ensemble"
        out.append((what, paired(runs, task, m, "test/acc_avg", "independent", "test/acc_ens")))
    what = "independent, aligned average - PAPA averaged"
    out.append(
        (what, paired(runs, task, "independent", "test/acc_aligned", "papa", "test/acc_avg"))
    )
    return out


def comparison_table(runs: pd.DataFrame, task: str) -> str:
    lines = [
        "| comparison (test accuracy, paired by seed) | mean difference [95 % interval] |",
        "|---|---|",
    ]
    lines += [f"| {what} | {interval(d)} |" for what, d in comparisons(runs, task) if d.n]
    return "\n".join(lines)


def front_table(runs: pd.DataFrame, task: str) -> str:
    df = seed0_runs(runs, task, "front")
    if df.empty:
        return "(no front runs)"
    lines = ["| method | setting | MB sent | averaged | ensemble |", "|---|---|---|---|---|"]
    axis = {"wash": "p", "papa": "papa_every", "papa_all": "papa_all_every"}
    for _, r in df.sort_values(["method", "comm/mb_total"]).iterrows():
        a = axis.get(r["method"], "")
        lines.append(
            f"| {style.label(r['method'])} | {a}={r[a]:.3g} | {mb(r['comm/mb_total'])} | "
            f"{r['test/acc_avg'] * 100:.1f} | {r['test/acc_ens'] * 100:.1f} |"
        )
    return "\n".join(lines)


def _pick(d: pd.DataFrame, method: str) -> pd.Series | None:
    """`method`'s run in a map cell; for WASH, the p with the best validation accuracy there
    (chosen on validation, read on test, like everything else)."""
    d = d[d["method"] == method].dropna(subset=["val/acc_avg"])
    return None if d.empty else d.loc[d["val/acc_avg"].idxmax()]


def winners_table(runs: pd.DataFrame, task: str) -> str:
    """At each schedule length and N of the map: test accuracy of the averaged model of naive
    averaging, PAPA and WASH (its p chosen on validation in that cell), seed 0; the winners are
    those within one point of the best (one seed cannot resolve less)."""
    df = seed0_runs(runs, task, "map")
    if df.empty:
        return "(no map runs)"
    head = "| setting | naive average | PAPA | WASH (p chosen on validation) | wins |"
    lines = [head, "|---|---|---|---|---|"]
    n0 = int(df["n_members"].mode().iloc[0])
    e0 = int(df["epochs"].max())
    cells = [
        (f"{e} epochs, N = {n0}", df[(df["epochs"] == e) & (df["n_members"] == n0)])
        for e in sorted(set(df["epochs"]))
    ]
    cells += [
        (f"{e0} epochs, N = {n}", df[(df["epochs"] == e0) & (df["n_members"] == n)])
        for n in sorted(set(df["n_members"]))
        if n != n0
    ]
    names = {"independent": "naive average", "papa": "PAPA", "wash": "WASH"}
    for what, d in cells:
        picked = {name: _pick(d, m) for m, name in names.items()}
        acc = {k: (math.nan if r is None else float(r["test/acc_avg"])) for k, r in picked.items()}
        top = max((v for v in acc.values() if math.isfinite(v)), default=math.nan)
        wins = [k for k, v in acc.items() if math.isfinite(v) and top - v < 0.01]
        cell = {k: "—" if not math.isfinite(v) else f"{v * 100:.1f}" for k, v in acc.items()}
        if picked["WASH"] is not None:
            cell["WASH"] += f" (p={picked['WASH']['p']:.3g})"
        win = " = ".join(wins) if len(wins) < 3 else "tie"
        lines.append(
            f"| {what} | {cell['naive average']} | {cell['PAPA']} | {cell['WASH']} | {win} |"
        )
    return "\n".join(lines)


def claims_table(found: list[Claim]) -> str:
    lines = ["| # | claim | verdict | evidence |", "|---|---|---|---|"]
    lines += [f"| {c.number} | {c.text} | **{c.verdict}** | {c.evidence} |" for c in found]
    return "\n".join(lines)


def headline(runs: pd.DataFrame, tasks: list[str]) -> str:
    """One sentence per task from the numbers (the README quotes it)."""
    parts = []
    for task in tasks:
        wash = per_seed(runs, task, "wash", "test/acc_avg")
        papa = per_seed(runs, task, "papa", "test/acc_avg")
        ens = per_seed(runs, task, "independent", "test/acc_ens")
        if not wash or not papa:
            continue
        d = paired(runs, task, "wash", "test/acc_avg", "papa", "test/acc_avg")
        e = paired(runs, task, "wash", "test/acc_avg", "independent", "test/acc_ens")
        mb_wash = mean_std(per_seed(runs, task, "wash", "comm/mb_total"))[0]
        mb_papa = mean_std(per_seed(runs, task, "papa", "comm/mb_total"))[0]
        naive = mean_std(per_seed(runs, task, "independent", "test/acc_avg"))[0]
        parts.append(
            f"On {task} (n = {d.n} fresh seeds, settings chosen on validation), WASH's averaged "
            f"model reaches {mean_std(wash)[0] * 100:.1f} % test accuracy against PAPA's "
            f"{mean_std(papa)[0] * 100:.1f} % (paired difference {interval(d)} points) and the "
            f"independent ensemble's {mean_std(ens)[0] * 100:.1f} % ({interval(e)}), sending "
            f"{mb(mb_wash)} MB to PAPA's {mb(mb_papa)} MB; the naive average of independent "
            f"members gets {naive * 100:.1f} %."
        )
    return " ".join(parts) or "No reported runs yet."


def setup(spec: Showcase) -> str:
    tasks = "; ".join(
        f"**{t.name}** (preset `{t.preset}`, {t.trials} Optuna trials per method)"
        for t in spec.tasks.values()
    )
    return (
        f"N = {spec.n_members} members. Tasks: {tasks}. Every method gets the same number of "
        f"trials on a task, over its own knobs (sweeps/showcase.yaml), on tuning seed "
        f"{spec.tuning_seed}, maximising `{spec.metric}` on the validation split with median "
        f"pruning; the best trial's setting then runs on fresh seeds {spec.seeds} and is read on "
        "the test split. Intervals: 95 % t-intervals of the per-seed paired differences, in "
        "points of test accuracy. Fronts and the failure map: one seed each (seed "
        f"{spec.seeds[0]}), so their differences under about one point are not resolved."
    )


def task_section(spec: Showcase, showcase: Path, runs: pd.DataFrame, task: str) -> str:
    t = spec.tasks[task]
    return "\n\n".join(
        [
            f"## {task} (`{t.preset}`)",
            f"### Tuning on validation\n\n{tuning_table(spec, showcase, task)}",
            "### Test, chosen settings on fresh seeds (mean ± std; accuracies and disagreement in "
            f"%)\n\n{results_table(runs, task)}\n\n![methods](figures/{task}_methods.png)",
            f"### Paired differences\n\n{comparison_table(runs, task)}",
            f"### The paper's claims on {task}\n\n{claims_table(claims(runs, task))}",
            "### Accuracy against bytes: each method along its own axis\n\n"
            f"![front](figures/{task}_front.png)\n\n{front_table(runs, task)}",
            "### Where WASH fails: schedule length and N\n\n"
            f"![failure map](figures/{task}_failure_map.png)\n\n{winners_table(runs, task)}",
        ]
    )


def write_report(spec: Showcase, showcase: Path, out: Path) -> Path:
    runs, missing = showcase_table(showcase)
    tasks = [t for t in spec.tasks if not report_runs(runs, t).empty]
    (out / "tables").mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "tables" / "showcase_runs.csv", index=False)
    draw(runs, tasks, out / "figures")
    head = headline(runs, tasks)
    missing_note = (
        f"\n\n**{len(missing)} planned runs have not finished** and are left out: "
        f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
        if missing
        else ""
    )
    text = "\n\n".join(
        [
            "# WASH and its baselines, tuned on validation, tested on fresh seeds",
            "Written by `python -m wash_sweeps.analysis.showcase_report` (stage `report` of "
            "dvc.yaml) from the run directories under outputs/showcase: do not edit."
            + missing_note,
            f"## Set-up\n\n{setup(spec)}",
            f"## Headline\n\n{head}",
            *[task_section(spec, showcase, runs, t) for t in tasks],
        ]
    )
    atomic_write(out / "report.md", (text + "\n").encode())
    atomic_write(out / "headline.md", (head + "\n").encode())
    metrics = {
        t: {
            m: mean_std(per_seed(runs, t, m, "test/acc_avg"))[0]
            for m in methods_in(report_runs(runs, t))
        }
        for t in tasks
    }
    atomic_write(
        out / "summary.json", (json.dumps({"test/acc_avg": metrics}, indent=1) + "\n").encode()
    )
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="sweeps/showcase.yaml")
    p.add_argument("--showcase", default="outputs/showcase", help="the showcase's output dir")
    p.add_argument("--out", default="docs/results", help="where the report and figures go")
    args = p.parse_args(argv)
    print(write_report(load_showcase(args.spec), Path(args.showcase), Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
