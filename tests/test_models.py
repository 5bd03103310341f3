"""Every model of the zoo builds from the config and maps its input shape to class logits."""

import pytest
import torch

from wash_sweeps.config import TrainConfig
from wash_sweeps.models import build_model, count_parameters, layer_index


@pytest.mark.parametrize(
    "model,shape,dataset",
    [
        ("cnn1d", (1, 40), "mnist1d"),
        ("cnn_digits", (1, 8, 8), "digits"),
        ("mlp", (1, 8, 8), "digits"),
        ("resnet20", (3, 32, 32), "cifar10"),
        ("resnet18", (3, 32, 32), "cifar100"),
        ("vgg16_bn", (3, 32, 32), "cifar10"),
    ],
)
def test_forward_shape_and_layers(model, shape, dataset):
    cfg = TrainConfig(model=model, dataset=dataset, method="independent")
    n_classes = 100 if dataset == "cifar100" else 10
    net = build_model(cfg, shape, n_classes).eval()
    with torch.no_grad():
        out = net(torch.randn(2, *shape))
    assert out.shape == (2, n_classes)
    depth = layer_index(net)
    assert set(depth) == {n for n, _ in net.named_parameters()}
    assert min(depth.values()) == 0


def test_resnet18_is_the_cifar_variant():
    cfg = TrainConfig(model="resnet18", dataset="cifar10", method="independent")
    net = build_model(cfg, (3, 32, 32), 10)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)  # 3x3 stem, no pool
    assert 11_000_000 < count_parameters(net) < 11_300_000  # 11.17M, widths 64-128-256-512
