"""`wash-sweeps bench` (also `python -m wash_sweeps.benchmarks`): how fast the population trains,
shuffles and communicates, measured side by side (warm-up, interleaved repeats, medians of ratios).

    wash-sweeps bench                       # small models, ResNet-18 comm row; ~6 min
    wash-sweeps bench --tiny                # seconds: what CI runs (numbers not meaningful)
    wash-sweeps bench --full                # + ResNet-18/20 steps, the demo run once (long)
    wash-sweeps bench --only comm --out bench.json
    wash-sweeps bench --device cuda --only gpu --out gpu.json   # the GPU section (gpu/smoke.sh)

Sections: step (project vs naive loop, N in {1,2,5,10}), comm (shuffle, PAPA, data as % of a
step), e2e (samples/s, demo time), distributed (gloo exchange), threads (the thread policy with
the cores free and shared with 2 busy processes; each policy in its own subprocess), gpu (the
paper's setting on `--device`: population images/s vs a PAPA-code-style loop, WASH/PAPA cost as
% of a step, a short CIFAR-shaped training run; by default only on a GPU). The table
ends with PASS/MISS for every target of issues 7 and 15; the JSON holds every number and the
machine it was measured on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import report

SECTIONS = ("step", "comm", "e2e", "distributed", "threads", "gpu")
DEFAULT_SECTIONS = SECTIONS[:-1]  # `gpu` when asked (--only gpu), or by default on a GPU


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="seconds: tiny repeats, small N (CI)")
    mode.add_argument(
        "--full", action="store_true", help="also the ResNet steps and the demo run once (slow)"
    )
    p.add_argument("--out", default="runs/bench.json", help="JSON file of every measured number")
    p.add_argument("--only", choices=SECTIONS, action="append", help="run only this section")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats per section")
    # one thread by default: on a shared 2-core machine a 2-thread OpenMP region waits for its
    # slower thread and a step's time jumps 10-20x whenever another process runs; one thread
    # measures the code, not the scheduler (both implementations get the same setting)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, 0 = torch default")
    p.add_argument(
        "--workdir", default=None, help="where the e2e runs write (default: a temporary dir)"
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu | cuda | cuda:K | auto: where step, comm, e2e and gpu train (distributed and "
        "threads stay on the CPU)",
    )


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.tiny:
        s = dict(mode="tiny", ns=(1, 2), comm_n=3, repeats=3, block_s=0.01)
        s["models"] = ("cnn1d", "cnn_digits")
        s["comm_models"] = s["models"]
    else:
        s = dict(mode="full" if args.full else "normal", ns=(1, 2, 5, 10), comm_n=5)
        s.update(repeats=9, block_s=0.25, models=("cnn1d", "cnn_digits"))
        s["comm_models"] = ("cnn1d", "cnn_digits", "resnet18")
        if args.full:
            s["models"] = ("cnn1d", "cnn_digits", "resnet20", "resnet18")
            s["comm_models"] = ("cnn1d", "cnn_digits", "resnet20", "resnet18")
    if args.repeats:
        s["repeats"] = args.repeats
    return s


def meta(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "mode": s["mode"],
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()}-core CPU ({platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": s["repeats"],
        "block_s": s["block_s"],
    }


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every requested section; the result dict that the table and the JSON are made from."""
    s = _settings(args)
    device = _device(args.device)
    only = set(args.only or (SECTIONS if device.startswith("cuda") else DEFAULT_SECTIONS))
    res: dict[str, Any] = {"meta": {**meta(s), "device": device}}
    if "step" in only:
        from .step_bench import bench_steps

        res["step"] = bench_steps(
            s["models"], s["ns"], args.tiny, s["repeats"], s["block_s"], device
        )
    if "comm" in only:
        from .comm_bench import bench_comm

        res["comm"] = bench_comm(
            s["comm_models"], s["comm_n"], args.tiny, s["repeats"], s["block_s"], device
        )
    if "e2e" in only:
        from .e2e_bench import bench_e2e

        res["e2e"] = bench_e2e(args.tiny, args.full, workdir, device)
    if "gpu" in only:
        from .gpu_bench import bench_gpu

        res["gpu"] = bench_gpu(device, args.tiny, min(s["repeats"], 5), s["block_s"] * 2, workdir)
    if "distributed" in only:
        from .distributed_bench import bench_distributed

        res["distributed"] = bench_distributed(args.tiny)
    if "threads" in only:
        from .threads_bench import bench_threads

        models = s["models"][:1] if args.tiny else ("cnn1d", "cnn_digits")
        res["threads"] = bench_threads(models, args.tiny, 1 if args.tiny else 4, s["block_s"] * 8)
    res["targets"] = report.targets(res)
    return res


def _device(name: str) -> str:
    """The benchmark's device, resolved like a run's (one line for a bad or absent one)."""
    from wash_sweeps.config import TrainConfig
    from wash_sweeps.train import resolve_device

    TrainConfig(device=name)  # its one-line check of the value
    return str(resolve_device(name))


def run(command: str, args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.workdir:
        res = measure(args, Path(args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="wash-bench-") as tmp:
            res = measure(args, Path(tmp))
    print(report.format_table(res))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"\nwrote {out}")
    return 0
