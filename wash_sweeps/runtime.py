"""How a run uses the machine: CPU threads, the arithmetic precision, work done ahead on a
background thread, and the GPUs of a study's workers.

    policy = ThreadPolicy(cfg.threads)   # 0 = auto; sets torch's threads
    for step in ...: policy.tick()       # auto: re-decided at most once a second

Why a thread policy at all: torch's default takes every core, and its OpenMP threads spin a
while at every barrier. On a 2-core machine shared with other jobs a 2-thread step then waits
for a thread the scheduler has parked: 5-30x slower per step than one thread, where one thread
is only ~20% slower than two on an idle machine (docs/benchmarks.md, `wash-sweeps bench --only
threads`). So `auto` uses up to AUTO_MAX_THREADS threads while the cores are free and one while
other processes use them, measured from the machine's CPU time minus this process's. OpenMP's
wait policy is left as it is: `auto` never runs two threads against a busy machine for more than
a second, and an idle machine is where spinning pays. A thread count changes float summation
order, so an `auto` run's last bits depend on the load; a fixed `threads` (or OMP_NUM_THREADS)
gives bit-reproducible runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from .config import ConfigError

T = TypeVar("T")

AUTO_MAX_THREADS = 2  # the small models gain nothing measurable beyond 2 (docs/benchmarks.md)


def available_cores() -> int:
    """Cores this process may run on (its affinity mask: taskset, cgroup cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def omp_num_threads(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """OMP_NUM_THREADS when it holds a positive count (the usual knob), else None."""
    given = environ.get("OMP_NUM_THREADS", "").strip()
    return int(given) if given.isdigit() and int(given) > 0 else None


def auto_cap() -> int:
    """The most threads `auto` uses: min(AUTO_MAX_THREADS, available cores)."""
    return max(1, min(AUTO_MAX_THREADS, available_cores()))


def auto_threads(environ: MutableMapping[str, str] = os.environ) -> int:
    """Threads an `auto` run starts with: OMP_NUM_THREADS when set, else auto_cap()."""
    return omp_num_threads(environ) or auto_cap()


def resolve_threads(threads: int) -> int:
    """torch CPU threads for the config field `threads` (0 = auto)."""
    return threads if threads > 0 else auto_threads()


def apply_threads(threads: int) -> int:
    """Set torch's intra-op threads from the field `threads`; returns the number set."""
    import torch

    n = resolve_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def choose_threads(cap: int, total_cores: int, others_busy: float) -> int:
    """Threads for `auto`: the cores other processes left free (rounded), between 1 and cap.

    `others_busy` is the CPU time other processes used per second of wall time (cores)."""
    free = total_cores - others_busy
    return max(1, min(cap, int(free + 0.5)))


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) since boot/start."""
    import psutil

    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0)
    own = psutil.Process().cpu_times()
    return busy, own.user + own.system


class ThreadPolicy:
    """torch's intra-op threads for a run: fixed (`threads` > 0 or OMP_NUM_THREADS), or `auto`,
    which re-decides at most every `interval_s` seconds of wall time from what other processes
    used since the last decision."""

    def __init__(
        self,
        threads: int,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        probe: Callable[[], tuple[float, float]] = cpu_seconds,
        total_cores: int | None = None,
    ):
        # OMP_NUM_THREADS is the user's fixed choice, as a positive `threads` is
        self.adaptive = threads == 0 and omp_num_threads() is None
        self.interval_s, self.clock, self.probe = interval_s, clock, probe
        self.total_cores = total_cores or os.cpu_count() or 1
        self.current = apply_threads(threads)
        self.changes = 0  # how often auto switched (recorded with the run)
        self._last = (clock(), *probe()) if self.adaptive else None

    def tick(self) -> int:
        """Call once per step; returns the threads in use."""
        if self._last is None:
            return self.current
        now = self.clock()
        t0, busy0, own0 = self._last
        if now - t0 < self.interval_s:
            return self.current
        busy, own = self.probe()
        others = max(0.0, (busy - busy0) - (own - own0)) / (now - t0)
        self._last = (now, busy, own)
        n = choose_threads(auto_cap(), self.total_cores, others)
        if n != self.current:
            self._set(n)
        return self.current

    def _set(self, n: int) -> None:
        import torch

        torch.set_num_threads(n)
        self.current, self.changes = n, self.changes + 1


# --- memory ------------------------------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks of up to 32 MB for reuse instead of handing them
    back to the kernel. CPU tensors of 128 kB or more are otherwise mapped fresh (and
    page-faulted in, zero-filled) on each allocation or the heap is trimmed after each free,
    depending on the process's allocation history: an evaluation forward pass of 1000 MNIST-1D
    samples measured 12 ms in some processes and 17 ms (3500 page faults per pass) in others
    (docs/benchmarks.md). Fixing both thresholds makes every process take the fast path; the
    cost is that memory freed after the peak stays with the process. Returns whether glibc
    took the settings (False elsewhere: musl, macOS, Windows)."""
    import ctypes

    if os.name != "posix":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


# --- arithmetic -----------------------------------------------------------------------------

_AMP_DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def check_precision(precision: str, device_type: str) -> None:
    """fp16 autocast is refused off CUDA: CPUs have no fast fp16 arithmetic (bf16 is there)."""
    if precision == "fp16" and device_type != "cuda":
        raise ConfigError(
            f"precision='fp16': needs a CUDA device (this run is on {device_type}, where fp16 "
            "is slow); use bf16 or fp32"
        )


def amp_dtype(precision: str) -> Any:
    """The autocast dtype of `precision` (None for fp32: no autocast at all)."""
    import torch

    name = _AMP_DTYPES[precision]
    return getattr(torch, name) if name else None


# --- work ahead of the training loop -------------------------------------------------------------


class Prefetcher(Generic[T]):
    """Computes `make(key)` for the keys the caller says come next, on one background thread.

    For pure functions of an int (a WASH plan of step s): `get(s, upcoming)` returns exactly
    `make(s)`, from the thread if it was asked for ahead, else computed now; then queues
    `upcoming`. Results for keys below `s` are dropped (a resume or a jump goes on correctly)."""

    def __init__(self, make: Callable[[int], T], name: str = "prefetch"):
        self._make = make
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: dict[int, Future[T]] = {}
        self.hits = self.misses = 0

    def get(self, key: int, upcoming: Iterable[int] = ()) -> T:
        future = self._pending.pop(key, None)
        for stale in [k for k in self._pending if k < key]:
            self._pending.pop(stale).cancel()
        if future is None:
            self.misses += 1
            value = self._make(key)
        else:
            self.hits += 1
            value = future.result()  # re-raises what the thread raised
        for k in upcoming:
            if k not in self._pending:
                self._pending[k] = self._pool.submit(self._make, k)
        return value

    def close(self) -> None:
        for f in self._pending.values():
            f.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=False)


