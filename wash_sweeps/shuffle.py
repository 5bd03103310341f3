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

    @property
    def n_selected(self) -> int:
        return int(self.index.numel())

    def moved_mask(self) -> torch.Tensor:
        """(k, N) bool: member i's value at coordinate j comes from another member."""
        n = self.perm.shape[1]
        return self.perm != torch.arange(n, dtype=self.perm.dtype)

    def n_moved(self) -> int:
        """Values that change owner: what a distributed implementation must send."""
        return int(self.moved_mask().sum())

    def to(self, device: torch.device | str) -> ShufflePlan:
        return ShufflePlan(self.index.to(device), self.perm.to(device))


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


def _distinct_indices(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """k distinct integers from [0, size), uniformly over k-subsets, without an O(size) mask
    when k is small."""
    if k == 0:
        return np.empty(0, np.int64)
    if k * 4 > size:  # dense: a permutation prefix is as cheap as anything
        return rng.permutation(size)[:k].astype(np.int64)
    chosen = np.unique(rng.integers(0, size, size=k + k // 8 + 8))
    while chosen.size < k:
        extra = rng.integers(0, size, size=(k - chosen.size) * 2 + 8)
        chosen = np.unique(np.concatenate([chosen, extra]))
    # drop a uniformly random surplus so that every k-subset stays equally likely
    if chosen.size > k:
        chosen = rng.choice(chosen, size=k, replace=False)
    return np.sort(chosen).astype(np.int64)


def draw_plan(segments: Sequence[Segment], n_members: int, rng: np.random.Generator) -> ShufflePlan:
    """Draw the coordinates (k ~ Binomial(d_l, p_l), then k distinct indices per segment) and one
    uniform permutation per coordinate (argsort of a (k, N) uniform matrix)."""
    parts = []
    for seg in segments:
        if seg.p <= 0.0 or seg.size == 0:
            continue
        k = int(rng.binomial(seg.size, min(seg.p, 1.0)))
        if k:
            parts.append(_distinct_indices(rng, seg.size, k) + seg.offset)
    index = np.concatenate(parts) if parts else np.empty(0, np.int64)
    perm = np.argsort(rng.random((index.size, n_members)), axis=1, kind="stable")
    return ShufflePlan(torch.from_numpy(index), torch.from_numpy(perm.astype(np.int64)))


def apply_plan(flat: torch.Tensor, plan: ShufflePlan) -> None:
    """In place on a (N, P) tensor: flat[i, index[j]] <- flat[perm[j, i], index[j]]."""
    if plan.n_selected == 0:
        return
    index = plan.index.to(flat.device)
    values = flat[:, index]  # (N, k)
    flat[:, index] = torch.gather(values, 0, plan.perm.to(flat.device).T)


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
    return [dataclasses.replace(s, p=min(1.0, s.p * factor)) for s in segments]
