"""Git Re-Basin weight matching: specs of the zoo, exact recovery, the aligned barrier, and the
aligned metrics of a run's final evaluation.

    .venv/bin/pytest tests/test_align.py          # ~35 s on 2 cores (-m "not slow": ~4 s)
"""

import math

import pytest
import torch

from wash_sweeps import train_and_evaluate
from wash_sweeps.align import (
    align_rows,
    apply_permutation,
    group_sizes,
    permutation_spec,
    weight_matching,
)
from wash_sweeps.config import TrainConfig
from wash_sweeps.models import build_model
from wash_sweeps.population import Population

# (model, dataset, input shape): every architecture of the zoo, small where it has a width
ZOO = [
    ("cnn1d", "mnist1d", (1, 40)),
    ("cnn_digits", "digits", (1, 8, 8)),
    ("mlp", "mnist1d", (1, 40)),
    ("resnet20", "cifar10", (3, 8, 8)),
    ("resnet18", "cifar10", (3, 8, 8)),
    ("vgg16_bn", "cifar10", (3, 32, 32)),
]


def _model(name: str, dataset: str, shape, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(TrainConfig(dataset=dataset, model=name, width=4), shape, 10)
    with torch.no_grad():  # BN statistics and affine terms away from 1/0, so they matter
        for k, v in model.state_dict().items():
            if v.is_floating_point() and ("running" in k or "bn" in k or "features" in k):
                v.add_(torch.rand_like(v))
    return model.eval()


def _random_perm(spec, tensors, seed: int):
    g = torch.Generator().manual_seed(seed)
    return {grp: torch.randperm(n, generator=g) for grp, n in group_sizes(spec, tensors).items()}


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize(("name", "dataset", "shape"), ZOO)
def test_permuted_model_computes_the_same_function(name, dataset, shape):
    model = _model(name, dataset, shape)
    spec = permutation_spec(model)
    state = model.state_dict()
    assert set(spec.axes_to_perm) == set(state)  # every tensor is named: none left unpermuted
    perm = _random_perm(spec, state, seed=1)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perm.values())
    permuted = apply_permutation(spec, perm, state)
    assert any(not torch.equal(permuted[k], state[k]) for k in state)
    twin = build_model(TrainConfig(dataset=dataset, model=name, width=4), shape, 10)
    twin.load_state_dict(permuted)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(twin.eval()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "dataset", "shape"),
    [*ZOO[:4], *(pytest.param(*z, marks=pytest.mark.slow) for z in ZOO[4:])],
)
def test_matching_a_permuted_copy_recovers_the_permutation(name, dataset, shape):
    model = _model(name, dataset, shape)
    spec = permutation_spec(model)
    a = _params(model)
    perm = _random_perm(spec, a, seed=3)
    b = apply_permutation(spec, perm, a)
    found = weight_matching(spec, a, b, seed=0)
    for group, p in perm.items():  # b's unit i is a's unit p[i]: undone by p's inverse
        assert torch.equal(found[group], torch.argsort(p)), group
    back = apply_permutation(spec, found, b)
    assert all(torch.equal(back[k], a[k]) for k in a)  # distance zero


def test_align_rows_maps_permuted_copies_of_member_0_onto_it():
    """Flat layout with BN buffers (ResNet-20): members that are permuted copies of member 0,
    statistics included, all become member 0 exactly."""
    cfg = TrainConfig.from_preset(
        "tiny", dataset="synthetic", model="resnet20", synthetic_shape="3x8x8", n_members=3
    )
    pop = Population(cfg, (3, 8, 8), 10)
    with torch.no_grad():
        pop.buffers.add_(torch.rand(pop.buffers.shape))
    spec = permutation_spec(pop.models[0])
    state0 = {k: v.clone() for k, v in pop.models[0].state_dict().items()}
    for r in (1, 2):
        pop.models[r].load_state_dict(
            apply_permutation(spec, _random_perm(spec, state0, seed=r), state0)
        )
    assert not torch.equal(pop.params[1], pop.params[0])
    params, buffers = align_rows(spec, pop.spec, pop.params, pop.buffers, seed=0)
    for r in (1, 2):
        assert torch.equal(params[r], pop.params[0])
        assert torch.equal(buffers[r], pop.buffers[0])


@pytest.mark.slow
def test_independent_run_reports_aligned_metrics_with_a_lower_barrier(tmp_path, tiny_cfg):
    """Independently trained members (MNIST-1D, 2 epochs): the average is at chance and the
    members are separated by a barrier; after weight matching the barrier is lower and the
    average works."""
    s = train_and_evaluate(tiny_cfg(method="independent"), tmp_path / "run")
    for k in ("val/acc_aligned", "test/acc_aligned", "test/loss_aligned", "barrier/aligned_mean"):
        assert k in s and math.isfinite(s[k]), k
    assert s["barrier/aligned_mean"] < s["barrier/mean"]
    assert s["test/acc_aligned"] > s["test/acc_avg"] + 0.1
    assert s["curves"]["aligned_pair/0-1"]
    off = tiny_cfg(method="independent", align_at_end=False, epochs=1, n_train=256)
    summary = train_and_evaluate(off, tmp_path / "off")
    assert not any("aligned" in k for k in [*summary, *summary["curves"]])
