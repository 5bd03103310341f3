"""The vectorised population step (torch.func.vmap over the stacked members) agrees with the
loop: losses, weights, optimizer state, BatchNorm running statistics and counters."""

from __future__ import annotations

import pytest
import torch

from wash_sweeps.config import ConfigError, TrainConfig
from wash_sweeps.population import Population

CASES = {
    "cnn1d": ("tiny", (1, 40), {}),
    "cnn_digits": ("digits", (1, 8, 8), {}),
    "resnet20": ("tiny", (3, 8, 8), {"model": "resnet20"}),  # BatchNorm
}


def _pops(name: str, **kw) -> tuple[Population, Population]:
    preset, shape, extra = CASES[name]
    shape_text = "x".join(map(str, shape))
    cfg = TrainConfig.from_preset(
        preset, dataset="synthetic", synthetic_shape=shape_text, n_members=3, **extra, **kw
    )
    return Population(cfg, shape, 10), Population(cfg.replace(vectorize=True), shape, 10)


def _batches(shape: tuple[int, ...], step: int, n: int = 3) -> list:
    g = torch.Generator().manual_seed(step)
    return [(torch.randn(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g))
            for _ in range(n)]  # fmt: skip


def _sync(src: Population, dst: Population) -> None:
    """dst takes src's whole state, so one step of each starts from the same point."""
    dst.load_state_dict(src.state_dict())


# relative error of a member's gradient: a ResNet's fp32 kernels differ from fp64 by ~1% on
# some batches here (the loop's, not the vmap's: checked against a float64 copy), so the two
# fp32 paths are compared at that level; the small CNNs agree to rounding
GRAD_RTOL = {"cnn1d": 1e-4, "cnn_digits": 1e-4, "resnet20": 3e-2}


@pytest.mark.parametrize("name", list(CASES))
def test_vectorized_and_looped_steps_agree(name):
    """From the same state, one step each: losses, every member's gradient, the updated weights
    and optimizer state, BN running statistics and counters agree within tolerance."""
    looped, vectorized = _pops(name)
    assert vectorized.vectorized and not looped.vectorized
    shape = CASES[name][1]
    for step in range(4):
        _sync(looped, vectorized)
        a = looped.train_step(_batches(shape, step), 0.05, step)
        b = vectorized.train_step(_batches(shape, step), 0.05, step)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        err = (looped.grads - vectorized.grads).norm(dim=1) / looped.grads.norm(dim=1)
        assert float(err.max()) < GRAD_RTOL[name], (step, err)
        torch.testing.assert_close(looped.buffers, vectorized.buffers, rtol=1e-4, atol=1e-5)
        for k, v in looped.opt_state.items():
            assert float((v - vectorized.opt_state[k]).norm() / v.norm()) < GRAD_RTOL[name]
    lr_step = (looped.params - vectorized.params).abs().max()
    assert float(lr_step) < 0.05 * 2 * GRAD_RTOL[name] * float(looped.grads.abs().max()) + 1e-6
    for d, e in zip(looped.int_buffers(), vectorized.int_buffers(), strict=True):
        assert all(torch.equal(d[k], e[k]) for k in d)  # num_batches_tracked, per member
    if name == "resnet20":  # the running statistics did move, and like the loop's
        fresh = _pops(name)[1]
        assert not torch.equal(vectorized.buffers, fresh.buffers)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_vectorized_autocast_agrees_loosely_and_learns(precision):
    looped, vectorized = _pops("cnn1d", precision=precision)  # fp16: with the scaler
    losses = []
    for step in range(15):
        a = looped.train_step(_batches((1, 40), 0), 0.05, step)
        b = vectorized.train_step(_batches((1, 40), 0), 0.05, step)
        losses.append(float(b.mean()))
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)
    assert losses[-1] < losses[0]


def test_vectorize_refuses_per_member_regularization():
    with pytest.raises(ConfigError, match=r"^vectorize=true: members with their own") as e:
        TrainConfig.from_preset("tiny", vectorize=True, method="dart")
    assert "\n" not in str(e.value)
