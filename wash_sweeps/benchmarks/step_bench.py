"""Section `step`: the population's training step vs the naive per-member loop, N in {1,2,5,10}.

For each model, every (implementation, N) pair is timed in one interleaved round-robin, so the
ratios below compare blocks measured seconds apart:
- `speedup`: naive time / project time at the same N (> 1: this project is faster);
- `scaling`: the project's per-member step time at N=5 over that at N=1 (target <= 1.05).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .cases import CASES, NaiveLoop, ProjectLoop, case_config, case_data, device_sync
from .timing import interleaved, median, paired_ratio


def bench_case(
    name: str, ns: Sequence[int], tiny: bool, repeats: int, block_s: float, device: str = "cpu"
) -> dict[str, Any]:
    case = CASES[name]
    data = case_data(case, tiny, device)
    fns: dict[str, Callable[[], None]] = {}
    for n in ns:
        cfg = case_config(case, tiny, method="independent", n_members=n, device=device)
        fns[f"project/{n}"] = ProjectLoop(cfg, data).step
        fns[f"naive/{n}"] = NaiveLoop(cfg, data).step
    s = interleaved(fns, repeats, block_s, sync=device_sync(device))
    per_member = {k: [t / int(k.split("/")[1]) for t in v] for k, v in s.items()}
    rows = [
        {
            "n": n,
            "project_ms_per_member": 1e3 * median(per_member[f"project/{n}"]),
            "naive_ms_per_member": 1e3 * median(per_member[f"naive/{n}"]),
            "speedup": paired_ratio(per_member[f"naive/{n}"], per_member[f"project/{n}"]),
        }
        for n in ns
    ]
    n_ref = 5 if 5 in ns else max(ns)
    return {
        "model": name,
        "batch_size": case_config(case, tiny).batch_size,
        "data": "synthetic, same shape" if tiny or case.big else case.preset,
        "rows": rows,
        "scaling_n": n_ref,
        "scaling": paired_ratio(per_member[f"project/{n_ref}"], per_member["project/1"]),
        "naive_scaling": paired_ratio(per_member[f"naive/{n_ref}"], per_member["naive/1"]),
    }


def bench_steps(
    models: Sequence[str],
    ns: Sequence[int],
    tiny: bool,
    repeats: int,
    block_s: float,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    return [bench_case(m, ns, tiny, repeats, block_s, device) for m in models]
