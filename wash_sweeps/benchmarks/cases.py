"""What the benchmarks train: the preset models on their data, the project's step and a naive one.

A *case* is a preset model with the data it trains on. `ProjectLoop` is one training step as
`train_and_evaluate` takes it (per-member batches by tensor indexing, then
`Population.train_step`); `NaiveLoop` is what one would write without this project: N separate
nn.Modules, N torch.optim.SGD optimizers and N torch DataLoaders (shuffle=True) over a
TensorDataset. Both start from the same initialisations and the same hyper-parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from wash_sweeps import seeding
from wash_sweeps.config import TrainConfig
from wash_sweeps.data import Data, batch, epoch_order, load_data, steps_per_epoch
from wash_sweeps.models import build_model
from wash_sweeps.population import Population


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # the model
    preset: str
    overrides: tuple[tuple[str, Any], ...] = ()
    big: bool = False  # a CPU step takes seconds: only in --full mode (or a few one-step repeats)

    def config(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_preset(self.preset, **{**dict(self.overrides), **changes})


# CIFAR itself is not on this machine and the step's cost does not depend on pixel values, so the
# ResNets train on synthetic 3x32x32 data of CIFAR's shape
_CIFAR_SHAPED = (("dataset", "synthetic"), ("synthetic_shape", "3x32x32"), ("n_train", 2048))
CASES = {
    "cnn1d": Case("cnn1d", "mnist1d-fast"),
    "cnn_digits": Case("cnn_digits", "digits"),
    "resnet20": Case("resnet20", "cifar10-resnet18", (*_CIFAR_SHAPED, ("model", "resnet20")), True),
    "resnet18": Case("resnet18", "cifar10-resnet18", _CIFAR_SHAPED, True),
}
# --tiny: the same models on small synthetic data of the same shape (no dataset generation)
_TINY_SHAPES = {"cnn1d": "1x40", "cnn_digits": "1x8x8"}


def case_config(case: Case, tiny: bool, **changes: Any) -> TrainConfig:
    if tiny and case.name in _TINY_SHAPES:
        changes = {
            "dataset": "synthetic",
            "synthetic_shape": _TINY_SHAPES[case.name],
            "n_train": 512,
            **changes,
        }
    return case.config(**{"progress": False, "device": "cpu", **changes})


def case_data(case: Case, tiny: bool, device: torch.device | str = "cpu") -> Data:
    return load_data(case_config(case, tiny), device)


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """What waits for a device's queued work before a clock is read (nothing on a CPU)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


class MemberBatches:
    """Each member's batch of each step, as `train.member_batches` takes them: new per-member
    orders at every epoch start (amortised over the epoch as in training), then indexing."""

    def __init__(self, cfg: TrainConfig, data: Data, members: Sequence[int]):
        self.cfg, self.data, self.members = cfg, data, list(members)
        self.device = data.x_train.device
        self.per_epoch = steps_per_epoch(data.n_train, cfg.batch_size)
        self.step_no, self.epoch = 0, -1
        self.orders: list[torch.Tensor] = []

    def next(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        i = self.step_no % self.per_epoch
        if i == 0:
            self.epoch += 1
            self.orders = [
                epoch_order(self.cfg, self.data.n_train, m, self.epoch, self.device)
                for m in self.members
            ]
        self.step_no += 1
        return [batch(self.data, o, i, self.cfg.batch_size) for o in self.orders]


class ProjectLoop:
    """This project's training step for N members: batches by indexing, `Population.train_step`."""

    def __init__(self, cfg: TrainConfig, data: Data):
        self.cfg = cfg
        self.pop = Population(cfg, data.in_shape, data.n_classes, data.x_train.device)
        self.data = MemberBatches(cfg, data, self.pop.members)
        self.step_no = 0

    def step(self) -> None:
        self.pop.train_step(self.data.next(), self.cfg.lr, self.step_no)
        self.step_no += 1


class NaiveLoop:
    """The baseline: N modules, N torch.optim.SGD, N DataLoaders with shuffle=True."""

    def __init__(self, cfg: TrainConfig, data: Data):
        self.models, self.opts, self.loaders = [], [], []
        self.device = data.x_train.device  # on a GPU: DataLoader batches moved there, as usual
        dataset = TensorDataset(data.x_train.cpu(), data.y_train.cpu())
        for m in range(cfg.n_members):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seeding.derive(cfg.seed, seeding.INIT, m))
                model = build_model(cfg, data.in_shape, data.n_classes).to(self.device)
            self.models.append(model)
            self.opts.append(
                torch.optim.SGD(
                    model.parameters(),
                    lr=cfg.lr,
                    momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay,
                )
            )
            g = seeding.torch_generator(cfg.seed, seeding.DATA_ORDER, m, 0)
            self.loaders.append(
                DataLoader(
                    dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=g
                )
            )
        self.iters = [iter(loader) for loader in self.loaders]

    def _next(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            x, y = next(self.iters[m])
        except StopIteration:  # a new epoch: the DataLoader reshuffles
            self.iters[m] = iter(self.loaders[m])
            x, y = next(self.iters[m])
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def step(self) -> None:
        for m, (model, opt) in enumerate(zip(self.models, self.opts, strict=True)):
            x, y = self._next(m)
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
