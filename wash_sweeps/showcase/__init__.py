"""`wash-sweeps showcase`: the fair comparison of docs/results (sweeps/showcase.yaml).

wash-sweeps showcase tune sweeps/showcase.yaml --task digits   # the task's tuning studies
wash-sweeps showcase plan sweeps/showcase.yaml                 # outputs/showcase/grid.yaml
wash-sweeps grid outputs/showcase/grid.yaml --out outputs/showcase/runs
python -m wash_sweeps.analysis.showcase --spec sweeps/showcase.yaml --out docs/results
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import say
from ..errors import RunFailure
from .plan import write_plan
from .spec import load_showcase
from .tune import tune_task


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("step", choices=["tune", "plan"], help="tune: the studies; plan: the runs")
    p.add_argument("spec", help="the showcase file (sweeps/showcase.yaml)")
    p.add_argument("--task", action="append", help="tune only this task (repeatable)")
    p.add_argument("--out", default="outputs/showcase", help="the showcase's output directory")


def run(command: str, args: argparse.Namespace) -> int:
    spec, out = load_showcase(args.spec), Path(args.out)
    if args.step == "plan":
        path, n = write_plan(spec, out)
        say(f"showcase: {n} runs in {path}")
        return 0
    tasks = [spec.task(t) for t in args.task] if args.task else list(spec.tasks.values())
    failed = [f"{t.name}/{m}" for t in tasks for m in tune_task(spec, t, out)]
    if failed:
        raise RunFailure(f"tuning failed for {', '.join(failed)} (see the study output above)")
    return 0
