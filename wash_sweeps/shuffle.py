"""The WASH shuffle: a pure function of the stacked member tensors, p per layer and a generator.

Members' parameters live as rows of one (N, P) tensor. A *segment* is one parameter tensor's
slice [offset, offset + size) of that row, with its own probability p_l. For every coordinate j,
independently with probability p_l, a uniform permutation s of {0..N-1} is drawn and member i
takes member s(i)'s value. Nothing here knows about torch.distributed, configs or trackers: a plan
is drawn once (identically on every process from the shared seed) and applied by whoever holds
the values.

    plan = draw_plan(segments, n_members=5, rng=numpy_rng(seed, SHUFFLE, step))
    apply_plan(flat, plan)            # flat: (N, P), in place
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class Segment:
    offset: int  # first coordinate in the flat row
    size: int  # number of coordinates
    p: float  # per coordinate per shuffle


@dataclasses.dataclass(frozen=True)
class ShufflePlan:
    """Which coordinates are shuffled and how.

    index: (k,) int64 flat coordinates, distinct. perm: (k, N) int64; row j is the permutation s
    of coordinate index[j]: member i receives member perm[j, i]'s value.
    """

    index: torch.Tensor
    perm: torch.Tensor
    n_fixed: int | None = None  # values that stay with their member (s(i) = i), if known

    @property
    def n_selected(self) -> int:
        return int(self.index.numel())

    def moved_mask(self) -> torch.Tensor:
        """(k, N) bool: member i's value at coordinate j comes from another member."""
        n = self.perm.shape[1]
        return self.perm != torch.arange(n, dtype=self.perm.dtype)

    def n_moved(self) -> int:
        """Values that change owner: what a distributed implementation must send."""
        if self.n_fixed is not None:
            return self.perm.numel() - self.n_fixed
        return int(self.moved_mask().sum())

    def to(self, device: torch.device | str) -> ShufflePlan:
        """On `device` (itself if already there); from pinned memory the copy is asynchronous."""
        device = torch.device(device)
        if self.index.device == device:
            return self
        index = self.index.to(device, non_blocking=True)
        return ShufflePlan(index, self.perm.to(device, non_blocking=True), self.n_fixed)

    def pin_memory(self) -> ShufflePlan:
        """In page-locked host memory (for an asynchronous copy to a GPU)."""
        return ShufflePlan(self.index.pin_memory(), self.perm.pin_memory(), self.n_fixed)

    def linear_moves(
        self, row_length: int, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(dst, src) positions in a flattened contiguous (N, row_length) tensor for every
        (coordinate, receiver); fixed points (s(i) = i) are included, rewriting a value with
        itself, because masking them out costs more than it saves. Cached per (row length,
        device): the weights and each optimizer-state tensor reuse them."""
        key = (row_length, device)
        cache = self.__dict__.setdefault("_moves", {})
        if key not in cache:
            n = self.perm.shape[1]
            column = self.index[:, None]
            dst = torch.arange(0, n * row_length, row_length, dtype=self.perm.dtype) + column
            src = self.perm * row_length
            src += column
            cache[key] = (dst.view(-1).to(device), src.view(-1).to(device))
        return cache[key]


def layer_probabilities(
    layer_of_segment: Sequence[int], p: float, schedule: str, n_layers: int | None = None
) -> list[float]:
    """p per segment. `layer_of_segment[s]` is the depth index l of segment s (0 = input side).

    uniform: p_l = p. linear: p_l = p * (1 - l / L) with L the number of layers (default: the
    deepest index + 1), so the first layer gets p and the last p / L.
    """
    if schedule == "uniform":
        return [float(p)] * len(layer_of_segment)
    if schedule == "linear":
        if n_layers is None:
            n_layers = max(layer_of_segment) + 1 if layer_of_segment else 1
        return [float(p) * (1.0 - layer / n_layers) for layer in layer_of_segment]
    raise ValueError(f"layer schedule {schedule!r}: allowed values are uniform, linear")


def _select(segments: Sequence[Segment], rng: np.random.Generator) -> np.ndarray:
    """Sorted flat coordinates, each selected independently with its segment's p_l.

    Geometric skips at the largest probability q draw candidates (each coordinate a candidate
    with probability q, in O(k) work, never a mask over every coordinate); each candidate is then
    kept with probability p_l / q. Kept coordinates are exactly Bernoulli(p_l) and independent,
    so their count per segment is Binomial(d_l, p_l) and, given the count, the set is uniform:
    the k ~ Binomial, k distinct indices recipe, in a handful of vectorised calls whatever the
    number of layers."""
    layout = _layout(tuple(segments))
    if layout is None:
        return np.empty(0, np.int64)
    starts, ends, probs, q, lo, hi, one_block = layout
    span = hi - lo
    if q >= 1.0:
        cand = np.arange(lo, hi, dtype=np.int64)
    else:
        mean = span * q
        n_draw = int(mean + 6 * np.sqrt(mean) + 16)
        pos = np.cumsum(rng.geometric(q, size=n_draw)) - 1
        while pos[-1] < span:  # rare: the first draw fell short of the span
            pos = np.concatenate([pos, pos[-1] + np.cumsum(rng.geometric(q, size=n_draw))])
        cand = pos[pos < span] + lo
    if one_block:  # contiguous segments, one p: every candidate is kept (the same draws)
        return cand
    seg = np.searchsorted(ends, cand, side="right")  # segment of each candidate (or a gap)
    inside = (seg < len(ends)) & (cand >= starts[np.minimum(seg, len(ends) - 1)])
    cand, seg = cand[inside], seg[inside]
    ratio = probs[seg] / q
    if (ratio < 1.0).any():
        keep = rng.random(cand.size) < ratio
        cand = cand[keep]
    return cand


@functools.lru_cache(maxsize=64)
def _layout(
    segments: tuple[Segment, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int, int, bool] | None:
    """Starts, ends and p of the segments that can be selected, in offset order, with the
    largest p, the span they cover and whether they are one block (contiguous, one p); None if
    none can be selected. The same every step, so cached."""
    segs = sorted((s for s in segments if s.p > 0 and s.size > 0), key=lambda s: s.offset)
    if not segs:
        return None
    ends = np.array([s.offset + s.size for s in segs], np.int64)
    starts = np.array([s.offset for s in segs], np.int64)
    probs = np.array([min(s.p, 1.0) for s in segs])
    q = float(probs.max())
    one_block = bool((starts[1:] == ends[:-1]).all() and (probs == q).all())
    return starts, ends, probs, q, int(starts.min()), int(ends.max()), one_block


_PERM_TABLE_MAX_N = 8  # 8! = 40320 rows: a table beats an argsort per coordinate


@functools.lru_cache(maxsize=8)
def _perm_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every permutation of {0..n-1} (one per row) and its number of fixed points."""
    table = np.array(list(itertools.permutations(range(n))), np.int64)
    return table, (table == np.arange(n)).sum(axis=1)


def _permutations(rng: np.random.Generator, k: int, n: int) -> tuple[np.ndarray, int]:
    """k independent uniform permutations of {0..n-1}, one per row, and their fixed points."""
    if n <= _PERM_TABLE_MAX_N:
        table, fixed = _perm_table(n)
        rows = rng.integers(0, len(table), size=k)
        return table[rows], int(fixed[rows].sum())
    perm = np.argsort(rng.random((k, n)), axis=1, kind="stable")
    return perm, int((perm == np.arange(n)).sum())


def draw_plan(segments: Sequence[Segment], n_members: int, rng: np.random.Generator) -> ShufflePlan:
    """Draw the coordinates (each independently with its p_l) and one uniform permutation of the
    N members per selected coordinate."""
    index = _select(segments, rng)
    perm, n_fixed = _permutations(rng, index.size, n_members)
    return ShufflePlan(torch.from_numpy(index), torch.from_numpy(perm), n_fixed)


def apply_plan(flat: torch.Tensor, plan: ShufflePlan) -> None:
    """In place on a contiguous (N, P) tensor: flat[i, index[j]] <- flat[perm[j, i], index[j]]
    (one gather, one scatter over precomputed flat positions)."""
    if plan.n_selected == 0:
        return
    dst, src = plan.linear_moves(flat.shape[1], flat.device)
    view = flat.view(-1)
    view.index_copy_(0, dst, view.index_select(0, src))


def shuffle_(
    flat: torch.Tensor, segments: Sequence[Segment], rng: np.random.Generator
) -> ShufflePlan:
    """Draw a plan for `flat` (N, P) and apply it in place; returns the plan."""
    plan = draw_plan(segments, flat.shape[0], rng)
    apply_plan(flat, plan)
    return plan


def expected_fraction(segments: Sequence[Segment]) -> float:
    """Expected fraction of all coordinates selected per shuffle: sum_l p_l d_l / sum_l d_l."""
    total = sum(s.size for s in segments)
    return sum(s.p * s.size for s in segments) / total if total else 0.0


def scale_segments(segments: Sequence[Segment], factor: float) -> list[Segment]:
    """Segments with every p_l multiplied by `factor` (a schedule over training)."""
    if factor == 1.0:  # the constant schedule: every step, so no copies
        return list(segments)
    return [dataclasses.replace(s, p=min(1.0, s.p * factor)) for s in segments]
