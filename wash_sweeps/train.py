"""`train_and_evaluate(cfg, workdir, *, ...)`: one run, from a config to a results directory.

It is at once the single-run entry (`wash-sweeps train`), the Optuna objective, the W&B sweep
program and the DVC stage. `on_epoch(epoch, metrics)` lets a sweep report and prune (it may
raise; the run's files are complete up to that epoch). A run directory holding a checkpoint is
continued exactly where it stopped with `resume=True`.

    from wash_sweeps import TrainConfig, train_and_evaluate
    summary = train_and_evaluate(TrainConfig.from_preset("mnist1d-fast", method="wash"))

Its steps: `setup` (data, population, method, run directory, trackers), `restore` (a resume),
`train_epoch`, `evaluation.evaluate`, checkpoints and the final summary (`_finish`). What a run
holds is in `run_state`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import seeding
from .averaging import load_into, uniform_soup
from .config import ConfigError, TrainConfig
from .data import augment_batch, batch, epoch_order, load_data, steps_per_epoch
from .errors import RunFailure
from .evaluation import evaluate
from .methods import dp_sgd_bytes_per_step, make_method
from .population import Population
from .results import RunDir, exclusive, provenance, read_json
from .run_state import Placement, Run, SilentRunDir, State, lr_at
from .runtime import ThreadPolicy, check_precision, keep_freed_memory
from .tracking import Tracker, make_tracker

OnEpoch = Callable[[int, dict[str, float]], None]


class StoppedByCaller(Exception):
    """Carries the exception `on_epoch` raised (a pruning or early stop) out of the loop."""


class DivergedError(RunFailure):
    """The training loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: CUDA is not available on this machine; use cpu")
    return torch.device(name)


# --- set-up -----------------------------------------------------------------------------------


def setup(
    cfg: TrainConfig,
    workdir: str | Path | None,
    tracker: Tracker | None,
    placement: Placement,
    resume: bool = False,
) -> Run:
    start = time.perf_counter()  # the run's wall time includes loading the data
    keep_freed_memory()  # no page faults on every large CPU tensor (runtime.keep_freed_memory)
    threads = ThreadPolicy(cfg.threads)
    device = resolve_device(cfg.device)
    check_precision(cfg.precision, device.type)
    data = load_data(cfg, device)
    pop = Population(cfg, data.in_shape, data.n_classes, device, placement.members)
    if placement.shared:
        pop.agree_max = placement.exchange.max_
    per_epoch = steps_per_epoch(data.n_train, cfg.batch_size)
    total = per_epoch * cfg.epochs
    method = make_method(cfg, pop, placement.exchange, total)
    run_dir, tracker = _outputs(cfg, workdir, tracker, placement.writes, resume)
    return Run(
        cfg, data, pop, method, placement, run_dir, tracker, device, per_epoch, total, State(),
        threads, start,
    )  # fmt: skip


def _outputs(
    cfg: TrainConfig,
    workdir: str | Path | None,
    tracker: Tracker | None,
    writes: bool,
    resume: bool,
) -> tuple[RunDir | SilentRunDir, Tracker]:
    """The run directory and the trackers; their do-nothing twins on a process that does not
    write."""
    if tracker is None:
        tracker = make_tracker(cfg, cfg.run_dir(workdir), resume=resume) if writes else Tracker()
    return (RunDir(cfg.run_dir(workdir)) if writes else SilentRunDir()), tracker


def derived(run: Run) -> dict[str, Any]:
    """Quantities computed from the config, logged beside it (never configured by hand)."""
    spec = run.pop.spec
    return {
        "n_params": spec.n_params,
        "n_buffers": spec.n_buffers,
        "n_layers": spec.n_layers,
        "n_train": run.data.n_train,
        "n_val": int(run.data.y_val.numel()),
        "n_test": int(run.data.y_test.numel()),
        # what it takes to rebuild the model without the data (results.load_averaged)
        "in_shape": list(run.data.in_shape),
        "n_classes": run.data.n_classes,
        "steps_per_epoch": run.per_epoch,
        "total_steps": run.total_steps,
        "dp_sgd_bytes_per_step": dp_sgd_bytes_per_step(run.cfg.n_members, spec.n_params),
        **run.method.derived(),
    }


