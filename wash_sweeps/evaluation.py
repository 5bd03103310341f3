"""Every metric of one evaluation (`evaluate(run, train_loss, final)`): accuracies and losses on
validation (`val/`) and test (`test/`) of the members, their ensemble and their soups (uniform,
BN re-estimated, greedy, aligned); diversity; loss barriers between members and to the average.
Distributed, the members' rows are gathered to the writing process, which alone measures."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from .align import align_rows, permutation_spec
from .averaging import greedy_soup, load_into, reestimate_bn, uniform_soup
from .methods import dp_sgd_bytes_per_step
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
from .run_state import Run, lr_at


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


def _soup_metrics(
    run: Run, params: torch.Tensor, buffers: torch.Tensor, spare
) -> tuple[dict[str, float], torch.Tensor]:
    """The uniform soup's accuracy and loss on each split, and its test logits (the barrier
    curves to the average reuse them as their end point)."""
    bs = run.cfg.eval_batch_size
    model = load_into(uniform_soup(params, buffers), spare)
    out, test_logits = {}, None
    for split, (x, y) in _splits(run).items():
        logits = logits_of(model, x, bs)
        out[f"{split}/acc_avg"], out[f"{split}/loss_avg"] = accuracy(logits, y), loss(logits, y)
        test_logits = logits  # test is the last split
    if run.pop.has_bn:
        model = reestimate_bn(load_into(uniform_soup(params, buffers), spare), _bn_batches(run))
        for split, (x, y) in _splits(run).items():
            out[f"{split}/acc_avg_bn"] = accuracy(logits_of(model, x, bs), y)
    return out, test_logits


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


def _end_losses(run: Run, member_logits: torch.Tensor, soup_logits: torch.Tensor) -> EndLosses:
    """From the test logits already computed this evaluation: no extra forward pass."""
    cfg, data = run.cfg, run.data
    if run.pop.has_bn and cfg.barrier_bn_reestimate:
        return EndLosses()
    n = cfg.barrier_samples or len(data.y_test)
    y = data.y_test[:n]
    members = [loss(member_logits[i, :n], y) for i in range(member_logits.shape[0])]
    return EndLosses(members, loss(soup_logits[:n], y))


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
    soup, soup_logits = _soup_metrics(run, params, buffers, spare)
    m.update(soup)
    for split in _splits(run):
        m[f"{split}/gap_ens_avg"] = m[f"{split}/acc_ens"] - m[f"{split}/acc_avg"]
    m.update(consensus_distance(params, pop.spec.layer_slices()))
    m["div/pairwise_l2"] = mean_pairwise_distance(params)
    curves: dict[str, list[float]] = {}
    ends = EndLosses()
    if final or (cfg.barrier_every and st.evals % cfg.barrier_every == 0):
        ends = _end_losses(run, logits["test"], soup_logits)
        bm, curves = _barriers(run, params, buffers, spare, ends, final)
        m.update(bm)
    if final:
        m.update(_greedy(run, params, buffers, spare))
    if final and cfg.align_at_end and params.shape[0] > 1:
        am, aligned_curves = _aligned(run, params, buffers, spare, ends)
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
    run: Run, params: torch.Tensor, buffers: torch.Tensor, spare, ends: EndLosses
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Git Re-Basin: every member's units permuted to match member 0's (weight matching), then
    the uniform soup with BN statistics re-estimated, on both splits; and the loss barrier
    between aligned members (the pairs of `barrier/mean`, test split). A permuted member computes
    the same function, so the curves' end points are the members' own losses (`ends`)."""
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
    curves = _pair_curves(run, params, buffers, spare, run.cfg.barrier_points, ends)
    pair = [barrier(c) for c in curves.values()]
    out["barrier/aligned_mean"] = sum(pair) / len(pair) if pair else 0.0
    return out, {f"aligned_{k}": c for k, c in curves.items()}
