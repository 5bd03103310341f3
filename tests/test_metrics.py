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
    m = population_predictions(logits, y)
    assert m["member/0/val_acc"] == 0.75 and m["member/1/val_acc"] == 0.75
    assert m["val/acc_ens"] == 1.0  # mean logits fix both members' single mistakes
    assert m["div/disagreement"] == pytest.approx(0.5)
    same = disagreement_and_kl(torch.stack([logits[0], logits[0]]))
    assert same["div/kl"] == pytest.approx(0.0, abs=1e-7) and same["div/disagreement"] == 0


def test_barrier_pairs():
    assert barrier_pairs(4, 3) == [(0, 1), (1, 2), (2, 3)]
    assert len(barrier_pairs(4, 0)) == 6
