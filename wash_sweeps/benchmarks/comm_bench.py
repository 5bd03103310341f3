"""Section `comm`: the WASH shuffle, PAPA's update and data loading, as a % of a training step.

One population of N members (the preset's N; 3 in --tiny) per model. Its training step, the WASH
`after_step` at each p, PAPA's `after_step` and the per-member batch indexing are timed in one
interleaved round-robin, each repeat giving one ratio to the step; the medians are reported.

The shuffle is measured in its most expensive setting: the uniform layer schedule (every layer at
p, where `linear` gives p/2 on average) with the momentum buffers shuffled along, a fresh plan
drawn at every call (a new step). PAPA is reported per step *amortised* over its period
(`papa_every` calls, one of which pulls) and per synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from wash_sweeps.methods import LocalExchange, Papa, Wash

from .cases import CASES, MemberBatches, ProjectLoop, case_config, case_data, device_sync
from .timing import interleaved, median, paired_ratio

PS = (1e-4, 1e-3, 1e-2, 1e-1)
_FAR = 10**9  # total steps: far enough that no schedule stops shuffling during the benchmark


def _counter(fn: Callable[[int, float], int]) -> Callable[[], None]:
    """Call fn(step, lr_ratio=1) with a step that advances at each call (a fresh plan each)."""
    step = [0]

    def call() -> None:
        fn(step[0], 1.0)
        step[0] += 1

    return call


def bench_case(
    name: str, n: int, tiny: bool, repeats: int, block_s: float, warmup: int, device: str = "cpu"
) -> dict[str, Any]:
    case = CASES[name]
    data = case_data(case, tiny, device)
    cfg = case_config(
        case,
        tiny,
        device=device,
        method="wash",
        n_members=n,
        layer_schedule="uniform",
        shuffle_optimizer_state=True,
        lr=1e-3,  # small: the population keeps training between repeats without diverging
    )
    loop = ProjectLoop(cfg, data)
    exchange = LocalExchange(n)
    fns: dict[str, Callable[[], None]] = {"step": loop.step}
    for p in PS:
        wash = Wash(cfg.replace(p=p), loop.pop, exchange, _FAR)
        fns[f"wash/{p:g}"] = _counter(wash.after_step)
    papa = Papa(cfg.replace(method="papa"), loop.pop, exchange, _FAR)
    fns["papa"] = _counter(papa.after_step)
    fns["papa_sync"] = lambda: papa.after_step(cfg.papa_every - 1, 1.0)
    fns["data"] = MemberBatches(cfg, data, loop.pop.members).next
    # a PAPA block holds whole periods, so its mean is the amortised cost per step
    slow = case.big and device == "cpu"  # a CPU ResNet step takes seconds
    calls = {"step": 1} if slow else {}
    calls["papa"] = cfg.papa_every * (1 if slow else 20)
    s = interleaved(fns, repeats, block_s, warmup=warmup, calls=calls, sync=device_sync(device))

    def pct(key: str) -> float:
        return 100.0 * paired_ratio(s[key], s["step"])

    return {
        "model": name,
        "n_members": n,
        "n_params": loop.pop.spec.n_params,
        "batch_size": cfg.batch_size,
        "step_ms": 1e3 * median(s["step"]),
        "repeats": repeats,
        "wash": [
            {"p": p, "us": 1e6 * median(s[f"wash/{p:g}"]), "pct_of_step": pct(f"wash/{p:g}")}
            for p in PS
        ],
        "papa_every": cfg.papa_every,
        "papa_us_per_step": 1e6 * median(s["papa"]),
        "papa_pct_of_step": pct("papa"),
        "papa_us_per_sync": 1e6 * median(s["papa_sync"]),
        "papa_sync_pct_of_step": pct("papa_sync"),
        "data_us": 1e6 * median(s["data"]),
        "data_pct_of_step": pct("data"),
    }


def bench_comm(
    models: Sequence[str], n: int, tiny: bool, repeats: int, block_s: float, device: str = "cpu"
) -> list[dict[str, Any]]:
    out = []
    for m in models:
        # a CPU ResNet-18 step takes seconds: a few one-step repeats, one warm-up step
        big = CASES[m].big and device == "cpu"
        reps, warmup = (min(repeats, 3), 1) if big else (repeats, 2)
        out.append(bench_case(m, n, tiny, reps, block_s, warmup, device))
    return out
