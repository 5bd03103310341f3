"""`wash-sweeps demo`: the paper's three claims, seen (or refuted) on one seed in under 2 minutes.

Independent training, PAPA and WASH on the `demo` preset (scikit-learn digits, N = 5, a short
cosine schedule), each with its setting chosen on validation by the showcase's tuning studies
(docs/LOG.md, 2026-12-01, "the demo"), two runs side by side. It prints one table in percent,
one sentence on what the numbers say and what they cannot, and the path of one figure.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .console import say
from .errors import RunFailure
from .results import RunFiles

# each method's knobs, chosen on validation by the showcase's digits studies (tuning seed 100,
# 30 epochs); checked at the demo's 15 epochs over seeds 0-2 (docs/LOG.md)
# (rounded to two digits: p 0.0534 -> 0.053, PAPA's rate 0.0360 -> 0.036)
SETTINGS: dict[str, dict[str, Any]] = {
    "independent": {},
    "papa": {"papa_rate": 0.036, "papa_every": 1},
    "wash": {
        "p": 0.053,
        "layer_schedule": "uniform",
        "shuffle_optimizer_state": True,
        "shuffle_until": 1.0,
    },
}
NOISE = 0.01  # one seed: differences under a point are not resolved (docs/results: intervals)


def demo_configs(args: argparse.Namespace) -> list[TrainConfig]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = []
    for method in methods:
        overrides = {**SETTINGS.get(method, {}), "method": method, "seed": args.seed}
        overrides |= {"out_dir": args.out_dir, "threads": 1, "progress": False}
        if args.epochs:
            overrides["epochs"] = args.epochs
        out.append(TrainConfig.from_preset("demo", **overrides))
    return out


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    head = (
        f"{'method':<12} {'members':>8} {'ensemble':>9} {'averaged':>9} {'greedy':>7} "
        f"{'MB sent':>9} {'barrier':>8}"
    )
    lines = ["test accuracy in % (settings chosen on validation; one seed)", head]
    for method, s in rows:
        lines.append(
            f"{method:<12} {100 * s['test/acc_member_mean']:8.1f} {100 * s['test/acc_ens']:9.1f} "
            f"{100 * s['test/acc_avg']:9.1f} {100 * s.get('test/acc_greedy', math.nan):7.1f} "
            f"{s['comm/bytes_total'] / 1e6:9.2f} {s.get('barrier/mean', math.nan):8.3f}"
        )
    return "\n".join(lines)


def _close(a: float, b: float) -> str:
    d = (a - b) * 100
    return (
        "within a point of"
        if abs(a - b) < NOISE
        else f"{abs(d):.1f} points {'above' if d > 0 else 'below'}"
    )


def meaning(rows: dict[str, dict[str, Any]]) -> str:
    """One sentence per claim from the numbers, and what one seed cannot show."""
    parts = []
    ind, papa, wash = rows.get("independent"), rows.get("papa"), rows.get("wash")
    if ind:
        fails = ind["test/acc_ens"] - ind["test/acc_avg"] > 5 * NOISE
        parts.append(
            f"Naive averaging {'fails' if fails else 'does not fail here'}: the average of "
            f"independent members gets {100 * ind['test/acc_avg']:.1f} % against their "
            f"ensemble's {100 * ind['test/acc_ens']:.1f} %."
        )
    if wash and papa:
        parts.append(
            f"WASH's averaged model is {_close(wash['test/acc_avg'], wash['test/acc_ens'])} its "
            f"ensemble and {_close(wash['test/acc_avg'], papa['test/acc_avg'])} PAPA's average, "
            f"sending {wash['comm/bytes_total'] / max(papa['comm/bytes_total'], 1):.0%} of "
            "PAPA's bytes."
        )
    parts.append(
        "One seed on a small task: differences under about a point are noise, and nothing here "
        "tests scale; docs/results/report.md has 5 fresh seeds per method with paired intervals."
    )
    return " ".join(parts)


def figure(rows: list[tuple[str, dict[str, Any]]], out: Path) -> Path:
    from .analysis import style

    fig, (acc, mb) = style.figure(2)
    keys = ("test/acc_member_mean", "test/acc_ens", "test/acc_avg")
    width = 0.8 / len(keys)
    for i, (method, s) in enumerate(rows):
        for j, key in enumerate(keys):
            v = 100 * s[key]
            acc.bar(
                i + (j - 1) * width,
                v,
                width,
                color=style.color(method),
                alpha=0.45 + 0.27 * j,
                edgecolor="black",
            )
            acc.text(i + (j - 1) * width, v + 1, f"{v:.1f}", ha="center", fontsize=7)
        sent = s["comm/bytes_total"] / 1e6
        mb.bar(i, sent, color=style.color(method))
        mb.text(i, sent, f"{sent:.2f} MB", ha="center", va="bottom", fontsize=8)
    names = [style.label(m).split(" (")[0] for m, _ in rows]
    acc.set_xticks(range(len(rows)), names)
    acc.set_ylim(0, 105)
    acc.set_ylabel("test accuracy (%)")
    acc.set_title("members (light) / ensemble / averaged model (dark)")
    mb.set_xticks(range(len(rows)), names)
    mb.set_ylabel("MB sent by the population during training")
    mb.set_title("communication")
    return style.save(fig, out / "demo")[0]


def run_demo(args: argparse.Namespace) -> int:
    from .grid import run_all

    configs = demo_configs(args)
    cfg0 = configs[0]
    say(
        f"demo: {', '.join(c.method for c in configs)} on {cfg0.dataset}, N={cfg0.n_members}, "
        f"{cfg0.epochs} epochs, seed {args.seed}, {args.jobs} at a time"
    )
    failed = run_all(configs, args.jobs)
    if failed:
        raise RunFailure(f"demo: {'; '.join(failed)}")
    rows = [(c.method, RunFiles(c.run_dir()).summary() or {}) for c in configs]
    say("\n" + table(rows))
    say("\n" + meaning(dict(rows)))
    say(f"\nfigure: {figure(rows, Path(args.out_dir))}")
    say(f"run directories: {args.out_dir}/ (config.json, metrics.jsonl, summary.json)")
    return 0