def population_state(run: Run) -> dict[str, Any] | None:
    """Every member's state in member order. Distributed, the rows are gathered through the
    exchange (a collective: every process calls it) and only the writing process gets them."""
    local = run.pop.state_dict()
    if len(local["members"]) == run.cfg.n_members:  # every member is here: nothing to gather
        return local
    ex = run.placement.exchange
    ints = local["int_buffers"]
    params = ex.gather(local["params"])
    buffers = ex.gather(local["buffers"])
    opt_state = {k: ex.gather(v) for k, v in local["opt_state"].items()}
    int_rows = {k: ex.gather(torch.stack([d[k] for d in ints])) for k in ints[0]}
    if params is None:
        return None
    n = params.shape[0]
    return {
        "members": list(range(n)),
        "params": params,
        "buffers": buffers,
        "opt_state": opt_state,
        "opt_steps": local["opt_steps"],
        "int_buffers": [{k: v[i] for k, v in int_rows.items()} for i in range(n)],
        # fp16: every process holds the same scale (overflow flags are agreed, Population)
        **({"scaler": local["scaler"]} if "scaler" in local else {}),
    }


def checkpoint_state(run: Run) -> dict[str, Any] | None:
    population = population_state(run)
    if population is None:
        return None
    return {
        "config": run.cfg.to_dict(),
        "population": population,
        "state": dataclasses.asdict(run.state),
    }


def _select_members(population: dict[str, Any], members: list[int]) -> dict[str, Any]:
    """The rows of `members` from a checkpoint of the whole population (distributed resume)."""
    rows = [list(population["members"]).index(m) for m in members]
    return {
        "members": members,
        "params": population["params"][rows],
        "buffers": population["buffers"][rows],
        "opt_state": {k: v[rows] for k, v in population["opt_state"].items()},
        "opt_steps": population["opt_steps"],
        "int_buffers": [population["int_buffers"][r] for r in rows],
        **({"scaler": population["scaler"]} if "scaler" in population else {}),
    }


def check_config(ckpt: dict[str, Any], cfg: TrainConfig) -> None:
    """A checkpoint continues only a run of the same result-changing config (run-control fields
    such as threads, out_dir or the trackers may differ: the run goes on with the new ones)."""
    try:
        saved = TrainConfig.from_dict(ckpt["config"]).result_config()
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"checkpoint config is not a valid config: {e}") from None
    new = cfg.result_config()
    diff = [k for k in new if saved.get(k) != new[k]]
    if diff:
        raise ConfigError(
            f"checkpoint config differs from this run's in fields: {', '.join(diff)}; "
            "a run continues only with the config it started with (--overwrite starts afresh)"
        )


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    check_config(ckpt, run.cfg)
    population = ckpt["population"]
    if list(population["members"]) != run.pop.members:
        population = _select_members(population, run.pop.members)
    run.pop.load_state_dict(population)
    run.state = State(**ckpt["state"])


# --- training -----------------------------------------------------------------------------------


def member_batches(run: Run, orders: list[torch.Tensor], step_in_epoch: int, step: int):
    out = []
    for row, member in enumerate(run.pop.members):
        x, y = batch(run.data, orders[row], step_in_epoch, run.cfg.batch_size)
        if run.cfg.augment and x.dim() == 4:
            x = augment_batch(
                x, seeding.torch_generator(run.cfg.seed, seeding.AUGMENT, member, step)
            )
        out.append((x, y))
    return out


