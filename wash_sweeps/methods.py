"""The communication methods (independent, wash, papa, papa_all, papa2, dart) behind one small
interface.

A method acts on the population after every optimizer step and every epoch and returns the exact
number of bytes a distributed implementation must send. It never touches tensors of other
processes itself: it goes through an *exchange* (the transport). `LocalExchange` holds every
member in this process; `wash_sweeps.distributed` provides one over torch.distributed with the
same four operations, so the same method code runs both ways.

Byte accounting (docs/method.md), all totals over the whole population:
- WASH: values that change owner (selected coordinates with s(i) != i) x element size, for the
  weights and for every tensor shuffled along (optimizer state, buffers). Indices and
  permutations cost nothing: every process draws them from the shared (seed, step) generator.
- PAPA / PAPA-all / DART: a ring all-reduce of the full state (parameters + float buffers)
  moves 2 (N - 1) / N * d values per member, 2 (N - 1) d in all.
- PAPA-2: new member k is the mean of members a_k and b_k; it receives the full state of each
  of the two it is not itself: d values per such row, summed over the N new members.
- Data-parallel SGD (the reference line): the same all-reduce of the gradient every step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from . import seeding
from .config import TrainConfig
from .population import Population
from .runtime import Prefetcher
from .shuffle import Segment, ShufflePlan, apply_plan, draw_plan, expected_fraction, scale_segments


def allreduce_values(n_members: int, d: int) -> int:
    """Values a ring all-reduce of d values moves, summed over the N members."""
    return 2 * (n_members - 1) * d


class Exchange(Protocol):
    """The transport: how rows held by different processes are combined."""

    n_members: int

    def permute_(self, tensors: Sequence[torch.Tensor], plan: ShufflePlan) -> int:
        """Apply `plan` to each (n_local, P) tensor in place; return the values sent."""

    def mean(self, local: torch.Tensor) -> torch.Tensor:
        """The (P,) mean over all N members of a (n_local, P) tensor, on every process."""

    def gather(self, local: torch.Tensor) -> torch.Tensor | None:
        """All N rows (N, ...) stacked in member order (on the logging process; None elsewhere)."""

    def rows_from(self, local: torch.Tensor, sources: Sequence[int]) -> torch.Tensor:
        """(n_local, P): local row r becomes a copy of member sources[m]'s row, m the member of
        row r (`sources` has one entry per member, the same on every process)."""

    def max_(self, flag: torch.Tensor) -> None:
        """`flag` becomes its elementwise maximum over every process, in place."""

    def prepare(self, plan: ShufflePlan) -> None:
        """Compute ahead (on Wash's prefetch thread) what `permute_` derives from `plan` alone."""


class LocalExchange:
    """Every member is in this process: the operations are plain tensor ops."""

    def __init__(self, n_members: int):
        self.n_members = n_members

    def prepare(self, plan: ShufflePlan) -> None:
        """Nothing: in one process a plan is applied as drawn."""

    def permute_(self, tensors: Sequence[torch.Tensor], plan: ShufflePlan) -> int:
        plan = plan.to(tensors[0].device) if tensors else plan
        for t in tensors:
            apply_plan(t, plan)
        return plan.n_moved() * len(tensors) if plan.n_selected else 0

    def mean(self, local: torch.Tensor) -> torch.Tensor:
        return local.mean(0)

    def gather(self, local: torch.Tensor) -> torch.Tensor | None:
        return local

    def rows_from(self, local: torch.Tensor, sources: Sequence[int]) -> torch.Tensor:
        return local[torch.as_tensor(list(sources), device=local.device)]

    def max_(self, flag: torch.Tensor) -> None:
        return None  # one process: its flag is everyone's


class Method:
    """No communication (`independent`); the base of the others."""

    name = "independent"

    def __init__(self, cfg: TrainConfig, pop: Population, exchange: Exchange, total_steps: int):
        self.cfg, self.pop, self.exchange, self.total_steps = cfg, pop, exchange, total_steps
        self.steps_per_epoch = max(total_steps // cfg.epochs, 1)
        self.elem_size = pop.params.element_size()

    def after_step(self, step: int, lr_ratio: float) -> int:
        """Called after optimizer step `step` (0-based, counted over the run) and the scheduler
        step that follows it; `lr_ratio` = lr_{step+1} / lr_0, the rate the scheduler has just
        set. Returns bytes sent."""
        return 0

    def after_epoch(self, epoch: int) -> int:
        """Called after epoch `epoch` (0-based); returns bytes sent."""
        return 0

    def derived(self) -> dict[str, float]:
        """Derived quantities logged with the config (never configured by hand)."""
        return {}


class Wash(Method):
    name = "wash"

    PREFETCH_DEPTH = 2  # shuffle steps drawn ahead

    def __init__(
        self,
        cfg: TrainConfig,
        pop: Population,
        exchange: Exchange,
        total_steps: int,
        prefetch: bool | None = None,
    ):
        super().__init__(cfg, pop, exchange, total_steps)
        self.segments = pop.spec.segments(cfg.p, cfg.layer_schedule)
        self.buffer_segments = pop.spec.buffer_segments(cfg.p, cfg.layer_schedule)
        self.last_stop = math.ceil(cfg.shuffle_until * total_steps)  # no shuffle at steps >= this
        # on a GPU the host-side draw would leave the device idle, and in a distributed run
        # working out the route of the values would hold up the exchange: draw and route ahead
        # on a thread (plans are pure functions of (seed, step)). In one process on a CPU the
        # thread would compete with the step's own threads, so by default not there.
        if prefetch is None:
            prefetch = pop.device.type == "cuda" or not isinstance(exchange, LocalExchange)
        self.prefetcher = Prefetcher(self._draw, "wash-plans") if prefetch else None

    def p_factor(self, step: int) -> float:
        """The p schedule over training: 1 throughout (constant), or decayed to 0 at the end."""
        t = step / max(self.total_steps, 1)
        if self.cfg.p_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        if self.cfg.p_schedule == "linear":
            return 1.0 - t
        return 1.0

    def shuffles_at(self, step: int) -> bool:
        return (step + 1) % self.cfg.shuffle_every == 0 and step < self.last_stop

    def upcoming(self, step: int, depth: int) -> list[int]:
        """The next `depth` shuffle steps after `step` (fewer near the end of shuffling)."""
        every = self.cfg.shuffle_every
        first = ((step + 1) // every + 1) * every - 1
        return [s for s in range(first, first + depth * every, every) if s < self.last_stop]

    def plans(self, step: int) -> tuple[ShufflePlan | None, ShufflePlan | None]:
        """The plans of step `step` (None where nothing is shuffled): the same on every process,
        whether drawn now or ahead by the prefetcher."""
        if not self.shuffles_at(step):
            return None, None
        if self.prefetcher is None:
            return self._draw(step)
        return self.prefetcher.get(step, self.upcoming(step, self.PREFETCH_DEPTH))

    def _draw(self, step: int) -> tuple[ShufflePlan, ShufflePlan | None]:
        """Draw step `step`'s plans from the (seed, step) generator (on the prefetch thread or
        here). For a GPU they come in pinned memory, so moving them is an asynchronous copy."""
        plan, bplan = self._draw_host(step)
        if self.pop.device.type == "cuda":
            plan = plan.pin_memory()
            bplan = bplan.pin_memory() if bplan is not None else None
        for drawn in (plan, bplan):
            if drawn is not None:
                self.exchange.prepare(drawn)  # e.g. a distributed run's route of the values
        return plan, bplan

    def _draw_host(self, step: int) -> tuple[ShufflePlan, ShufflePlan | None]:
        factor = self.p_factor(step)
        rng = seeding.numpy_rng(self.cfg.seed, seeding.SHUFFLE, step)
        n = self.cfg.n_members
        plan = draw_plan(scale_segments(self.segments, factor), n, rng)
        bplan = None
        if self.cfg.shuffle_buffers and self.buffer_segments:
            bplan = draw_plan(scale_segments(self.buffer_segments, factor), n, rng)
        return plan, bplan

    def after_step(self, step: int, lr_ratio: float) -> int:
        plan, bplan = self.plans(step)
        if plan is None:
            return 0
        tensors = [self.pop.params]
        if self.cfg.shuffle_optimizer_state:
            tensors += list(self.pop.opt_state.values())
        values = self.exchange.permute_(tensors, plan)
        if bplan is not None:
            values += self.exchange.permute_([self.pop.buffers], bplan)
        return values * self.elem_size

    def derived(self) -> dict[str, float]:
        n = self.cfg.n_members
        frac = expected_fraction(self.segments)
        return {
            "wash/expected_fraction_selected": frac,
            "wash/expected_fraction_changed": frac * (1 - 1 / n),
            "wash/p_first_layer": self.segments[0].p if self.segments else 0.0,
            "wash/p_last_layer": self.segments[-1].p if self.segments else 0.0,
        }


def _pull(pop: Population, exchange: Exchange, weight: float) -> None:
    """w_i <- (1 - weight) w_i + weight * mean, for parameters and float buffers."""
    for t in (pop.params, pop.buffers):
        if t.numel():
            t.lerp_(exchange.mean(t).unsqueeze(0), weight)


class Papa(Method):
    """PAPA's EMA variant, on the official schedule: with i the iteration within the epoch
    (from 0), after the optimizer and scheduler steps of every iteration with i % k == 0,
    w_i <- a_t w_i + (1 - a_t) mean, with (1 - a_t) = (1 - a_0) lr_t / lr_0 and lr_t the rate
    the scheduler has just set (PAPA's `get_last_lr()` after `lr_scheduler.step()`)."""

    name = "papa"

    def is_sync_step(self, step: int) -> bool:
        return (step % self.steps_per_epoch) % self.cfg.papa_every == 0

    def after_step(self, step: int, lr_ratio: float) -> int:
        if not self.is_sync_step(step):
            return 0
        rate = self.cfg.papa_rate * (lr_ratio if self.cfg.papa_scale_with_lr else 1.0)
        _pull(self.pop, self.exchange, rate)
        return self.state_allreduce_bytes()

    def state_allreduce_bytes(self) -> int:
        d = self.pop.spec.n_params + self.pop.spec.n_buffers
        return allreduce_values(self.cfg.n_members, d) * self.elem_size


class PapaAll(Papa):
    """PAPA-all on the official schedule: after epoch e (0-based) whenever e % K == 0, epoch 0
    included, every member is replaced by the uniform average; never after the last epoch
    (that would make every member identical and erase the ensemble)."""

    name = "papa_all"

    def after_step(self, step: int, lr_ratio: float) -> int:
        return 0

    def is_merge_epoch(self, epoch: int) -> bool:
        return epoch % self.cfg.papa_all_every == 0 and epoch != self.cfg.epochs - 1

    def after_epoch(self, epoch: int) -> int:
        if not self.is_merge_epoch(epoch):
            return 0
        _pull(self.pop, self.exchange, 1.0)
        return self.state_allreduce_bytes()


def draw_pairs(n_members: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """PAPA-2's pairs: new member k averages pairs[k]. N distinct pairs drawn uniformly from the
    N (N - 1) / 2 (in random order). PAPA's code takes instead a random order of the first N
    pairs of the lexicographic list, so member 0 is in N - 1 of them and member N - 1 in one;
    both agree at N = 3 (all three pairs). With N = 2 there is one pair: both new members are
    its average, as in PAPA's code ([[0, 1], [0, 1]])."""
    every = list(itertools.combinations(range(n_members), 2))
    if len(every) < n_members:
        return [every[k % len(every)] for k in range(n_members)]
    return [every[i] for i in rng.choice(len(every), size=n_members, replace=False)]


class Papa2(PapaAll):
    """PAPA-2 (PAPA's `pair_half`): at PAPA-all's times, N new members each the 0.5/0.5
    average of a pair of current members (parameters and float buffers; see `draw_pairs`).
    The pairs come from the (seed, epoch) generator, so every process draws the same."""

    name = "papa2"

    def pairs(self, epoch: int) -> list[tuple[int, int]]:
        rng = seeding.numpy_rng(self.cfg.seed, seeding.PAIRS, epoch)
        return draw_pairs(self.cfg.n_members, rng)

    def after_epoch(self, epoch: int) -> int:
        if not self.is_merge_epoch(epoch):
            return 0
        pairs = self.pairs(epoch)
        for t in (self.pop.params, self.pop.buffers):
            if t.numel():
                a = self.exchange.rows_from(t, [i for i, _ in pairs])
                b = self.exchange.rows_from(t, [j for _, j in pairs])
                t.copy_(a.add_(b).mul_(0.5))
        return pair_values(pairs, self.pop.spec.n_params + self.pop.spec.n_buffers) * self.elem_size


def pair_values(pairs: Sequence[tuple[int, int]], d: int) -> int:
    """Values PAPA-2 sends: new member k receives the d-value state of each member of its pair
    that it is not itself (one it holds already costs nothing)."""
    return d * sum((a != k) + (b != k) for k, (a, b) in enumerate(pairs))


class Dart(PapaAll):
    """DART (Jain et al., CVPR 2023), the setting of PAPA's comparison: members train with
    different regularisations (PAPA's per-member grid, forced on whatever
    `member_regularization` says: see TrainConfig.uses_member_regularization) and are replaced
    by their uniform average on PAPA-all's schedule (after epochs 0, K, 2K, ..., K =
    `papa_all_every`, never after the last). The merge after epoch 0 gives every member the same
    starting point, as DART's branches share theirs."""

    name = "dart"


METHODS: dict[str, type[Method]] = {
    "independent": Method,
    "wash": Wash,
    "papa": Papa,
    "papa_all": PapaAll,
    "papa2": Papa2,
    "dart": Dart,
}


def make_method(
    cfg: TrainConfig, pop: Population, exchange: Exchange | None, total_steps: int
) -> Method:
    return METHODS[cfg.method](cfg, pop, exchange or LocalExchange(cfg.n_members), total_steps)


def dp_sgd_bytes_per_step(n_members: int, n_params: int, elem_size: int = 4) -> int:
    """The reference line: data-parallel SGD all-reduces the gradient every step."""
    return allreduce_values(n_members, n_params) * elem_size


__all__ = [
    "METHODS",
    "Exchange",
    "LocalExchange",
    "Method",
    "Segment",
    "allreduce_values",
    "dp_sgd_bytes_per_step",
    "draw_pairs",
    "make_method",
    "pair_values",
]
