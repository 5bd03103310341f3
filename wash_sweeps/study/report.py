"""`wash-sweeps study-report`: Optuna's figures of a study as PNGs (matplotlib, offline):
history, importances, contour of p x N, Pareto front, intermediate values.

    wash-sweeps study-report --out runs/studies/wash-p
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..redact import STORAGE_ENV
from .storage import JOURNAL_NAME, open_storage


def report(args: argparse.Namespace) -> int:
    """Draw the figures of the study in `--storage` (or `--out`'s journal) into `--out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study, out = _load_study(args)
    objectives = study.user_attrs.get("objectives") or [["value", "maximize"]]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, draw in _figures(study, objectives):
        try:
            ax = draw()
        except (ValueError, RuntimeError) as e:
            print(f"skipped {fname}: {str(e).splitlines()[0]}")
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.savefig(out / fname, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(out / fname)
    for p in written:
        print(p)
    return 0


def _load_study(args: argparse.Namespace) -> tuple[Any, Path]:
    """The study to draw and the directory the figures go to; one line when either is missing."""
    import optuna

    given = args.storage or os.environ.get(STORAGE_ENV)
    if not args.out and not given:
        raise ConfigError("study-report: give --out (the study's directory) or --storage")
    out = Path(args.out or ".")
    url = given or str(out / JOURNAL_NAME)
    if "://" not in url and not Path(url).is_file():
        raise ConfigError(f"study-report: storage file {url!r} does not exist")
    storage = open_storage(url)
    names = optuna.get_all_study_names(storage)
    name = args.study_name or (names[0] if len(names) == 1 else None)
    if name not in names:
        raise ConfigError(f"study-report: --study-name is one of {names}")
    return optuna.load_study(study_name=name, storage=storage), out


def _figures(study: Any, objectives: list[list[str]]) -> list[tuple[str, Any]]:
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as vis

    multi = len(objectives) > 1
    name = objectives[0][0]
    target = (lambda t: t.values[0]) if multi else None
    figs = [
        (
            "optimization_history.png",
            lambda: vis.plot_optimization_history(study, target=target, target_name=name),
        ),
        (
            "param_importances.png",
            lambda: vis.plot_param_importances(study, target=target, target_name=name),
        ),
    ]
    both = [t.params for t in study.get_trials(states=(TrialState.COMPLETE,))]
    both = [q for q in both if "p" in q and "n_members" in q]  # p is often WASH-only
    if all(len({q[k] for q in both}) >= 2 for k in ("p", "n_members")):
        figs.append(
            (
                "contour_p_n_members.png",
                lambda: vis.plot_contour(
                    study, params=["p", "n_members"], target=target, target_name=name
                ),
            )
        )
    if multi:
        figs.append(
            (
                "pareto_front.png",
                lambda: vis.plot_pareto_front(study, target_names=[o[0] for o in objectives]),
            )
        )
    elif any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        figs.append(("intermediate_values.png", lambda: vis.plot_intermediate_values(study)))
    return figs
