"""`train_and_evaluate(cfg, workdir, tracker)`: one run, from a config to a results directory.

It is at once the single-run entry (`wash-sweeps train`), the Optuna objective, the W&B sweep
program and the DVC stage. `on_epoch(epoch, metrics)` lets a sweep report and prune (it may
raise; the run's files are complete up to that epoch). A run directory holding a checkpoint is
continued exactly where it stopped with `resume=True`.

    from wash_sweeps import TrainConfig, train_and_evaluate
    summary = train_and_evaluate(TrainConfig.from_preset("mnist1d-fast", method="wash"))
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
from .align import align_rows, permutation_spec
from .averaging import greedy_soup, load_into, reestimate_bn, uniform_soup
from .config import ConfigError, TrainConfig
from .data import Data, augment_batch, batch, epoch_order, load_data, steps_per_epoch
from .errors import RunFailure
from .methods import Exchange, LocalExchange, Method, dp_sgd_bytes_per_step, make_method
from .metrics import (
    accuracy,
    barrier,
    barrier_pairs,
    consensus_distance,
    disagreement_and_kl,
    logits_of,
    loss,
    loss_curve,
    mean_pairwise_distance,
    population_predictions,
)
from .population import Population
from .results import RunDir, exclusive, provenance, read_json
from .runtime import ThreadPolicy, check_precision
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


def lr_at(cfg: TrainConfig, step: int, total: int, per_epoch: int) -> float:
    """Learning rate after `step` optimizer steps (schedule per iteration)."""
    warm = cfg.warmup_epochs * per_epoch
    if warm and step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(total - warm, 1)
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.lr_schedule == "step":
        return cfg.lr * (0.1 ** ((t >= 0.5) + (t >= 0.75)))
    return cfg.lr


@dataclasses.dataclass
class State:
    """What changes during a run besides the population (all of it checkpointed)."""

    step: int = 0
    epoch: int = 0  # epochs completed
    bytes_total: int = 0
    bytes_last_epoch: int = 0
    train_time_s: float = 0.0
    samples: int = 0
    evals: int = 0
    train_loss: float = math.nan  # the last epoch's mean training loss (a resumed end reports it)
    eval_time_s: float = 0.0  # seconds spent in evaluations
    wall_time_s: float = 0.0  # seconds from the run's start to its last evaluation (all segments)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Which members this process trains and how it reaches the others. By default
    (`Placement.local`) the whole population is here; a distributed run gives each process a
    slice, the transport between them, and one writing process (see `distributed`)."""

    exchange: Exchange
    members: list[int]
    writes: bool = True  # this process writes the run directory and talks to the trackers
    shared: bool = False  # other processes train the rest: every process goes through each step
    checkpoint: dict[str, Any] | None = None  # a shared resume: read once, sent to every process

    @classmethod
    def local(cls, n_members: int, writes: bool = True) -> Placement:
        return cls(LocalExchange(n_members), list(range(n_members)), writes)


class SilentRunDir:
    """The run directory of a process that does not write one (the other ranks of a distributed
    run), as nanoGPT's rank-0 logging: every write is dropped."""

    def write_config(self, config: dict[str, Any], derived: dict[str, Any]) -> None:
        pass

    def append_metrics(self, record: dict[str, Any]) -> None:
        pass

    def truncate_metrics(self, last_step: int) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass


@dataclasses.dataclass
class Run:
    cfg: TrainConfig
    data: Data
    pop: Population
    method: Method
    placement: Placement
    run_dir: RunDir | SilentRunDir
    tracker: Tracker
    device: torch.device
    per_epoch: int
    total_steps: int
    state: State
    threads: ThreadPolicy | None = None  # None: torch's threads as they are
    clock: float = dataclasses.field(default_factory=time.perf_counter)  # wall time counted up to


# --- set-up -----------------------------------------------------------------------------------


def setup(
    cfg: TrainConfig,
    workdir: str | Path | None,
    tracker: Tracker | None,
    placement: Placement,
    resume: bool = False,
) -> Run:
    start = time.perf_counter()  # the run's wall time includes loading the data
    threads = ThreadPolicy(cfg.threads)
    device = resolve_device(cfg.device)
    check_precision(cfg.precision, device.type)
    data = load_data(cfg, device)
    pop = Population(cfg, data.in_shape, data.n_classes, device, placement.members)
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


# --- evaluation ---------------------------------------------------------------------------------


