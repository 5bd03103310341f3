"""Side-by-side timing on a noisy machine: warm-up, interleaved repeats, medians, paired ratios.

Other processes share the CPU, so an absolute time drifts by tens of percent within a minute. Two
things measured in alternation drift together, so their *ratio* holds: every repeat times one block
of each candidate in turn (rotating the order so that none always runs first), and ratios are the
median over repeats of the per-repeat ratio.

    samples = interleaved({"a": fa, "b": fb}, repeats=7, block_s=0.2)
    ratio = paired_ratio(samples["a"], samples["b"])
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence


def calibrate(fn: Callable[[], object], block_s: float, warmup: int) -> int:
    """Run `fn` `warmup` times (caches, allocator, lazy init) and return how many calls fill a
    timed block of about `block_s` seconds (at least 1)."""
    start = time.perf_counter()
    for _ in range(max(warmup, 1)):
        fn()
    per_call = (time.perf_counter() - start) / max(warmup, 1)
    return max(1, math.ceil(block_s / max(per_call, 1e-9)))


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    block_s: float,
    warmup: int = 2,
    calls: Mapping[str, int] | None = None,
    sync: Callable[[], object] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample per repeat, measured round-robin.

    `calls` fixes the block length of some functions (e.g. a multiple of PAPA's period so that a
    block holds whole periods); the others are calibrated to `block_s`. `sync` waits for queued
    device work (torch.cuda.synchronize on a GPU): called before and after every timed block,
    so a block's time is its work, not its launches.
    """
    calls = dict(calls or {})
    inner = {
        k: calls.get(k) or calibrate(_synced(fn, sync), block_s, warmup) for k, fn in fns.items()
    }
    for k in calls:  # fixed-length blocks still need their warm-up
        for _ in range(warmup):
            fns[k]()
    names = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            fn, n = fns[k], inner[k]
            sync()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            samples[k].append((time.perf_counter() - start) / n)
    return samples


def _synced(fn: Callable[[], object], sync: Callable[[], object]) -> Callable[[], None]:
    def call() -> None:
        fn()
        sync()

    return call


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over repeats of a_r / b_r: robust to load that changes between repeats."""
    return median([x / y for x, y in zip(a, b, strict=True)])
