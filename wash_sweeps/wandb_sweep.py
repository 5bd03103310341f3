"""W&B sweeps from a sweep file: `wash-sweeps wandb-sweep SWEEP_FILE --count K [--online]`.

Offline (the default; no account, no network): a local controller on W&B's own sweep engine,
the `sweeps` package. `sweeps.next_run` proposes each run (grid / random / bayes) from the runs
so far, `sweeps.stop_runs` applies hyperband early termination after every epoch, the run cap
(`--count`, else the file's `run_cap`) is enforced here, and a grid stops when exhausted. Each run
is `train_and_evaluate` logged as an offline W&B run (group = the sweep's name) under
`<out>/runs/<run>/wandb/`; sync them later with `wandb sync <out>/runs/*/wandb/offline-run-*`.
The controller keeps `<out>/sweep_runs.jsonl` (one record per ended run), so the same command
continues an interrupted sweep.

    wash-sweeps wandb-sweep sweeps/method_grid.yaml      # -> runs/wandb-sweeps/method-grid/
    wash-sweeps wandb-sweep sweeps/wash_p.yaml --count 20
    wash-sweeps wandb-sweep sweeps/wash_p.yaml --count 8 --nproc-per-trial 4   # torchrun runs

Online (WANDB_API_KEY set): `--online` creates the sweep on W&B and runs `wandb agent` here for
`--count` runs; it prints the `wandb agent ENTITY/PROJECT/ID` command to start agents on other
machines (from a checkout of this repository, with the same environment). The agent runs
`python -m wash_sweeps wandb-sweep --agent-run SWEEP_FILE key=value ...` for each proposal.

W&B has no conditional parameters: its agent samples every parameter and the trial drops the
values that do not apply (`p` when the method is not WASH, ...); the offline controller skips a
proposal whose resolved config repeats an earlier run's (recorded as a duplicate, off the cap).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig, check_field, with_tracker
from .config_cli import add_nproc_argument, add_set_argument, parse_overrides
from .console import say
from .results import iter_jsonl, write_json
from .sweep_spec import SweepSpec, load_spec
from .tracking import shared_store

RECORDS = "sweep_runs.jsonl"


class StopRun(Exception):
    """Raised from the epoch callback when hyperband stops the run."""


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_file", help="a sweep file (see sweeps/)")
    p.add_argument("--count", type=int, default=None, help="run cap (default: the file's run_cap)")
    p.add_argument("--online", action="store_true", help="create the sweep on W&B (needs a key)")
    p.add_argument("--project", default=None, help="W&B project (default: the config's project)")
    p.add_argument("--entity", default=None, help="W&B entity (online)")
    p.add_argument(
        "--out", default=None, help="output dir (default OUT_DIR/wandb-sweeps/NAME; out_dir: runs)"
    )
    add_set_argument(p, "fix a config field for every run (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of random/bayes proposals (offline)")
    add_nproc_argument(p)
    p.add_argument("--agent-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("assignments", nargs="*", help=argparse.SUPPRESS)


def run(command: str, args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    if args.project:
        overrides["project"] = args.project
    spec = load_spec(args.sweep_file, overrides)
    root = TrainConfig.from_dict(spec.base)  # out_dir: the output root of the sweep's runs
    out = Path(args.out or Path(root.out_dir) / "wandb-sweeps" / spec.name)
    # its runs keep the MLflow store of that root, beside the root's plain runs
    spec = spec.with_overrides(shared_store(root))
    if args.agent_run:
        return agent_run(spec, out, args.assignments, args.nproc_per_trial)
    if args.online:
        return online_sweep(spec, args)
    records = offline_sweep(spec, out, args.count, seed=args.seed, nproc=args.nproc_per_trial)
    print(_describe(spec, records, out))
    return 0


# --- offline controller -------------------------------------------------------------------------


def offline_sweep(
    spec: SweepSpec, out: Path, count: int | None, seed: int = 0, nproc: int = 1
) -> list[dict[str, Any]]:
    """Run the sweep locally until the cap (or the end of the grid); return every run record.
    `nproc` > 1: each run is a torchrun job of that many processes."""
    import numpy as np

    import sweeps

    cap = count if count is not None else spec.run_cap
    if cap is None and spec.method != "grid":
        raise ConfigError(f"{spec.path}: a {spec.method} sweep needs --count K (or run_cap)")
    config = spec.wandb_config()
    out.mkdir(parents=True, exist_ok=True)
    records = list(iter_jsonl(out / RECORDS))  # runs of an earlier, interrupted invocation
    runs = [_sweep_run(r) for r in records]
    while cap is None or _trained(records) < cap:
        # `sweeps` draws proposals from Python's and numpy's global generators, which training
        # re-seeds: seed them per proposal, so proposal k is also the same in a resumed sweep
        k = (seed * 1_000_003 + len(records)) % 2**32
        random.seed(k)
        np.random.seed(k)
        proposal = sweeps.next_run(config, runs)
        if proposal is None:  # a grid is exhausted
            break
        values = {k: v["value"] for k, v in proposal.config.items()}
        record = _run_one(spec, out, config, runs, values, len(records), records, nproc)
        records.append(record)
        runs.append(_sweep_run(record))
        with (out / RECORDS).open("a") as f:
            f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    write_json(out / "sweep_summary.json", _summary(spec, records))
    return records


def _trained(records: list[dict[str, Any]]) -> int:
    return sum(1 for r in records if r["state"] != "duplicate")


def _sweep_run(record: dict[str, Any]) -> Any:
    from sweeps import RunState, SweepRun

    return SweepRun(
        name=record["name"],
        state=RunState.failed if record["state"] == "failed" else RunState.finished,
        config={k: {"value": v} for k, v in record["proposal"].items()},
        history=record["history"],
        summary_metrics=record["summary"],
        stopped=record["state"] == "stopped",
    )


def _key(spec: SweepSpec, values: dict[str, Any]) -> str:
    active = spec.active_params({k: v for k, v in values.items() if k in _swept(spec)})
    return json.dumps(active, sort_keys=True, default=str)


def _swept(spec: SweepSpec) -> set[str]:
    return {p.name for p in spec.params}


def _run_one(
    spec: SweepSpec,
    out: Path,
    config: dict[str, Any],
    runs: list[Any],
    values: dict[str, Any],
    index: int,
    records: list[dict[str, Any]],
    nproc: int = 1,
) -> dict[str, Any]:
    """Train one proposal (or skip it as a duplicate); return its record."""
    from sweeps import RunState, SweepRun

    from .errors import RunFailure
    from .launch import run_one

    name = f"run-{index}"
    key = _key(spec, values)
    record: dict[str, Any] = {"name": name, "proposal": values, "key": key, "history": []}
    earlier = next((r for r in records if r["key"] == key and r["state"] != "duplicate"), None)
    if earlier is not None:  # an inactive conditional parameter changed: same config
        say(f"[{spec.name}] {name}: same config as {earlier['name']}, skipped")
        return {**record, "state": "duplicate", "duplicate_of": earlier["name"], "summary": {}}
    run_dir = out / "runs" / name
    current = SweepRun(name=name, state=RunState.running, config=config, history=[])
    start = time.perf_counter()
    state, summary, note = "failed", {}, ""
    try:
        cfg = spec.resolve({k: v for k, v in values.items() if k in _swept(spec)})
        cfg = _sweep_run_config(spec, cfg, out, name, wandb_mode="offline")
        watch = _watch(spec, config, runs, current)
        summary = run_one(cfg, run_dir, nproc=nproc, on_epoch=watch)
        state = "finished"
    except StopRun as e:
        state, note = "stopped", str(e)
    except (ConfigError, RunFailure, ValueError) as e:  # a NaN loss, a failed job, ...
        note = f"{type(e).__name__}: {e}"
    last = current.history[-1] if current.history else {}
    record.update(
        state=state,
        note=note,
        run_dir=str(run_dir),
        history=current.history,
        summary={m: summary.get(m, last.get(m)) for m, _ in spec.objectives},
        seconds=round(time.perf_counter() - start, 2),
    )
    value = record["summary"].get(spec.metric)
    say(
        f"[{spec.name}] {name} {state} {spec.metric}={value} {note} "
        f"{ {k: values[k] for k in _swept(spec) if k in values} } {record['seconds']} s"
    )
    return record


def _sweep_run_config(
    spec: SweepSpec, cfg: TrainConfig, out: Path, name: str, wandb_mode: str
) -> TrainConfig:
    """A sweep run's config: logged to W&B (beside the trackers it names), in the sweep's group,
    written to `<out>/runs/<name>`."""
    return cfg.replace(
        track=with_tracker(cfg, "wandb"),
        wandb_mode=wandb_mode,
        group=spec.name,
        job_type="sweep",
        run_name=name,
        out_dir=str(out / "runs"),
        progress=False,
    )


def _watch(spec: SweepSpec, config: dict[str, Any], runs: list[Any], current: Any):
    """The epoch callback: feed the run's history to hyperband, stop the run if it says so."""
    import sweeps

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        current.history.append({"epoch": epoch, **{m: metrics[m] for m, _ in spec.objectives}})
        if not spec.early_terminate:
            return
        stopped = sweeps.stop_runs(config, [*runs, current])
        if any(r.name == current.name for r in stopped):
            value = metrics[spec.metric]
            raise StopRun(f"hyperband stopped it at epoch {epoch} ({spec.metric}={value:.4g})")

    return on_epoch


