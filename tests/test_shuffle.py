"""The WASH shuffle's exact invariants (docs/method.md) and its sampling statistics."""

import itertools
import math

import numpy as np
import pytest
import torch

from wash_sweeps.shuffle import (
    Segment,
    apply_plan,
    draw_plan,
    expected_fraction,
    layer_probabilities,
    shuffle_,
)


def _flat(n=5, d=4000, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _segs(d=4000, p=0.05):
    return [Segment(0, d // 4, p), Segment(d // 4, d - d // 4, p / 2)]


def test_multiset_mean_and_consensus_preserved():
    flat = _flat()
    before = flat.clone()
    plan = shuffle_(flat, _segs(), np.random.default_rng(1))
    assert plan.n_selected > 0
    assert torch.equal(flat.sort(0).values, before.sort(0).values)  # per-coordinate multiset
    torch.testing.assert_close(flat.mean(0), before.mean(0), rtol=0, atol=1e-12)
    cons = lambda w: ((w - w.mean(0)) ** 2).sum() / w.shape[0]  # noqa: E731
    assert abs(float(cons(flat) - cons(before))) < 1e-9
    unselected = torch.ones(flat.shape[1], dtype=torch.bool)
    unselected[plan.index] = False
    assert torch.equal(flat[:, unselected], before[:, unselected])


def test_p_zero_is_identity():
    flat = _flat()
    before = flat.clone()
    plan = shuffle_(flat, _segs(p=0.0), np.random.default_rng(1))
    assert plan.n_selected == 0 and torch.equal(flat, before)


def test_indices_distinct_and_in_their_segment():
    segs = [Segment(0, 100, 0.5), Segment(100, 10_000, 0.01), Segment(10_100, 7, 1.0)]
    plan = draw_plan(segs, 4, np.random.default_rng(3))
    idx = plan.index.numpy()
    assert len(np.unique(idx)) == len(idx)
    assert np.all(np.isin(np.arange(10_100, 10_107), idx))  # p = 1 selects everything
    assert ((idx >= 0) & (idx < 10_107)).all()


def test_selected_fraction_matches_p():
    # k ~ Binomial(d, p): the mean over draws is within a few standard errors of d * p
    d, p, n_draws = 50_000, 0.01, 200
    rng = np.random.default_rng(7)
    counts = [draw_plan([Segment(0, d, p)], 3, rng).n_selected for _ in range(n_draws)]
    se = math.sqrt(d * p * (1 - p) / n_draws)
    assert abs(np.mean(counts) - d * p) < 4 * se
    assert abs(np.var(counts) - d * p * (1 - p)) < 0.3 * d * p * (1 - p)


def test_fraction_of_values_changed_is_p_times_one_minus_1_over_n():
    d, p, n = 100_000, 0.02, 4
    plan = draw_plan([Segment(0, d, p)], n, np.random.default_rng(11))
    frac = plan.n_moved() / (n * d)
    expected = p * (1 - 1 / n)
    assert abs(frac - expected) < 5 * math.sqrt(expected / (n * d))


def test_permutations_uniform_over_all_orders():
    # chi-square over the 3! = 6 permutations of N = 3
    n = 3
    plan = draw_plan([Segment(0, 60_000, 0.2)], n, np.random.default_rng(5))
    perms = [tuple(r) for r in plan.perm.tolist()]
    counts = {q: 0 for q in itertools.permutations(range(n))}
    for q in perms:
        counts[q] += 1
    expected = len(perms) / len(counts)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 20.5  # p = 0.001 critical value for 5 degrees of freedom


def test_each_permutation_row_is_a_permutation_and_applied_as_defined():
    flat = _flat(n=4, d=50)
    before = flat.clone()
    plan = draw_plan([Segment(0, 50, 0.5)], 4, np.random.default_rng(2))
    apply_plan(flat, plan)
    for j, coord in enumerate(plan.index.tolist()):
        s = plan.perm[j].tolist()
        assert sorted(s) == [0, 1, 2, 3]
        for i in range(4):
            assert flat[i, coord] == before[s[i], coord]


def test_same_seed_same_plan():
    a = draw_plan(_segs(), 5, np.random.default_rng(42))
    b = draw_plan(_segs(), 5, np.random.default_rng(42))
    assert torch.equal(a.index, b.index) and torch.equal(a.perm, b.perm)


def test_layer_schedules():
    assert layer_probabilities([0, 0, 1, 2], 0.3, "uniform") == [0.3] * 4
    lin = layer_probabilities([0, 0, 1, 2, 3], 0.4, "linear")
    assert lin == pytest.approx([0.4, 0.4, 0.3, 0.2, 0.1])  # p (1 - l / L), L = 4
    assert layer_probabilities([0, 1], 0.4, "linear", n_layers=4) == pytest.approx([0.4, 0.3])
    with pytest.raises(ValueError, match="uniform, linear"):
        layer_probabilities([0], 0.1, "cubic")


def test_expected_fraction():
    segs = [Segment(0, 100, 0.1), Segment(100, 300, 0.0)]
    assert expected_fraction(segs) == pytest.approx(0.1 * 100 / 400)


def test_each_segment_is_selected_at_its_own_rate():
    # thinning from the largest p: each segment's count must still be Binomial(d_l, p_l)
    segs = [
        Segment(0, 20_000, 0.04),
        Segment(20_000, 30_000, 0.01),
        Segment(50_000, 10_000, 0.0),
        Segment(60_000, 40_000, 0.002),
    ]
    rng = np.random.default_rng(13)
    counts = np.zeros(len(segs))
    n_draws = 100
    for _ in range(n_draws):
        idx = draw_plan(segs, 3, rng).index.numpy()
        for i, s in enumerate(segs):
            counts[i] += ((idx >= s.offset) & (idx < s.offset + s.size)).sum()
    for c, s in zip(counts, segs, strict=True):
        mean, sd = s.size * s.p, math.sqrt(s.size * s.p * (1 - s.p) / n_draws)
        assert abs(c / n_draws - mean) <= 4 * sd + 1e-9, (s, c / n_draws)


def test_large_population_uses_argsort_permutations():
    plan = draw_plan([Segment(0, 5000, 0.2)], 12, np.random.default_rng(0))
    assert plan.perm.shape[1] == 12
    assert torch.equal(plan.perm.sort(1).values, torch.arange(12).expand_as(plan.perm))
