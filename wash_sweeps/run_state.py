"""What one run holds while it trains: its `State` (checkpointed), its `Placement` (which
members this process trains, how it reaches the others, whether it writes), and the `Run` the
training and evaluation steps share; `lr_at`, the learning-rate schedule both read."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

from .config import TrainConfig
from .data import Data
from .methods import Exchange, LocalExchange, Method
from .population import Population
from .results import RunDir
from .runtime import ThreadPolicy
from .tracking import Tracker


def lr_at(cfg: TrainConfig, step: int, total: int, per_epoch: int) -> float:
    """Learning rate after `step` optimizer steps (schedule per iteration)."""
    warm = cfg.warmup_epochs * per_epoch
    if warm and step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(total - warm, 1)
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.lr_schedule == "step":
        return cfg.lr * (0.1 ** ((t >= 0.5) + (t >= 0.75)))
    return cfg.lr


@dataclasses.dataclass
class State:
    """What changes during a run besides the population (all of it checkpointed)."""

    step: int = 0
    epoch: int = 0  # epochs completed
    bytes_total: int = 0
    bytes_last_epoch: int = 0
    train_time_s: float = 0.0
    samples: int = 0
    evals: int = 0
    train_loss: float = math.nan  # the last epoch's mean training loss (a resumed end reports it)
    eval_time_s: float = 0.0  # seconds spent in evaluations
    wall_time_s: float = 0.0  # seconds from the run's start to its last evaluation (all segments)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Which members this process trains and how it reaches the others. By default
    (`Placement.local`) the whole population is here; a distributed run gives each process a
    slice, the transport between them, and one writing process (see `distributed`)."""

    exchange: Exchange
    members: list[int]
    writes: bool = True  # this process writes the run directory and talks to the trackers
    shared: bool = False  # other processes train the rest: every process goes through each step
    checkpoint: dict[str, Any] | None = None  # a shared resume: read once, sent to every process

    @classmethod
    def local(cls, n_members: int, writes: bool = True) -> Placement:
        return cls(LocalExchange(n_members), list(range(n_members)), writes)


class SilentRunDir:
    """The run directory of a process that does not write one (the other ranks of a distributed
    run), as nanoGPT's rank-0 logging: every write is dropped."""

    def write_config(self, config: dict[str, Any], derived: dict[str, Any]) -> None:
        pass

    def append_metrics(self, record: dict[str, Any]) -> None:
        pass

    def truncate_metrics(self, last_step: int) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass


@dataclasses.dataclass
class Run:
    cfg: TrainConfig
    data: Data
    pop: Population
    method: Method
    placement: Placement
    run_dir: RunDir | SilentRunDir
    tracker: Tracker
    device: torch.device
    per_epoch: int
    total_steps: int
    state: State
    threads: ThreadPolicy | None = None  # None: torch's threads as they are
    clock: float = dataclasses.field(default_factory=time.perf_counter)  # wall time counted up to
