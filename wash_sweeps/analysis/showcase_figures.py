"""The showcase's figures, one PNG (+ PDF) per task and question.

- `<task>_methods`: every method's chosen setting on the fresh seeds (test accuracy of the
  averaged model and of the ensemble, mean and each seed);
- `<task>_front`: test accuracy of the averaged model against the MB each population sent, every
  method swept along its own communication axis (seed 0), the chosen settings ringed;
- `<task>_failure_map`: the averaged model over schedule length (WASH at each p, naive averaging,
  PAPA) and over N (seed 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import style
from .showcase_data import has_role, methods_in, per_seed, report_runs, seed0_runs

AXIS = {"wash": "p", "papa": "papa_every", "papa_all": "papa_all_every"}
AXIS_LABEL = {"p": "p", "papa_every": "every", "papa_all_every": "K"}


def _axis_floor(values: list[float]) -> float:
    """The lowest value worth the y-axis: far-off values (a naive average at chance beside
    models at 95 %) are written as text at the bottom instead of squashing the rest."""
    vals = sorted(v for v in values if np.isfinite(v))
    if not vals:
        return 0.0
    top = np.median(vals)
    kept = [v for v in vals if v >= top - 20]
    return max(0.0, min(kept) - 2)


def fig_methods(runs: pd.DataFrame, task: str, out: Path) -> Path:
    """The averaged model (circles) and the ensemble (squares) of every method's chosen setting:
    each seed, and mean ± std."""
    methods = methods_in(report_runs(runs, task))
    fig, ax = style.figure()
    series = {
        (m, key): np.array(list(per_seed(runs, task, m, key).values())) * 100
        for m in methods
        for key in ("test/acc_avg", "test/acc_ens")
    }
    floor = _axis_floor([v for vals in series.values() for v in vals])
    for i, m in enumerate(methods):
        for key, dx, marker in (("test/acc_avg", -0.15, "o"), ("test/acc_ens", 0.15, "s")):
            vals = series[(m, key)]
            if vals.size == 0:
                continue
            if vals.mean() < floor:  # off the scale: said in words
                ax.annotate(
                    f"{vals.mean():.1f} %\n(off scale)",
                    (i + dx, floor),
                    xytext=(0, 8),
                    textcoords="offset points",
                    ha="center",
                    fontsize=7,
                    arrowprops=dict(arrowstyle="->", color=style.color(m)),
                )
                continue
            x = np.full(vals.size, i + dx)
            ax.scatter(x, vals, s=12, color=style.color(m), marker=marker, alpha=0.6)
            sd = vals.std(ddof=1) if vals.size > 1 else 0
            ax.errorbar(i + dx, vals.mean(), yerr=sd, color="black", marker=marker, capsize=3)
    ax.set_xticks(range(len(methods)), [style.label(m).split(" (")[0] for m in methods])
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylim(floor, 100.3)
    ax.set_ylabel("test accuracy (%)")
    ax.scatter([], [], marker="o", color="gray", label="averaged model (left of each pair)")
    ax.scatter([], [], marker="s", color="gray", label="ensemble (right)")
    n = sorted({len(per_seed(runs, task, m, "test/acc_avg")) for m in methods})
    ax.set_title(
        f"{task}: each method's setting chosen on validation,\ntested on fresh seeds "
        f"({style.n_note(n)}; mean ± std)"
    )
    ax.legend(loc="lower right")
    return style.save(fig, out / f"{task}_methods")[0]


def fig_front(runs: pd.DataFrame, task: str, out: Path) -> Path:
    """Averaged-model accuracy against MB sent along each method's communication axis."""
    df = seed0_runs(runs, task, "front")
    chosen = report_runs(runs, task)
    seed0 = chosen["seed"].min() if not chosen.empty else 0
    chosen = chosen[chosen["seed"] == seed0]
    fig, ax = style.figure()
    for m in methods_in(pd.concat([df, chosen])):
        axis = AXIS.get(m)
        pts = pd.concat([df[df["method"] == m], chosen[chosen["method"] == m]])
        pts = pts.drop_duplicates("run").sort_values("comm/mb_total")
        if m == "independent" or pts.empty:
            continue
        x, y = pts["comm/mb_total"].to_numpy(), pts["test/acc_avg"].to_numpy() * 100
        ax.plot(x, y, marker="o", color=style.color(m), label=style.label(m))
        for _, r in pts.iterrows():
            if axis is not None:
                ax.annotate(
                    f"{AXIS_LABEL[axis]}={r[axis]:.3g}",
                    (r["comm/mb_total"], r["test/acc_avg"] * 100),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        c = chosen[chosen["method"] == m]
        ax.scatter(
            c["comm/mb_total"],
            c["test/acc_avg"] * 100,
            s=120,
            facecolors="none",
            edgecolors=style.color(m),
            linewidths=1.5,
        )
    ind = chosen[chosen["method"] == "independent"]
    if not ind.empty:
        ax.axhline(
            ind["test/acc_ens"].iloc[0] * 100,
            color="gray",
            ls="--",
            label="independent ensemble (no communication)",
        )
        ax.axhline(
            ind["test/acc_aligned"].iloc[0] * 100,
            color="gray",
            ls=":",
            label="independent, aligned average",
        )
    ax.set_xscale("log")
    ax.set_xlabel("MB sent by the population during training (log)")
    ax.set_ylabel("averaged model, test accuracy (%)")
    ax.set_title(
        f"{task}: accuracy vs communication along each method's axis\n"
        f"(seed {seed0}; ringed: the setting chosen on validation)"
    )
    ax.legend(loc="lower right")
    return style.save(fig, out / f"{task}_front")[0]


def _map_panel(ax, df: pd.DataFrame, by: str, wash_ps: list[float]) -> None:
    for p in wash_ps:
        d = df[(df["method"] == "wash") & np.isclose(df["p"], p)].sort_values(by)
        if not d.empty:
            ax.plot(
                d[by],
                d["test/acc_avg"] * 100,
                marker="o",
                color=style.color("wash"),
                alpha=0.35 + 0.65 * wash_ps.index(p) / max(1, len(wash_ps) - 1),
                label=f"WASH p={p:.3g}",
            )
    for m, ls in (("papa", "-"), ("independent", "--")):
        d = df[df["method"] == m].sort_values(by)
        if not d.empty:
            ax.plot(
                d[by],
                d["test/acc_avg"] * 100,
                marker="s",
                ls=ls,
                color=style.color(m),
                label=f"{style.label(m).split(' (')[0]} averaged",
            )
            ax.plot(
                d[by],
                d["test/acc_ens"] * 100,
                marker="x",
                ls=":",
                color=style.color(m),
                alpha=0.7,
                label=f"{style.label(m).split(' (')[0]} ensemble",
            )
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)


