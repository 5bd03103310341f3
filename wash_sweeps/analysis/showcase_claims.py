"""The paper's claims (docs/method.md, "What the paper claims") judged on one task's reported runs.

Each verdict follows a fixed rule on paired 95 % intervals over the fresh seeds, stated beside
it, so the words cannot drift from the numbers:

- "holds" / "refuted" when the interval is wholly on one side of the claim's threshold,
  "not resolved" when it straddles it (more seeds needed), "not measured" without the runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .showcase_data import mean_std, paired, per_seed
from .stats import PairedDiff

CLOSE = 0.01  # "close": at most 1 point below, as a fraction of accuracy
FAILS = 0.05  # naive averaging "fails": at least 5 points below the members' ensemble
FAR_LESS = 0.5  # "far less" communication: under half of PAPA's bytes


@dataclass(frozen=True)
class Claim:
    number: int
    text: str
    verdict: str
    evidence: str


def pts(x: float) -> str:
    return f"{x * 100:+.2f}" if math.isfinite(x) else "n/a"


def interval(d: PairedDiff) -> str:
    if not d.has_interval:
        return f"{pts(d.mean)} (n = {d.n}: no interval)"
    return f"{pts(d.mean)} [{pts(d.lo)}, {pts(d.hi)}] (n = {d.n})"


def at_least(d: PairedDiff, threshold: float) -> str:
    """'holds' when the whole interval is >= threshold, 'refuted' when wholly below."""
    if not d.has_interval:
        return "not measured" if d.n == 0 else "not resolved"
    if d.lo >= threshold:
        return "holds"
    return "refuted" if d.hi < threshold else "not resolved"


def claim_naive(runs: pd.DataFrame, task: str) -> Claim:
    d = paired(runs, task, "independent", "test/acc_avg", "independent", "test/acc_ens")
    # fails = the average is at least FAILS below the ensemble: -(avg - ens) >= FAILS
    flipped = PairedDiff(-d.mean, -d.hi, -d.lo, d.n)
    return Claim(
        1,
        "naive averaging of independent members fails",
        at_least(flipped, FAILS),
        f"naive average - ensemble: {interval(d)} points; rule: at least "
        f"{FAILS * 100:.0f} points below",
    )


def claim_close(runs: pd.DataFrame, task: str) -> Claim:
    own = paired(runs, task, "wash", "test/acc_avg", "wash", "test/acc_ens")
    papa = paired(runs, task, "wash", "test/acc_avg", "papa", "test/acc_avg")
    verdicts = {at_least(own, -CLOSE), at_least(papa, -CLOSE)}
    verdict = (
        "holds" if verdicts == {"holds"} else "refuted" if "refuted" in verdicts else "not resolved"
    )
    if "not measured" in verdicts:
        verdict = "not measured"
    return Claim(
        2,
        "WASH's averaged model is close to its ensemble and to PAPA's average",
        verdict,
        f"WASH averaged - WASH ensemble: {interval(own)}; WASH averaged - PAPA "
        f"averaged: {interval(papa)} points; rule: holds when both intervals lie above "
        f"-{CLOSE * 100:.0f} point, refuted when either lies wholly below",
    )


def claim_diverse(runs: pd.DataFrame, task: str) -> Claim:
    ens = paired(runs, task, "wash", "test/acc_ens", "papa", "test/acc_ens")
    dis = paired(runs, task, "wash", "div/disagreement", "papa", "div/disagreement")
    return Claim(
        3,
        "WASH's members stay more diverse than PAPA's (better ensemble)",
        at_least(ens, 1e-12),
        f"WASH ensemble - PAPA ensemble: {interval(ens)} points; "
        f"disagreement WASH - PAPA: {dis.mean:+.4f} (n = {dis.n}); rule: interval "
        "above 0",
    )


def claim_bytes(runs: pd.DataFrame, task: str) -> Claim:
    wash = per_seed(runs, task, "wash", "comm/mb_total")
    papa = per_seed(runs, task, "papa", "comm/mb_total")
    if not wash or not papa:
        return Claim(4, "WASH communicates far less than PAPA", "not measured", "")
    ratio = mean_std(wash)[0] / mean_std(papa)[0]
    verdict = "holds" if ratio < FAR_LESS else "refuted"
    return Claim(
        4,
        "WASH communicates far less than PAPA",
        verdict,
        f"WASH {mean_std(wash)[0]:.1f} MB vs PAPA {mean_std(papa)[0]:.1f} MB "
        f"(ratio {ratio:.3f}; both at their settings chosen on validation); rule: "
        f"under {FAR_LESS:g}x",
    )


def claims(runs: pd.DataFrame, task: str) -> list[Claim]:
    return [f(runs, task) for f in (claim_naive, claim_close, claim_diverse, claim_bytes)]