def train_epoch(run: Run, bar: tqdm | None) -> float:
    """One epoch for every member, the method communicating after each step. Returns the mean
    training loss over members and steps."""
    cfg, st = run.cfg, run.state
    orders = [epoch_order(cfg, run.data.n_train, m, st.epoch, run.device) for m in run.pop.members]
    loss_sum = torch.zeros((), device=run.device)
    start = time.perf_counter()
    for i in range(run.per_epoch):
        lr = lr_at(cfg, st.step, run.total_steps, run.per_epoch)
        losses = run.pop.train_step(member_batches(run, orders, i, st.step), lr, st.step)
        loss_sum += losses.sum()
        # the rate after the scheduler step, as PAPA reads it (get_last_lr after .step())
        next_lr = lr_at(cfg, st.step + 1, run.total_steps, run.per_epoch)
        st.bytes_total += run.method.after_step(st.step, next_lr / cfg.lr)
        st.step += 1
        if run.threads is not None:
            run.threads.tick()  # auto threads follow the machine's load
        if bar is not None:
            bar.update(1)
    st.bytes_total += run.method.after_epoch(st.epoch)
    st.epoch += 1
    st.train_time_s += time.perf_counter() - start
    st.samples += run.per_epoch * cfg.batch_size * run.pop.n_local
    mean_loss = float(loss_sum) / (run.per_epoch * run.pop.n_local)
    if not math.isfinite(mean_loss):
        raise DivergedError(
            f"training loss is {mean_loss} at epoch {st.epoch} "
            f"(method={cfg.method}, lr={cfg.lr}, p={cfg.p})"
        )
    return mean_loss


# --- the run ------------------------------------------------------------------------------------


def _record(run: Run, record: dict[str, Any] | None, on_epoch: OnEpoch | None) -> None:
    if record is None:
        return
    run.run_dir.append_metrics(record)
    run.tracker.log_metrics(record["metrics"], record["step"])
    if record["curves"]:
        run.tracker.log_curves(record["curves"], record["step"])


def _save(run: Run) -> dict[str, Any] | None:
    ckpt = checkpoint_state(run)  # every process: distributed, this gathers the population
    if ckpt is not None:
        run.run_dir.save_checkpoint(ckpt)
    return ckpt


def _finish(run: Run, record: dict[str, Any], population: dict[str, Any]) -> dict[str, Any]:
    cfg = run.cfg
    seeds = {
        "base": cfg.seed,
        "init": [seeding.derive(cfg.seed, seeding.INIT, m) for m in range(cfg.n_members)],
    }
    summary = {
        "config": cfg.to_dict(),
        "derived": derived(run),
        **record["metrics"],
        "curves": record["curves"],
        "provenance": provenance(run.device, seeds),
        "run_dir": str(run.run_dir.path),
    }
    soup = uniform_soup(population["params"], population["buffers"])
    model = load_into(soup, run.pop.new_model())
    torch.save(model.state_dict(), run.run_dir.averaged_path)
    run.run_dir.write_summary(summary)
    run.tracker.log_summary({k: v for k, v in summary.items() if k != "curves"})
    for path in (run.run_dir.config_path, run.run_dir.metrics_path, run.run_dir.summary_path):
        run.tracker.log_artifact(path)
    run.tracker.log_model(run.run_dir.path, run.data.x_test[:2])
    return summary


