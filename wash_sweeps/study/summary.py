"""What a study found, in `study_summary.json`, on the console and in its parent tracker run:
the best trial (or the Pareto front), counts by state, failures, parameter importances."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..results import RunFiles
from ..sweep_spec import SweepSpec
from .recovery import FAIL_REASON

SUMMARY_NAME = "study_summary.json"  # in the study's output directory


def study_summary(study: Any, spec: SweepSpec) -> dict[str, Any]:
    """Best trial (or Pareto front), counts by state, parameter importances."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    out: dict[str, Any] = {
        "study_name": study.study_name,
        "sweep_file": spec.path,
        "objectives": [{"name": m, "goal": g} for m, g in spec.objectives],
        "n_trials": len(trials),
        "states": counts,
        "failures": {
            t.number: t.user_attrs[FAIL_REASON] for t in trials if t.user_attrs.get(FAIL_REASON)
        },
    }
    if done:
        if spec.multi_objective:
            out["pareto_front"] = [_trial_record(t) for t in study.best_trials]
        else:
            out["best_trial"] = _trial_record(study.best_trial)
            out["best_config"] = spec.resolve(study.best_trial.params).to_dict()
    out["importances"] = _importances(study, spec, done)
    return out


def _trial_record(t: Any) -> dict[str, Any]:
    """A chosen trial: its objective values (validation) and, only reported, its test numbers."""
    return {
        "number": t.number,
        "values": t.values,
        "params": t.params,
        "run_dir": t.user_attrs.get("run_dir"),
        "test": _test_numbers(t.user_attrs.get("run_dir")),
    }


def _test_numbers(run_dir: str | None) -> dict[str, float]:
    """The `test/` metrics of a finished trial's run (reported beside the chosen setting; never
    used to choose it). Empty when the run directory or its summary is gone."""
    if not run_dir:
        return {}
    try:
        summary = RunFiles(run_dir).summary() or {}
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in summary.items() if k.startswith("test/") and isinstance(v, float)}


def _importances(study: Any, spec: SweepSpec, done: list[Any]) -> dict[str, Any]:
    import optuna

    if len(done) < 2:
        return {}
    out = {}
    for i, (metric, goal) in enumerate(spec.objectives):
        sign = -1.0 if goal == "maximize" else 1.0  # the evaluator ranks params for low targets
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                imp = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i, s=sign: s * t.values[i]
                )
            out[metric] = {k: float(v) for k, v in imp.items()}
        except (RuntimeError, ValueError) as e:  # e.g. one parameter value only
            out[metric] = {"unavailable": str(e).splitlines()[0]}
    return out


def study_params(
    spec: SweepSpec, study: Any, args: argparse.Namespace, fixed: dict[str, Any]
) -> dict[str, Any]:
    """The parent run's params: every result-changing field the trials share (the sweep's
    constants and --set), and how the study samples, prunes and what it optimises."""
    swept = {p.name for p in spec.params}
    cfg = TrainConfig.from_dict({**spec.base, **fixed})
    shared = {k: v for k, v in cfg.result_config().items() if k not in swept}
    return {
        **shared,
        "study/sweep_file": spec.path,
        "study/method": spec.method,
        "study/objectives": [f"{m} ({g})" for m, g in spec.objectives],
        "study/swept": sorted(swept),
        "study/sampler": type(study.sampler).__name__,
        "study/pruner": type(study.pruner).__name__,
    }


def best_params(summary: dict[str, Any]) -> dict[str, Any]:
    """The best trial's number and parameters (categorical ones too: `best/method=wash`);
    none for a multi-objective study (its Pareto front is in study_summary.json)."""
    best = summary.get("best_trial")
    if not best:
        return {}
    return {"best/trial": best["number"], **{f"best/{k}": v for k, v in best["params"].items()}}


def flat_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary as the parent run's metrics (`study/states/COMPLETE`, `study/best_value`...)."""
    flat: dict[str, Any] = {f"study/states/{k}": v for k, v in summary["states"].items()}
    best = summary.get("best_trial")
    if best:
        flat["study/best_trial"] = best["number"]
        flat["study/best_value"] = best["values"][0]
        flat.update({f"study/best_{k}": v for k, v in best.get("test", {}).items()})
    if "pareto_front" in summary:
        flat["study/pareto_size"] = len(summary["pareto_front"])
    for metric, imp in summary["importances"].items():
        flat.update(
            {f"study/importance/{metric}/{k}": v for k, v in imp.items() if isinstance(v, float)}
        )
    return flat


def describe(summary: dict[str, Any], out: Path) -> str:
    """The summary for the console: states, the best trial or the Pareto front, where to look."""
    lines = [f"trials by state: {summary['states']}"]
    if "best_trial" in summary:
        lines += _describe_best(summary)
    if "pareto_front" in summary:
        lines.append(f"Pareto front: {len(summary['pareto_front'])} trials")
        for r in summary["pareto_front"]:
            lines.append(f"  trial {r['number']}: values {r['values']} params {r['params']}")
    lines.append(f"summary: {out / SUMMARY_NAME}; figures: wash-sweeps study-report --out {out}")
    return "\n".join(lines)


def _describe_best(summary: dict[str, Any]) -> list[str]:
    b = summary["best_trial"]
    lines = [
        f"best trial {b['number']}: {summary['objectives'][0]['name']}={b['values'][0]:.4f} "
        f"params {b['params']}  ({b['run_dir']})"
    ]
    test = b.get("test", {})
    if test:
        lines.append(
            "  its test numbers (reported, not used to choose): "
            + "  ".join(f"{k}={test[k]:.4f}" for k in ("test/acc_avg", "test/acc_ens") if k in test)
        )
    return lines