def _summary(spec: SweepSpec, records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [
        r for r in records if r["state"] == "finished" and r["summary"].get(spec.metric) is not None
    ]
    pick = max if spec.goal == "maximize" else min
    best = pick(ok, key=lambda r: r["summary"][spec.metric]) if ok else None
    states: dict[str, int] = {}
    for r in records:
        states[r["state"]] = states.get(r["state"], 0) + 1
    return {
        "sweep": spec.name,
        "sweep_file": spec.path,
        "method": spec.method,
        "metric": {"name": spec.metric, "goal": spec.goal},
        "states": states,
        "best_run": best,
        "runs": records,
    }


def _describe(spec: SweepSpec, records: list[dict[str, Any]], out: Path) -> str:
    s = _summary(spec, records)
    lines = [f"sweep {spec.name!r}: runs by state {s['states']}"]
    if s["best_run"]:
        b = s["best_run"]
        lines.append(
            f"best {b['name']}: {spec.metric}={b['summary'][spec.metric]:.4f} {b['proposal']}"
        )
    lines.append(
        f"summary: {out / 'sweep_summary.json'}; "
        f"sync later: wandb sync {out}/runs/*/wandb/offline-run-*"
    )
    return "\n".join(lines)


# --- online -------------------------------------------------------------------------------------


def online_sweep(spec: SweepSpec, args: argparse.Namespace) -> int:
    if not os.environ.get("WANDB_API_KEY"):
        raise ConfigError(
            "wandb-sweep --online needs WANDB_API_KEY (an account on wandb.ai); "
            "without one, drop --online: the offline controller runs the same sweep locally"
        )
    import wandb

    config = spec.wandb_config()
    config["command"] = [
        "${env}", "${interpreter}", "-m", "wash_sweeps", "wandb-sweep", "--agent-run",
        f"--nproc-per-trial={args.nproc_per_trial}",
        *[f"--set={k}={v}" for k, v in parse_overrides(args.overrides).items()],
        spec.path, "${args_no_hyphens}",  # positionals together: argparse takes them in one go
    ]  # fmt: skip
    project = args.project or spec.resolve({}).project
    sweep_id = wandb.sweep(config, project=project, entity=args.entity or None)
    entity = args.entity or wandb.Api().default_entity
    print(
        "sweep created; on other machines (repository root): "
        f"wandb agent {entity}/{project}/{sweep_id}"
    )
    cmd = [shutil.which("wandb") or "wandb", "agent", f"{entity}/{project}/{sweep_id}"]
    if args.count:
        cmd[2:2] = ["--count", str(args.count)]
    return subprocess.call(cmd)


def agent_run(spec: SweepSpec, out: Path, assignments: list[str], nproc: int = 1) -> int:
    """One run proposed by a W&B agent (`key=value` arguments); logs online to the sweep.
    `nproc` > 1: a torchrun job, whose rank 0 joins the agent's run (WANDB_RUN_ID is inherited)."""
    from .launch import run_one

    values = {}
    for a in assignments:
        if "=" not in a:
            raise ConfigError(f"--agent-run: expected key=value, got {a!r}")
        k, v = a.split("=", 1)
        if k in _swept(spec):  # the agent also passes the constants; the spec holds them
            values[k] = check_field(k, v)
        elif k not in spec.base:
            raise ConfigError(f"--agent-run: {k!r} is not a parameter of {spec.path}")
    name = os.environ.get("WANDB_RUN_ID", "") or f"agent-{os.getpid()}"
    mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    cfg = _sweep_run_config(spec, spec.resolve(values), out, name, wandb_mode=mode)
    summary = run_one(cfg, cfg.run_dir(), nproc=nproc)
    print(f"{spec.metric}={summary[spec.metric]:.4f} run dir {summary['run_dir']}")
    return 0
