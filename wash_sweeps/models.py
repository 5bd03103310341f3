"""The model zoo, built from config fields: small CPU models and the CIFAR architectures.

`build_model(cfg, in_shape, n_classes)` returns an ordinary nn.Module. `layer_index(model)`
gives each parameter its depth l (a module that owns parameters is one layer, so a conv's weight
and bias share l), which the linear layer schedule of the shuffle reads.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .config import TrainConfig


class CNN1D(nn.Module):
    """MNIST-1D's small 1-D CNN: three conv layers (stride 2) and a linear head."""

    def __init__(self, in_channels: int, length: int, n_classes: int, width: int = 32):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, width, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        with torch.no_grad():
            n_flat = self._features(torch.zeros(1, in_channels, length)).shape[1]
        self.fc = nn.Linear(n_flat, n_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self._features(x))


class DigitsCNN(nn.Module):
    """A small 2-D CNN for 8x8 digits: two 3x3 convs, a 2x2 pool, a hidden linear layer."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 32, side: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * (side // 2) ** 2, 128)
        self.fc2 = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class MLP(nn.Module):
    def __init__(self, n_inputs: int, n_classes: int, width: int = 32, depth: int = 3):
        super().__init__()
        dims = [n_inputs] + [width * 4] * (depth - 1)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.out = nn.Linear(dims[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.out(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNets: 3x3 stem, no max-pool. ResNet-18: widths 64-128-256-512, [2,2,2,2] blocks;
    ResNet-20: widths 16-32-64, [3,3,3] blocks."""

    def __init__(
        self, blocks: Sequence[int], widths: Sequence[int], in_channels: int, n_classes: int
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(in_planes, w, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class VGG16BN(nn.Module):
    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, in_channels: int, n_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(512, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def build_model(cfg: TrainConfig, in_shape: Sequence[int], n_classes: int) -> nn.Module:
    """A fresh model for one member; `in_shape` excludes the batch dimension."""
    c = in_shape[0]
    if cfg.model == "cnn1d":
        return CNN1D(c, in_shape[1], n_classes, cfg.width)
    if cfg.model == "cnn_digits":
        return DigitsCNN(c, n_classes, cfg.width, side=in_shape[1])
    if cfg.model == "mlp":
        n_in = 1
        for d in in_shape:
            n_in *= d
        return MLP(n_in, n_classes, cfg.width)
    if cfg.model == "resnet18":
        return CifarResNet([2, 2, 2, 2], [64, 128, 256, 512], c, n_classes)
    if cfg.model == "resnet20":
        return CifarResNet([3, 3, 3], [16, 32, 64], c, n_classes)
    if cfg.model == "vgg16_bn":
        return VGG16BN(c, n_classes)
    raise ValueError(f"model={cfg.model!r}: unknown")


def layer_index(model: nn.Module) -> dict[str, int]:
    """Parameter name -> depth l, counting modules that own parameters in registration order
    (input to output for every model here)."""
    depth: dict[str, int] = {}
    layer = 0
    for mod_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        for pname, _ in own:
            depth[f"{mod_name}.{pname}" if mod_name else pname] = layer
        layer += 1
    return depth


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