# --- GPUs for several worker processes ---------------------------------------------------------


def visible_gpus(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries (indices or
    UUIDs): that variable's list when set, else every device torch counts."""
    given = environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def parse_gpus(text: str, visible: list[str]) -> list[str]:
    """`--gpus` as the devices to hand out: `auto` = every visible one, or indices into the
    visible devices (as torch numbers them: cuda:K), e.g. `0,1,2,3`."""
    if text.strip() == "auto":
        if not visible:
            raise ConfigError("--gpus auto: no CUDA device is visible on this machine")
        return list(visible)
    items = [t.strip() for t in text.split(",")]
    if not all(t.isdigit() for t in items):
        raise ConfigError(
            f"--gpus {text!r}: expected auto or comma-separated device indices such as 0,1,2,3"
        )
    index = [int(t) for t in items]
    twice = next((i for i in index if index.count(i) > 1), None)
    if twice is not None:
        raise ConfigError(
            f"--gpus {text!r}: device {twice} is listed twice (--workers puts several "
            "workers on one GPU)"
        )
    missing = next((i for i in index if i >= len(visible)), None)
    if missing is not None:
        raise ConfigError(
            f"--gpus {text!r}: there is no device {missing} ({len(visible)} CUDA device(s) "
            "visible here)"
        )
    return [visible[i] for i in index]


def assign_gpus(gpus: list[str], workers: int, per_trial: int = 1) -> list[str]:
    """Each worker's CUDA_VISIBLE_DEVICES: the devices cut into groups of `per_trial` (a trial's
    torchrun processes take one device each), dealt to the workers round-robin, so with more
    workers than groups several workers share a GPU. Devices left over from the cut are unused."""
    groups = [gpus[j : j + per_trial] for j in range(0, len(gpus) - per_trial + 1, per_trial)]
    if not groups:
        raise ConfigError(
            f"--gpus: {len(gpus)} device(s) for trials of --nproc-per-trial {per_trial} "
            "processes, one device each; give at least as many devices"
        )
    return [",".join(groups[i % len(groups)]) for i in range(workers)]
