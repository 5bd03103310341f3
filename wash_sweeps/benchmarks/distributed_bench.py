"""Section `distributed`: the WASH exchange vs PAPA's all-reduce over gloo, 2 and 4 processes.

One member per process (N = world size), spawned with torch.multiprocessing. Each process holds
its member's rows of the population and acts through `wash_sweeps.distributed.DistributedExchange`
exactly as a distributed run does: WASH's `after_step` (plan drawn from the shared seed, values
sent with one all_to_all_single) and PAPA's (an all-reduce of the full state every `papa_every`
steps). Blocks of WASH and PAPA steps alternate; a block's time is the slowest rank's.

Bytes per step, whole population: `wire` is what the exchange put on the network (all_to_all
values sent; for the all-reduce, a ring's 2 (W-1)/W d per rank), `counted` is what the method
reports (docs/method.md's accounting), both in MB per optimizer step.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wash_sweeps.config import TrainConfig
from wash_sweeps.methods import Papa, Wash
from wash_sweeps.population import Population

from .timing import median

_SHAPES = {"cnn1d": ((1, 40), "mnist1d-fast"), "cnn_digits": ((1, 8, 8), "digits")}
_FAR = 10**9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed_block(method, start_step: int, steps: int) -> tuple[float, int]:
    """Seconds of `steps` consecutive after_step calls on the slowest rank; bytes counted."""
    dist.barrier()
    t0 = time.perf_counter()
    counted = sum(method.after_step(start_step + s, 1.0) for s in range(steps))
    dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(dt, op=dist.ReduceOp.MAX)
    return float(dt.item()), counted


def _bench_model(model: str, world: int, p: float, repeats: int, steps: int) -> list[dict]:
    from wash_sweeps.distributed import DistributedExchange

    in_shape, preset = _SHAPES[model]
    cfg = TrainConfig.from_preset(
        preset, n_members=world, p=p, layer_schedule="uniform", shuffle_optimizer_state=True
    )
    rows = []
    ex = {m: DistributedExchange(world) for m in ("wash", "papa")}
    pop = Population(cfg, in_shape, 10, "cpu", members=ex["wash"].members)
    methods = {
        "wash": Wash(cfg, pop, ex["wash"], _FAR),
        "papa": Papa(cfg.replace(method="papa"), pop, ex["papa"], _FAR),
    }
    times: dict[str, list[float]] = {"wash": [], "papa": []}
    counted = {"wash": 0, "papa": 0}
    for m in methods.values():  # warm-up: connections, allocator
        _timed_block(m, 0, cfg.papa_every)
    ex = {m: DistributedExchange(world) for m in ("wash", "papa")}  # fresh counters
    for name in methods:
        methods[name].exchange = ex[name]
    # a block holds whole PAPA periods, so its mean is PAPA's amortised cost per step
    steps = max(steps // cfg.papa_every, 1) * cfg.papa_every
    for r in range(repeats):
        for name in ("wash", "papa") if r % 2 == 0 else ("papa", "wash"):
            dt, c = _timed_block(methods[name], 1 + r * steps, steps)
            times[name].append(dt / steps)
            counted[name] += c
    total_steps = repeats * steps
    for name in ("wash", "papa"):
        t = ex[name].totals()
        wire = t["dist/all_to_all_bytes_total"] + t["dist/allreduce_wire_bytes_total"]
        rows.append(
            {
                "model": model,
                "procs": world,
                "n_members": world,
                "n_params": pop.spec.n_params,
                "method": name if name == "papa" else f"wash p={p:g}",
                "ms_per_step": 1e3 * median(times[name]),
                "mb_per_step": wire / total_steps / 1e6,
                "mb_counted_per_step": counted[name] / total_steps / 1e6,
            }
        )
    return rows


def _worker(rank: int, world: int, port: int, models: list[str], cfg: dict, out: str) -> None:
    torch.set_num_threads(1)  # W processes share 2 cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(0, 300))
    try:
        rows = []
        for model in models:
            rows += _bench_model(model, world, cfg["p"], cfg["repeats"], cfg["steps"])
        if rank == 0:
            Path(out).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def bench_world(world: int, models: list[str], p: float, repeats: int, steps: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="wash-bench-dist-") as tmp:
        out = str(Path(tmp) / "rows.json")
        settings = {"p": p, "repeats": repeats, "steps": steps}
        mp.spawn(_worker, args=(world, _free_port(), models, settings, out), nprocs=world)
        return json.loads(Path(out).read_text())


# parameters per member of the preset models (cnn1d, cnn_digits, CIFAR ResNet-18)
_SIZES = {"cnn1d": 8010, "cnn_digits": 151306, "resnet18": 11173962}
_PAPA_EVERY = 10  # the presets' papa_every: PAPA's all-reduce is amortised over it


def _transport_rows(bench_exchange, worlds, models, p: float, steps: int) -> list[dict]:
    """Rows from `benchmarks.exchange.bench_exchange` (the transport alone, on a flat row)."""
    rows = []
    for w in worlds:
        for model in models:
            r = bench_exchange(w, _SIZES[model], p, steps)
            common = {"model": model, "procs": w, "n_members": w, "n_params": _SIZES[model]}
            rows.append(
                {
                    **common,
                    "method": f"wash p={p:g}",
                    # what a step waits for; the plan (draw + route) is made ahead, on Wash's
                    # prefetch thread, while the device computes
                    "ms_per_step": 1e3 * r["wash_exchange_s_per_step"],
                    "plan_ms_per_step": 1e3 * r["wash_draw_s_per_step"],
                    "mb_per_step": r["wash_wire_bytes_per_step"] / 1e6,
                    "mb_counted_per_step": r["wash_counted_bytes_per_step"] / 1e6,
                }
            )
            rows.append(
                {
                    **common,
                    "method": "papa",
                    "ms_per_step": 1e3 * r["allreduce_s_per_sync"] / _PAPA_EVERY,
                    "ms_per_sync": 1e3 * r["allreduce_s_per_sync"],
                    "mb_per_step": r["allreduce_wire_bytes_per_sync"] / _PAPA_EVERY / 1e6,
                    "mb_counted_per_step": r["allreduce_wire_bytes_per_sync"] / _PAPA_EVERY / 1e6,
                }
            )
    return rows


def bench_distributed(tiny: bool) -> dict[str, Any]:
    """The exchange engineer's transport benchmark when `benchmarks/exchange.py` is there (raw
    permute_/mean on a flat row of each model's size), else the method-level one above."""
    try:
        from wash_sweeps.distributed import DistributedExchange  # noqa: F401
    except ImportError:
        return {"status": "left", "reason": "wash_sweeps.distributed.DistributedExchange missing"}
    p = 0.01
    try:
        from wash_sweeps.benchmarks.exchange import bench_exchange
    except ImportError:
        bench_exchange = None
    if bench_exchange is not None:
        worlds, models = ((2,), ["cnn1d"]) if tiny else ((2, 4), list(_SIZES))
        return {
            "status": "measured",
            "source": "wash_sweeps.benchmarks.exchange.bench_exchange: the exchange (gather, "
            "all_to_all, scatter) on one flat row (weights only), the plan (draw + route, made "
            f"ahead on the prefetch thread) apart; PAPA's all-reduce amortised over "
            f"papa_every={_PAPA_EVERY}",
            "p": p,
            "rows": _transport_rows(bench_exchange, worlds, models, p, 3 if tiny else 5),
        }
    worlds, models = ((2,), ["cnn1d"]) if tiny else ((2, 4), ["cnn1d", "cnn_digits"])
    repeats, steps = (2, 10) if tiny else (7, 50)
    rows = []
    for w in worlds:
        rows += bench_world(w, models, p, repeats, steps)
    return {
        "status": "measured",
        "source": "wash_sweeps.benchmarks.distributed_bench: Wash/Papa.after_step over "
        "DistributedExchange (gloo, torch.multiprocessing.spawn), momentum shuffled along",
        "p": p,
        "rows": rows,
    }
