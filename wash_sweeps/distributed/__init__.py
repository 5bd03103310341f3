"""WASH and its baselines over torch.distributed: one member (or a contiguous slice) per process.

Modules, one concern each:
- `exchange`: the transport, `DistributedExchange` (the torch.distributed twin of
  `methods.LocalExchange`), and `PeerFailure` when another process dies.
- `run`: the process group and `train_distributed`, what `wash-sweeps train --distributed`
  runs in each process torchrun starts.
- `job`: `run_torchrun`, a distributed run as a subprocess job followed through its
  metrics.jsonl (what `launch.run_one(..., nproc=K)` does).

    torchrun --standalone --nproc-per-node=4 -m wash_sweeps train --distributed \\
        --preset mnist1d-fast --set n_members=4
"""

from __future__ import annotations

from .exchange import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    DistributedExchange,
    ExchangeStats,
    PeerFailure,
    member_slices,
    timeout_seconds,
)
from .job import (
    LOG_NAME,
    RDZV_HOST_ENV,
    MetricsTail,
    TorchrunFailure,
    run_torchrun,
    torchrun_command,
)
from .run import backend_for, init_process_group, process_placement, train_distributed

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "LOG_NAME",
    "RDZV_HOST_ENV",
    "TIMEOUT_ENV",
    "DistributedExchange",
    "ExchangeStats",
    "MetricsTail",
    "PeerFailure",
    "TorchrunFailure",
    "backend_for",
    "init_process_group",
    "member_slices",
    "process_placement",
    "run_torchrun",
    "timeout_seconds",
    "torchrun_command",
    "train_distributed",
]