def fig_failure_map(runs: pd.DataFrame, task: str, out: Path) -> Path:
    """WASH's averaged model over schedule length (each p) and over N, beside PAPA and naive
    averaging (seed 0)."""
    df = seed0_runs(runs, task, "map")
    seed0 = int(df["seed"].min()) if not df.empty else 0
    fig, axes = style.figure(2)
    n0 = int(df["n_members"].mode().iloc[0]) if not df.empty else 5
    e0 = int(df["epochs"].max()) if not df.empty else 0
    at_n0 = df[df["n_members"] == n0]
    ps = sorted({float(p) for p in at_n0[at_n0["method"] == "wash"]["p"]})
    # the epochs panel: every run at the main N; WASH lines per p value with >1 length
    multi = [p for p in ps if (np.isclose(at_n0["p"], p) & (at_n0["method"] == "wash")).sum() > 1]
    _map_panel(axes[0], at_n0, "epochs", multi)
    axes[0].set_xticks(sorted(set(at_n0["epochs"])))
    axes[0].set_xlabel("epochs of training (cosine schedule to 0)")
    axes[0].set_title(f"{task}: over schedule length (N = {n0}, seed {seed0})")
    at_e0 = df[(df["epochs"] == e0) & has_role(df, "map")]
    wash_n = at_e0[at_e0["method"] == "wash"]
    common = wash_n.groupby("p")["n_members"].nunique()
    p_n = [float(p) for p, k in common.items() if k > 1]
    _map_panel(axes[1], at_e0, "n_members", p_n)
    axes[1].set_xticks(sorted(set(at_e0["n_members"])))
    axes[1].set_xlabel("population size N")
    axes[1].set_title(f"{task}: over N ({e0} epochs, seed {seed0})")
    return style.save(fig, out / f"{task}_failure_map")[0]


def draw(runs: pd.DataFrame, tasks: list[str], out: Path) -> list[Path]:
    paths = []
    for task in tasks:
        if report_runs(runs, task).empty:
            continue
        paths += [fig_methods(runs, task, out), fig_front(runs, task, out)]
        paths.append(fig_failure_map(runs, task, out))
    return paths
