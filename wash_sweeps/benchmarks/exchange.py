"""The WASH exchange vs PAPA's all-reduce on a flat buffer, over gloo (one member per process).

    python -m wash_sweeps.benchmarks.exchange --world 2 4 --n-params 11200000 --p 1e-3 1e-2

`bench_exchange(world_size, n_params, p, steps)` spawns `world_size` processes (file://
rendezvous, no port), each holding one member's (1, n_params) float32 row, and times on the
slowest rank: the plan (drawing the shared plan and working out this rank's route, which a run
does ahead on Wash's prefetch thread), `DistributedExchange.permute_` (gathering the values,
one all_to_all_single, scattering them: what a training step waits for) and
`DistributedExchange.mean` (PAPA's all-reduce of the whole row). Bytes are whole-population
totals: `wire` is what went through the collectives, `counted` the method's accounting.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wash_sweeps import seeding
from wash_sweeps.distributed import DistributedExchange
from wash_sweeps.shuffle import Segment, draw_plan

_ELEM = 4  # bytes per float32 value


def _slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, dist.ReduceOp.MAX)
    return float(t)


def _worker(rank: int, world: int, tmp: str, n_params: int, p: float, steps: int) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/rdzv",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=300),
    )
    torch.set_num_threads(1)  # one core per rank: what a rank gets on this 2-core machine
    try:
        ex = DistributedExchange(world)
        row = torch.randn(1, n_params, generator=torch.Generator().manual_seed(rank))
        segments = [Segment(0, n_params, p)]
        draw_s = shuffle_s = 0.0
        changed = 0
        ex.permute_([row], draw_plan(segments, world, seeding.numpy_rng(0, 99)))  # warm-up
        ex.stats = type(ex.stats)()
        for step in range(steps):
            dist.barrier()
            t0 = time.perf_counter()
            plan = draw_plan(segments, world, seeding.numpy_rng(0, seeding.SHUFFLE, step))
            ex.prepare(plan)  # the route: in a run, on the prefetch thread with the draw
            draw_s += _slowest(time.perf_counter() - t0)  # (a collective: ranks start together)
            t1 = time.perf_counter()
            changed += ex.permute_([row], plan)
            shuffle_s += _slowest(time.perf_counter() - t1)
        sent = torch.tensor([ex.stats.sent_values], dtype=torch.float64)
        dist.all_reduce(sent)
        reduce_s = 0.0
        for _ in range(steps):
            dist.barrier()
            t0 = time.perf_counter()
            ex.mean(row)
            reduce_s += _slowest(time.perf_counter() - t0)
        if rank == 0:
            result = {
                "world_size": world,
                "n_params": n_params,
                "p": p,
                "steps": steps,
                "wash_draw_s_per_step": draw_s / steps,
                "wash_exchange_s_per_step": shuffle_s / steps,
                "wash_wire_bytes_per_step": float(sent) * _ELEM / steps,
                "wash_counted_bytes_per_step": changed * _ELEM / steps,
                "allreduce_s_per_sync": reduce_s / steps,
                # ring all-reduce: 2 (W-1)/W d per rank, 2 (N-1) d in all with N = W
                "allreduce_wire_bytes_per_sync": 2 * (world - 1) * n_params * _ELEM,
            }
            Path(tmp, "result.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def bench_exchange(world_size: int, n_params: int, p: float, steps: int) -> dict[str, Any]:
    """Time one WASH shuffle (plan + all_to_all) and one PAPA all-reduce of an `n_params` row
    per member, `world_size` members in `world_size` gloo processes; mean over `steps`."""
    with tempfile.TemporaryDirectory(prefix="bench-exchange-") as tmp:
        mp.spawn(_worker, args=(world_size, tmp, n_params, p, steps), nprocs=world_size)
        return json.loads(Path(tmp, "result.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--n-params", type=int, default=11_200_000, help="ResNet-18: 11.2M")
    ap.add_argument("--p", type=float, nargs="+", default=[1e-3, 1e-2])
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    print("W  p       plan ms  all_to_all ms  wire MB/step  all_reduce ms  wire MB/sync")
    for w in args.world:
        for p in args.p:
            r = bench_exchange(w, args.n_params, p, args.steps)
            print(
                f"{w}  {p:<7g} {r['wash_draw_s_per_step'] * 1e3:7.1f}  "
                f"{r['wash_exchange_s_per_step'] * 1e3:13.1f}  "
                f"{r['wash_wire_bytes_per_step'] / 1e6:12.3f}  "
                f"{r['allreduce_s_per_sync'] * 1e3:13.1f}  "
                f"{r['allreduce_wire_bytes_per_sync'] / 1e6:12.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