def _bn_batches(run: Run) -> list[torch.Tensor]:
    """The training inputs on which BN statistics are re-estimated (the first batches, fixed)."""
    cfg, x = run.cfg, run.data.x_train
    n = min(cfg.bn_reestimate_batches, run.per_epoch)
    return [x[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(n)]


def _splits(run: Run) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The evaluated splits: validation (every decision) when it is not empty, and test."""
    data = run.data
    out = {"val": (data.x_val, data.y_val)} if data.y_val.numel() else {}
    out["test"] = (data.x_test, data.y_test)
    return out


def _soup_metrics(run: Run, params: torch.Tensor, buffers: torch.Tensor, spare) -> dict[str, float]:
    bs = run.cfg.eval_batch_size
    model = load_into(uniform_soup(params, buffers), spare)
    out = {}
    for split, (x, y) in _splits(run).items():
        logits = logits_of(model, x, bs)
        out[f"{split}/acc_avg"], out[f"{split}/loss_avg"] = accuracy(logits, y), loss(logits, y)
    if run.pop.has_bn:
        model = reestimate_bn(load_into(uniform_soup(params, buffers), spare), _bn_batches(run))
        for split, (x, y) in _splits(run).items():
            out[f"{split}/acc_avg_bn"] = accuracy(logits_of(model, x, bs), y)
    return out


def _barriers(
    run: Run, params: torch.Tensor, buffers: torch.Tensor, spare, ends: EndLosses, final: bool
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Loss barriers on the test split between member pairs and from each member to the
    average (BN statistics re-estimated at every point of the path when the model has BN).
    The final evaluation measures `barrier_points` points, earlier ones `barrier_points_during`."""
    cfg = run.cfg
    points = cfg.barrier_points if final else min(cfg.barrier_points_during, cfg.barrier_points)
    curve = _curve_fn(run, spare, points)
    curves = _pair_curves(run, params, buffers, spare, points, ends)
    avg = uniform_soup(params, buffers)
    for i in range(params.shape[0]):
        curves[f"avg/{i}"] = curve((params[i], buffers[i]), avg, ends.pair(i, "avg"))
    pair = [barrier(c) for k, c in curves.items() if k.startswith("pair/")]
    to_avg = [barrier(c) for k, c in curves.items() if k.startswith("avg/")]
    metrics = {
        "barrier/mean": sum(pair) / len(pair) if pair else 0.0,
        "barrier/max": max(pair, default=0.0),
        "barrier/member_avg_mean": sum(to_avg) / len(to_avg),
    }
    return metrics, curves


@dataclasses.dataclass
class EndLosses:
    """Test losses (on the barrier's samples) of the members and of the average, when they can
    stand for a curve's end points: computed once per evaluation instead of once per curve.
    Empty when BN statistics are re-estimated along the path (the end points then differ)."""

    members: list[float] = dataclasses.field(default_factory=list)
    avg: float | None = None

    def pair(self, i: int, j: int | str) -> tuple[float, float] | None:
        if not self.members:
            return None
        end = self.avg if j == "avg" else self.members[int(j)]
        return None if end is None else (self.members[i], end)


def _end_losses(run: Run, test_logits: torch.Tensor, params, buffers, spare) -> EndLosses:
    cfg, data = run.cfg, run.data
    if run.pop.has_bn and cfg.barrier_bn_reestimate:
        return EndLosses()
    n = cfg.barrier_samples or len(data.y_test)
    y = data.y_test[:n]
    members = [loss(test_logits[i, :n], y) for i in range(test_logits.shape[0])]
    model = load_into(uniform_soup(params, buffers), spare)
    return EndLosses(members, loss(logits_of(model, data.x_test[:n], cfg.eval_batch_size), y))


def _curve_fn(run: Run, spare, points: int) -> Callable[..., list[float]]:
    """The test-loss curve between two (params, buffers) points, as every barrier measures it."""
    cfg, data = run.cfg, run.data
    n = cfg.barrier_samples or len(data.y_test)
    x, y = data.x_test[:n], data.y_test[:n]
    bn = _bn_batches(run) if run.pop.has_bn and cfg.barrier_bn_reestimate else []

    def curve(a, b, ends: tuple[float, float] | None = None) -> list[float]:
        return loss_curve(spare, a, b, x, y, points, cfg.eval_batch_size, bn, ends)

    return curve


def _pair_curves(
    run: Run,
    params: torch.Tensor,
    buffers: torch.Tensor,
    spare,
    points: int,
    ends: EndLosses | None = None,
) -> dict[str, list[float]]:
    """`pair/i-j`: the curve between members i and j, for the measured pairs."""
    curve = _curve_fn(run, spare, points)
    ends = ends or EndLosses()
    return {
        f"pair/{i}-{j}": curve((params[i], buffers[i]), (params[j], buffers[j]), ends.pair(i, j))
        for i, j in barrier_pairs(params.shape[0], run.cfg.barrier_pairs)
    }


def _member_logits(run: Run) -> dict[str, torch.Tensor | None]:
    """Every member's logits per split, (N, n, C), gathered to the logging process (None
    elsewhere): a collective when distributed."""
    bs, ex = run.cfg.eval_batch_size, run.placement.exchange
    out = {}
    for split, (x, _) in _splits(run).items():
        out[split] = ex.gather(torch.stack([logits_of(m, x, bs) for m in run.pop.models]))
    return out


def evaluate(run: Run, train_loss: float, final: bool = False) -> dict[str, Any] | None:
    """Every metric of docs/method.md at the current step: accuracies and losses on validation
    (`val/`) and test (`test/`); diversity and barriers on test. Returns the record (None on
    processes that do not hold the gathered population)."""
    cfg, st, pop = run.cfg, run.state, run.pop
    ex = run.placement.exchange
    start = time.perf_counter()
    logits = _member_logits(run)
    params, buffers = ex.gather(pop.params), ex.gather(pop.buffers)
    if logits["test"] is None:  # not the logging process
        return None
    spare = pop.new_model()
    m: dict[str, float] = {
        "train/loss": train_loss,
        "train/epoch": st.epoch,
        "train/step": st.step,
        "train/lr": lr_at(cfg, max(st.step - 1, 0), run.total_steps, run.per_epoch),
    }
    for split, (_, y) in _splits(run).items():
        m.update(population_predictions(logits[split], y, split))
    m.update(disagreement_and_kl(logits["test"]))
    m.update(_soup_metrics(run, params, buffers, spare))
    for split in _splits(run):
        m[f"{split}/gap_ens_avg"] = m[f"{split}/acc_ens"] - m[f"{split}/acc_avg"]
    m.update(consensus_distance(params, pop.spec.layer_slices()))
    m["div/pairwise_l2"] = mean_pairwise_distance(params)
    curves: dict[str, list[float]] = {}
    if final or (cfg.barrier_every and st.evals % cfg.barrier_every == 0):
        ends = _end_losses(run, logits["test"], params, buffers, spare)
        bm, curves = _barriers(run, params, buffers, spare, ends, final)
        m.update(bm)
    if final:
        m.update(_greedy(run, params, buffers, spare))
    if final and cfg.align_at_end and params.shape[0] > 1:
        am, aligned_curves = _aligned(run, params, buffers, spare)
        m.update(am)
        curves.update(aligned_curves)
    n_total = cfg.n_members
    m.update(
        {
            "comm/bytes_total": st.bytes_total,
            "comm/bytes_per_member": st.bytes_total / n_total,
            "comm/bytes_per_step": st.bytes_total / max(st.step, 1),
            "comm/dp_sgd_bytes_total": dp_sgd_bytes_per_step(n_total, pop.spec.n_params) * st.step,
            "time/train_s": st.train_time_s,
            "time/samples_per_s": st.samples / max(st.train_time_s, 1e-9),
        }
    )
    st.evals += 1
    now = time.perf_counter()
    st.eval_time_s += now - start
    st.wall_time_s += now - run.clock
    run.clock = now  # the wall time from the run's start, summed over resumed segments
    m["time/eval_s"], m["time/wall_s"] = st.eval_time_s, st.wall_time_s
    return {"step": st.step, "epoch": st.epoch, "final": final, "metrics": m, "curves": curves}


def _greedy(run: Run, params: torch.Tensor, buffers: torch.Tensor, spare) -> dict[str, float]:
    """The greedy soup, chosen on the validation split and reported on test."""
    data, bs = run.data, run.cfg.eval_batch_size
    if data.y_val.numel() == 0:
        return {}

    def val_acc(rows: list[int]) -> float:
        model = load_into(uniform_soup(params, buffers, rows), spare)
        return accuracy(logits_of(model, data.x_val, bs), data.y_val)

    scores = [val_acc([i]) for i in range(params.shape[0])]
    rows, _, _ = greedy_soup(scores, val_acc)
    model = load_into(uniform_soup(params, buffers, rows), spare)
    out: dict[str, float] = {"val/greedy_size": len(rows)}
    for split, (x, y) in _splits(run).items():
        logits = logits_of(model, x, bs)
        out[f"{split}/acc_greedy"], out[f"{split}/loss_greedy"] = (
            accuracy(logits, y),
            loss(logits, y),
        )
    return out


def _aligned(
    run: Run, params: torch.Tensor, buffers: torch.Tensor, spare
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Git Re-Basin: every member's units permuted to match member 0's (weight matching), then
    the uniform soup with BN statistics re-estimated, on both splits; and the loss barrier
    between aligned members (the pairs of `barrier/mean`, test split)."""
    spec = permutation_spec(spare[0])
    params, buffers = align_rows(spec, run.pop.spec, params, buffers, seed=run.cfg.seed)
    model = load_into(uniform_soup(params, buffers), spare)
    if run.pop.has_bn:  # the permuted average's statistics are nobody's: recompute them
        reestimate_bn(model, _bn_batches(run))
    out: dict[str, float] = {}
    for split, (x, y) in _splits(run).items():
        logits = logits_of(model, x, run.cfg.eval_batch_size)
        out[f"{split}/acc_aligned"] = accuracy(logits, y)
        out[f"{split}/loss_aligned"] = loss(logits, y)
    curves = _pair_curves(run, params, buffers, spare, run.cfg.barrier_points)
    pair = [barrier(c) for c in curves.values()]
    out["barrier/aligned_mean"] = sum(pair) / len(pair) if pair else 0.0
    return out, {f"aligned_{k}": c for k, c in curves.items()}


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
