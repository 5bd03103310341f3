"""The science metrics against hand computations."""

import pytest
import torch

from wash_sweeps.config import TrainConfig
from wash_sweeps.metrics import (
    barrier,
    barrier_pairs,
    consensus_distance,
    disagreement_and_kl,
    loss_curve,
    mean_pairwise_distance,
    population_predictions,
)
from wash_sweeps.population import Population


def test_loss_barrier_of_a_model_with_itself_is_zero():
    cfg = TrainConfig.from_preset("tiny")
    pop = Population(cfg, (1, 40), 10)
    x, y = torch.randn(64, 1, 40), torch.randint(0, 10, (64,))
    a = (pop.params[0], pop.buffers[0])
    curve = loss_curve(pop.new_model(), a, a, x, y, points=11, batch_size=32)
    assert len(curve) == 11 and max(curve) - min(curve) < 1e-6
    assert barrier(curve) == pytest.approx(0.0, abs=1e-6)


def test_barrier_definition():
    assert barrier([1.0, 3.0, 2.0]) == pytest.approx(3.0 - 1.5)
    assert barrier([1.0, 1.5, 2.0]) == pytest.approx(0.0)
    assert barrier([2.0, 0.5, 1.0]) == pytest.approx(0.0)  # endpoints count: alpha = 0 gives 0


def test_consensus_and_pairwise_distance():
    w = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    mean = w.mean(0)
    expected = float(((w - mean) ** 2).sum() / 3)
    c = consensus_distance(w, {"a": (0, 1), "b": (1, 2)})
    assert c["div/consensus"] == pytest.approx(expected)
    assert c["div/consensus/a"] + c["div/consensus/b"] == pytest.approx(expected)
    d = (2.0 + 2.0 + 8**0.5) / 3
    assert mean_pairwise_distance(w) == pytest.approx(d)


def test_ensemble_disagreement_and_kl():
    y = torch.tensor([0, 1, 1, 0])
    logits = torch.tensor(
        [
            [[5.0, 0], [0, 5], [5, 0], [5, 0]],  # member 0: right, right, wrong, right
            [[0, 4.0], [0, 5], [0, 6], [5, 0]],  # member 1: wrong, right, right, right
        ]
    )
    m = population_predictions(logits, y, "test")
    assert m["member/0/test_acc"] == 0.75 and m["member/1/test_acc"] == 0.75
    assert m["test/acc_ens"] == 1.0  # mean logits fix both members' single mistakes
    assert all(k.startswith(("test/", "member/")) for k in m)
    assert population_predictions(logits, y, "val")["val/acc_member_min"] == 0.75
    assert disagreement_and_kl(logits)["div/disagreement"] == pytest.approx(0.5)
    same = disagreement_and_kl(torch.stack([logits[0], logits[0]]))
    assert same["div/kl"] == pytest.approx(0.0, abs=1e-7) and same["div/disagreement"] == 0


def test_barrier_pairs():
    assert barrier_pairs(4, 3) == [(0, 1), (1, 2), (2, 3)]
    assert len(barrier_pairs(4, 0)) == 6


def _trained_resnet20(seed: int):
    """A small BN ResNet-20 trained a few steps on synthetic data (its BN statistics then
    differ from the reset ones)."""
    from wash_sweeps.averaging import reestimate_bn

    cfg = TrainConfig.from_preset(
        "tiny", dataset="synthetic", model="resnet20", synthetic_shape="3x8x8", width=8,
        seed=seed, n_members=2,
    )  # fmt: skip
    pop = Population(cfg, (3, 8, 8), 10)
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(32, 3, 8, 8, generator=g) for _ in range(8)]
    ys = [torch.randint(0, 10, (32,), generator=g) for _ in range(8)]
    for step, (x, y) in enumerate(zip(xs, ys, strict=True)):
        pop.train_step([(x, y), (x.flip(0), y.flip(0))], lr=0.1, step=step)
    return pop, xs, reestimate_bn


def test_bn_barrier_reestimates_statistics_at_every_point():
    """With re-estimation, the curve's end points are the members' own losses with their BN
    statistics re-estimated on the same batches; without it they are the members' losses with
    their running statistics; every interior point differs between the two."""
    pop, xs, reestimate_bn = _trained_resnet20(0)
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 10, (64,))
    a, b = (pop.params[0], pop.buffers[0]), (pop.params[1], pop.buffers[1])
    plain = loss_curve(pop.new_model(), a, b, x, y, points=5, batch_size=64)
    redone = loss_curve(pop.new_model(), a, b, x, y, points=5, batch_size=64, bn_batches=xs)
    from torch.nn import functional as F

    for row, end in ((0, 0), (1, -1)):
        model = pop.models[row]
        with torch.no_grad():
            assert plain[end] == pytest.approx(float(F.cross_entropy(model.eval()(x), y)))
            spare = pop.new_model()
            spare[1].copy_(pop.params[row])
            spare[2].copy_(pop.buffers[row])
            fresh = reestimate_bn(spare[0], xs)
            assert redone[end] == pytest.approx(float(F.cross_entropy(fresh(x), y)), rel=1e-5)
    assert all(abs(p - r) > 1e-6 for p, r in zip(plain[1:-1], redone[1:-1], strict=True))


def test_bn_reestimation_leaves_a_model_without_bn_alone():
    cfg = TrainConfig.from_preset("tiny")
    pop = Population(cfg, (1, 40), 10)
    x, y = torch.randn(64, 1, 40), torch.randint(0, 10, (64,))
    a, b = (pop.params[0], pop.buffers[0]), (pop.params[1], pop.buffers[1])
    plain = loss_curve(pop.new_model(), a, b, x, y, points=5, batch_size=32)
    same = loss_curve(pop.new_model(), a, b, x, y, points=5, batch_size=32, bn_batches=[x])
    assert plain == same


def test_known_end_points_give_the_same_curve():
    """A caller that already has L(0) and L(1) (the members' own losses) gets the same curve
    with only the interior points evaluated."""
    cfg = TrainConfig.from_preset("tiny")
    pop = Population(cfg, (1, 40), 10)
    x, y = torch.randn(64, 1, 40), torch.randint(0, 10, (64,))
    a, b = (pop.params[0], pop.buffers[0]), (pop.params[1], pop.buffers[1])
    full = loss_curve(pop.new_model(), a, b, x, y, points=5, batch_size=32)
    calls = []
    spare = pop.new_model()
    hook = spare[0].register_forward_hook(lambda *_: calls.append(1))
    reused = loss_curve(spare, a, b, x, y, points=5, batch_size=32, ends=(full[0], full[-1]))
    hook.remove()
    assert reused == pytest.approx(full, abs=1e-6)
    assert len(calls) == 3 * 2  # 3 interior points x 2 batches of 32: no end point re-evaluated
