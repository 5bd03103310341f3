"""Paired per-seed differences and the words a report may use about them (pure functions).

    d = paired_difference({0: 0.91, 1: 0.93}, {0: 0.90, 1: 0.94})   # A - B, paired by seed
    verdict(d)          # "about equal" | "higher by 1.2 points" | "lower by ..." | "n too small"

Two runs are a pair when they share the `seed` config field: same data order and
initialisations, so the per-seed difference removes the seed-to-seed spread both share. The 95%
interval is the t-interval of the mean difference, t_{0.975, n-1} * sd / sqrt(n) either side
(sd: sample std of the differences); it needs n >= 2 pairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scipy import stats as _st

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDiff:
    """Mean of the per-seed differences A - B, its 95% t-interval [lo, hi] (NaN when n < 2) and
    the number n of seeds both A and B have."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.lo) and math.isfinite(self.hi)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def paired_difference(a: Mapping[Any, float], b: Mapping[Any, float]) -> PairedDiff:
    """A - B over the seeds present (with a finite value) in both `a` and `b` (seed -> value)."""
    seeds = sorted(s for s in set(a) & set(b) if _finite(a[s]) and _finite(b[s]))
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    n = len(diffs)
    if n == 0:
        return PairedDiff(math.nan, math.nan, math.nan, 0)
    mean = sum(diffs) / n
    if n < 2:
        return PairedDiff(mean, math.nan, math.nan, n)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(_st.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return PairedDiff(mean, mean - half, mean + half, n)


def verdict(d: PairedDiff, scale: float = 100.0, unit: str = " points") -> str:
    """'about equal' when the interval holds 0, else 'higher'/'lower by <|mean|>' (times `scale`,
    in `unit`: accuracies as fractions -> percentage points); 'n too small' below 2 pairs."""
    if not d.has_interval:
        return "n too small"
    if d.lo <= 0.0 <= d.hi:
        return "about equal"
    word = "higher" if d.mean > 0 else "lower"
    return f"{word} by {_num(abs(d.mean) * scale)}{unit}"


def _num(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 0.1 or x == 0 else f"{x:.2g}"


def describe(d: PairedDiff, scale: float = 100.0, unit: str = " points") -> str:
    """'-0.1 [-0.9, +0.7] points, n = 3: about equal' ('-0.1 points, n = 1: n too small' below
    two pairs), values times `scale`."""
    if d.n == 0:
        return "no seed in common"
    if not d.has_interval:
        return f"{d.mean * scale:+.1f}{unit}, n = {d.n}: n too small"
    return (
        f"{d.mean * scale:+.1f} [{d.lo * scale:+.1f}, {d.hi * scale:+.1f}]{unit}, n = {d.n}: "
        f"{verdict(d, scale, unit)}"
    )