def train_and_evaluate(
    cfg: TrainConfig,
    workdir: str | Path | None = None,
    *,
    tracker: Tracker | None = None,
    on_epoch: OnEpoch | None = None,
    resume: bool = False,
    overwrite: bool = False,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Train the population of `cfg`, evaluate it, and return the final summary.

    A fresh run refuses a directory holding a finished run or a run of another config
    (ConfigError) unless `overwrite`. `placement`: this process's share of a distributed run
    (see `Placement`); by default the whole population is trained here.
    """
    placement = placement or Placement.local(cfg.n_members)
    if resume and not placement.shared:
        done = _finished_summary(cfg, workdir)
        if done is not None:
            return done  # already finished: nothing to redo, no tracker run reopened
    # one writer per run directory at a time (the other processes of a distributed run write none)
    with exclusive(cfg.run_dir(workdir)) if placement.writes else contextlib.nullcontext():
        if placement.writes and placement.checkpoint is None:
            _claim(cfg, workdir, resume, overwrite)
        return _train(cfg, workdir, tracker, on_epoch, resume, placement)


def _claim(cfg: TrainConfig, workdir: str | Path | None, resume: bool, overwrite: bool) -> None:
    """A fresh run (no checkpoint to continue) may write its directory: see RunDir.claim."""
    run_dir = RunDir(cfg.run_dir(workdir))
    if resume and run_dir.checkpoint_path.exists():
        return  # a resume: check_config decides
    run_dir.claim(cfg.result_config(), overwrite)


def _train(
    cfg: TrainConfig,
    workdir: str | Path | None,
    tracker: Tracker | None,
    on_epoch: OnEpoch | None,
    resume: bool,
    placement: Placement,
) -> dict[str, Any]:
    ckpt = placement.checkpoint
    if ckpt is None and resume and placement.writes:
        ckpt = RunDir(cfg.run_dir(workdir)).load_checkpoint()
    if ckpt is not None:
        check_config(ckpt, cfg)  # before a tracker run is reopened: a refused resume changes none
    run = setup(cfg, workdir, tracker, placement, ckpt is not None)
    status = "FAILED"
    try:  # from here on, the tracker runs end with a status whatever happens
        if ckpt is not None:
            restore(run, ckpt)
        # records after the checkpoint are redone, and so is the final evaluation of a
        # checkpoint at the end (a distributed run re-enters it: all ranks take part);
        # a fresh run starts an empty history
        last = run.state.step - (run.state.epoch >= cfg.epochs) if ckpt is not None else -1
        run.run_dir.truncate_metrics(last)
        quantities = derived(run)
        run.run_dir.write_config(cfg.to_dict(), quantities)
        run.tracker.log_params(
            {**cfg.to_dict(), **{f"derived/{k}": v for k, v in quantities.items()}}
        )
        summary = _loop(run, on_epoch)
        status = "FINISHED"
        return summary
    except StoppedByCaller as stop:
        status = "KILLED"  # pruned or stopped by a sweep: not a failure of the run
        raise stop.__cause__ from None
    finally:
        run.tracker.finish(status)


def _finished_summary(cfg: TrainConfig, workdir: str | Path | None) -> dict[str, Any] | None:
    """The summary of a run directory whose run of this very config has ended (None if it has
    not; a different config goes on to `restore`, which says which fields differ)."""
    summary_path = cfg.run_dir(workdir) / "summary.json"
    if not summary_path.exists():
        return None
    try:
        summary = read_json(summary_path)
        same = TrainConfig.from_dict(summary["config"]).result_config() == cfg.result_config()
    except (KeyError, ValueError, TypeError):  # an older or foreign summary: the checkpoint decides
        return None
    return summary if same and summary.get("train/epoch", -1) >= cfg.epochs else None


def _loop(run: Run, on_epoch: OnEpoch | None) -> dict[str, Any]:
    cfg, st = run.cfg, run.state
    bar = tqdm(
        total=run.total_steps,
        initial=st.step,
        desc=cfg.run_name or cfg.default_run_name,
        unit="step",
        # None: tqdm draws only on a terminal, so logs of batch jobs stay readable
        disable=None if (cfg.progress and run.placement.writes) else True,
        leave=False,
    )
    record: dict[str, Any] | None = None
    final_done = False  # not `record["final"]`: distributed, only the writer holds a record
    ckpt: dict[str, Any] | None = None
    saved_last = False  # the last epoch's checkpoint is the final one: written once
    with bar:
        while st.epoch < cfg.epochs:
            st.train_loss = train_epoch(run, bar)
            last = st.epoch == cfg.epochs
            if st.epoch % cfg.eval_every == 0 or last:
                record = evaluate(run, st.train_loss, final=last)
                final_done = last
                _record(run, record, on_epoch)
                if record is not None:
                    bar.set_postfix(
                        val_avg=f"{record['metrics'].get('val/acc_avg', math.nan):.3f}",
                        val_ens=f"{record['metrics'].get('val/acc_ens', math.nan):.3f}",
                    )
            if cfg.checkpoint_every and (st.epoch % cfg.checkpoint_every == 0 or last):
                saved = _save(run)
                if last:
                    ckpt, saved_last = saved, True
            if on_epoch is not None and record is not None and record["epoch"] == st.epoch:
                try:
                    on_epoch(st.epoch, record["metrics"])
                except Exception as e:
                    raise StoppedByCaller from e
    if not final_done:
        record = evaluate(run, st.train_loss, final=True)
        _record(run, record, None)
    if not saved_last:  # a flag, not `ckpt is None`: the other ranks of a job hold no checkpoint
        ckpt = _save(run)
    if record is None or ckpt is None:  # a process that does not hold the gathered population
        return {}
    return _finish(run, record, ckpt["population"])
