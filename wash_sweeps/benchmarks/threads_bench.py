"""Section `threads`: the thread policy, with the cores as found and shared with busy jobs.

The preset populations (cnn1d, cnn_digits; N = 5, method independent) train under each
`threads` setting (1, 2, and 0 = auto: runtime.ThreadPolicy ticked every step, as a run does)
and each OpenMP wait policy (libgomp's default, which spins a while before sleeping: what runs
use; and PASSIVE, for comparison). The wait policy is read once when torch loads, so each has
its own worker process; within it, every repeat times one block of every setting as found
(whatever else the machine runs) and one beside BUSY extra processes that spin on a core each
(`yes > /dev/null`), in rotating order. Reported: medians over repeats, and ratios of medians.

    python -m wash_sweeps.benchmarks.threads_bench --worker default cnn1d --repeats 3  # JSON out
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .timing import median

BUSY = 2  # extra spinning processes in the shared condition
# OpenMP's wait policy is read once, when torch loads: one worker process per wait policy
# default: unset, libgomp's spin-a-while-then-sleep (what runs get); passive: sleep at once
WAITS = {"default": None, "passive": "PASSIVE"}
THREADS = {"1 thread": 1, "2 threads": 2, "auto": 0}  # the `threads` field
CONDITIONS = ("as found", f"+{BUSY} busy")


def _env(wait: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if WAITS[wait] is not None:
        env["OMP_WAIT_POLICY"] = WAITS[wait]
    return env


def run_worker(wait: str, models: Sequence[str], args: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "wash_sweeps.benchmarks.threads_bench", "--worker", wait, *models]
    cmd += ["--repeats", str(args["repeats"]), "--block-s", str(args["block_s"])]
    cmd += ["--tiny"] if args["tiny"] else []
    out = subprocess.run(cmd, env=_env(wait), capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"threads worker {wait!r} failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextmanager
def busy_processes(n: int) -> Iterator[None]:
    """n processes that each keep a core busy (`yes` into /dev/null) while the block runs."""
    yes = shutil.which("yes")
    cmd = [yes] if yes else [sys.executable, "-c", "while True: pass"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for _ in range(n)]
    try:
        time.sleep(0.2)  # let them reach the run queue
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def bench_threads(
    models: Sequence[str], tiny: bool, repeats: int, block_s: float
) -> dict[str, Any]:
    """ms per population step for every (wait policy, threads, condition, model)."""
    args = {"repeats": repeats, "block_s": block_s, "tiny": tiny}
    waits = ["default"] if tiny else list(WAITS)
    samples = {w: run_worker(w, models, args) for w in waits}
    rows = []
    for m in models:
        for cond in CONDITIONS:
            cell = {(w, t): samples[w]["ms"][m][cond][t] for w in waits for t in THREADS}
            best = min(median(v) for v in cell.values())
            rows += [
                {
                    "model": m,
                    "condition": cond,
                    "policy": f"{t}, {w}",
                    "threads": t,
                    "wait": w,
                    "mean_threads": median(samples[w]["threads"][m][cond][t]),
                    "ms_per_step": median(v),
                    "vs_best": median(v) / best,
                    "vs_as_found": median(v) / median(samples[w]["ms"][m][CONDITIONS[0]][t]),
                }
                for (w, t), v in cell.items()
            ]
    return {
        "busy_processes": BUSY,
        "repeats": repeats,
        "block_s": block_s,
        "load_avg_1min": {
            c: median([x for w in waits for x in samples[w]["load"][c]]) for c in CONDITIONS
        },
        "rows": rows,
    }


# --- the worker: one policy in a fresh process -------------------------------------------------


def _worker(models: Sequence[str], repeats: int, block_s: float, tiny: bool) -> dict[str, Any]:
    # torch is loaded here, after the parent set this process's OMP_WAIT_POLICY (libgomp reads
    # it once at load); nothing above imported torch or wash_sweeps
    import torch

    from wash_sweeps.runtime import ThreadPolicy

    from .cases import CASES, ProjectLoop, case_config, case_data

    loops = {}
    for m in models:
        cfg = case_config(CASES[m], tiny, method="independent", n_members=3 if tiny else 5)
        loops[m] = ProjectLoop(cfg, case_data(CASES[m], tiny))
    ms = {m: {c: {t: [] for t in THREADS} for c in CONDITIONS} for m in models}
    used = {m: {c: {t: [] for t in THREADS} for c in CONDITIONS} for m in models}
    load: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    names = list(THREADS)
    for r in range(repeats):
        for cond in CONDITIONS:
            with busy_processes(BUSY if cond != CONDITIONS[0] else 0):
                for t in names[r % len(names) :] + names[: r % len(names)]:
                    policy = ThreadPolicy(THREADS[t])  # ticked every step, as train_epoch does
                    for m in models:
                        step_ms, threads = _block(loops[m], policy, block_s)
                        ms[m][cond][t].append(step_ms)
                        used[m][cond][t].append(threads)
                load[cond].append(os.getloadavg()[0])
    torch.set_num_threads(1)
    return {"ms": ms, "threads": used, "load": load}


def _block(loop: Any, policy: Any, block_s: float) -> tuple[float, float]:
    """ms per step over `block_s` seconds and the mean threads used, after a warm-up that lets
    `auto` take one decision with the current load (its interval is 1 s)."""

    def step() -> int:
        loop.step()
        return policy.tick()

    warm = 1.2 * policy.interval_s if policy.adaptive else 0.2 * block_s
    start, n = time.perf_counter(), 0
    while n < 2 or time.perf_counter() - start < min(warm, 2 * block_s):
        step()
        n += 1
    start, n, threads = time.perf_counter(), 0, 0
    while n < 2 or time.perf_counter() - start < block_s:
        threads += step()
        n += 1
    return 1e3 * (time.perf_counter() - start) / n, threads / n


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=list(WAITS), required=True)
    p.add_argument("models", nargs="+")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--block-s", type=float, default=1.0)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args(argv)
    print(json.dumps(_worker(args.models, args.repeats, args.block_s, args.tiny)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
