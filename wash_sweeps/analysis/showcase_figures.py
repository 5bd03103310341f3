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
from .showcase_data import methods_in, per_seed, report_runs, seed0_runs

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


def _front_points(df: pd.DataFrame, chosen: pd.DataFrame, m: str) -> pd.DataFrame:
    pts = pd.concat([df[df["method"] == m], chosen[chosen["method"] == m]])
    return pts.drop_duplicates("run").sort_values("comm/mb_total")


def fig_front(runs: pd.DataFrame, task: str, out: Path) -> Path:
    """Averaged-model accuracy against MB sent along each method's communication axis; points
    far below the rest sit on the bottom edge as triangles, their value written beside them."""
    df = seed0_runs(runs, task, "front")
    chosen = report_runs(runs, task)
    seed0 = chosen["seed"].min() if not chosen.empty else 0
    chosen = chosen[chosen["seed"] == seed0]
    ind = chosen[chosen["method"] == "independent"]
    refs = [] if ind.empty else [ind["test/acc_ens"].iloc[0], ind["test/acc_aligned"].iloc[0]]
    methods = [m for m in methods_in(pd.concat([df, chosen])) if m != "independent"]
    ys = [v * 100 for m in methods for v in _front_points(df, chosen, m)["test/acc_avg"]]
    floor = _axis_floor(ys + [r * 100 for r in refs])
    fig, ax = style.figure()
    for m in methods:
        pts, axis = _front_points(df, chosen, m), AXIS.get(m)
        x, y = pts["comm/mb_total"].to_numpy(), pts["test/acc_avg"].to_numpy() * 100
        shown = np.maximum(y, floor)
        ax.plot(x, shown, color=style.color(m), label=style.label(m))
        low = y < floor
        ax.scatter(x[~low], y[~low], color=style.color(m), zorder=3)
        ax.scatter(x[low], shown[low], color=style.color(m), marker="v", s=50, zorder=3)
        for k, (_, r) in enumerate(pts.iterrows()):
            text = "" if axis is None else f"{AXIS_LABEL[axis]}={r[axis]:.3g}"
            if y[k] < floor:
                text += f": {y[k]:.1f} %"
            ax.annotate(text, (x[k], shown[k]), fontsize=7, textcoords="offset points",
                        xytext=(4, 4 if k % 2 == 0 else -10))  # fmt: skip
        c = chosen[chosen["method"] == m]
        ax.scatter(c["comm/mb_total"], np.maximum(c["test/acc_avg"] * 100, floor), s=130,
                   facecolors="none", edgecolors=style.color(m), linewidths=1.5)  # fmt: skip
    for value, ls, name in zip(refs, ("--", ":"), ("ensemble", "aligned average"), strict=False):
        if value * 100 >= floor:
            ax.axhline(value * 100, color="gray", ls=ls, label=f"independent {name} (no comm.)")
    ax.set_ylim(floor - 0.5, max(ys + [r * 100 for r in refs], default=100) + 1)
    ax.set_xscale("log")
    ax.set_xlabel("MB sent by the population during training (log)")
    ax.set_ylabel("averaged model, test accuracy (%)")
    ax.set_title(
        f"{task}: accuracy vs communication along each method's axis\n"
        f"(seed {seed0}; ringed: the setting chosen on validation; v: below the axis)"
    )
    ax.legend(loc="best", fontsize=7)
    return style.save(fig, out / f"{task}_front")[0]


P_MARKERS = ("v", "o", "s", "^", "D", "P")


def _map_panel(ax, df: pd.DataFrame, by: str, wash_ps: list[float]) -> None:
    shades = np.linspace(0.35, 1.0, max(1, len(wash_ps)))
    for k, p in enumerate(wash_ps):
        d = df[(df["method"] == "wash") & np.isclose(df["p"], p)].sort_values(by)
        if not d.empty:
            ax.plot(
                d[by],
                d["test/acc_avg"] * 100,
                marker=P_MARKERS[k % len(P_MARKERS)],
                color=style.color("wash"),
                alpha=float(shades[k]),
                label=f"WASH p={p:.3g} averaged",
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
    """WASH's averaged model over schedule length (each p) and, when the map has several N,
    over N, beside PAPA and naive averaging (seed 0)."""
    df = seed0_runs(runs, task, "map")
    seed0 = int(df["seed"].min()) if not df.empty else 0
    n0 = int(df["n_members"].mode().iloc[0]) if not df.empty else 5
    e0 = int(df["epochs"].max()) if not df.empty else 0
    at_n0, at_e0 = df[df["n_members"] == n0], df[df["epochs"] == e0]
    several_n = at_e0["n_members"].nunique() > 1
    fig, axes = style.figure(2 if several_n else 1)
    axes = list(np.atleast_1d(axes))
    wash = at_n0[at_n0["method"] == "wash"]
    # the epochs panel: WASH lines for the p values run at more than one length
    multi = sorted(float(p) for p, k in wash.groupby("p")["epochs"].nunique().items() if k > 1)
    _map_panel(axes[0], at_n0, "epochs", multi)
    axes[0].set_xticks(sorted(set(at_n0["epochs"])))
    axes[0].set_xlabel("epochs of training (cosine schedule to 0)")
    axes[0].set_title(f"{task}: over schedule length (N = {n0}, seed {seed0})")
    if several_n:
        wash_n = at_e0[at_e0["method"] == "wash"]
        p_n = sorted(
            float(p) for p, k in wash_n.groupby("p")["n_members"].nunique().items() if k > 1
        )
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
