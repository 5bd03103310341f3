"""The distributed run: `torchrun ... -m wash_sweeps train --distributed` joins the process group
torchrun describes and trains this process's slice of members (gloo on CPU, NCCL on GPUs, chosen
from the config's device).

    torchrun --standalone --nproc-per-node=4 -m wash_sweeps train --distributed \\
        --preset mnist1d-fast --set n_members=4

Several machines: the same command on each, with torchrun's rendezvous flags
(`--nnodes=2 --node-rank=K --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT`).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..config import ConfigError, TrainConfig
from ..results import RunDir
from ..tracking import make_tracker
from ..train import Placement, resolve_device, train_and_evaluate
from .exchange import DistributedExchange, timeout_seconds

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def backend_for(cfg: TrainConfig) -> str:
    """NCCL when the run trains on CUDA, gloo otherwise."""
    return "nccl" if resolve_device(cfg.device).type == "cuda" else "gloo"


def init_process_group(cfg: TrainConfig, timeout_s: float | None = None) -> bool:
    """Join the group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT). Returns whether this call created it (and so must destroy it)."""
    if dist.is_initialized():
        return False
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ConfigError(
            f"--distributed runs under torchrun ({', '.join(missing)} not set): "
            "torchrun --standalone --nproc-per-node=N -m wash_sweeps train --distributed ..."
        )
    backend = backend_for(cfg)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    timeout = datetime.timedelta(seconds=timeout_seconds(timeout_s))
    dist.init_process_group(backend, timeout=timeout)
    return True


def _shared_checkpoint(cfg: TrainConfig, workdir: str | Path | None) -> dict[str, Any] | None:
    """Rank 0 reads the run's checkpoint and sends it to every rank (no shared disk needed)."""
    box = [None]
    if dist.get_rank() == 0:
        box[0] = RunDir(cfg.run_dir(workdir)).load_checkpoint()
    dist.broadcast_object_list(box, src=0)
    return box[0]


def process_placement(
    exchange: DistributedExchange, checkpoint: dict[str, Any] | None = None
) -> Placement:
    """This process's share of the run: its slice of members, the exchange, and rank 0 alone
    writing the run directory (the others get the do-nothing twin)."""
    return Placement(
        exchange, exchange.members, writes=exchange.rank == 0, shared=True, checkpoint=checkpoint
    )


def train_distributed(
    cfg: TrainConfig,
    workdir: str | Path | None = None,
    resume: bool = False,
    timeout_s: float | None = None,
    mlflow_parent_run_id: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """Train `cfg` with this process's slice of members. Returns the summary on rank 0 (which
    alone writes the run directory and talks to trackers), None on the other ranks.
    `mlflow_parent_run_id`: nest rank 0's MLflow run under a study's run (a sweep trial)."""
    created = init_process_group(cfg, timeout_s)
    try:
        exchange = DistributedExchange(cfg.n_members, timeout_s)
        placement = process_placement(
            exchange, _shared_checkpoint(cfg, workdir) if resume else None
        )
        tracker = None
        if placement.writes and mlflow_parent_run_id:
            tracker = make_tracker(cfg, cfg.run_dir(workdir), mlflow_parent_run_id, resume=resume)
        summary = train_and_evaluate(
            cfg, workdir, tracker=tracker, placement=placement, overwrite=overwrite
        )
        totals = exchange.totals()
        if not placement.writes:
            return None
        summary.update(totals)
        RunDir(summary["run_dir"]).write_summary(summary)
        return summary
    finally:
        if created:
            dist.destroy_process_group()
