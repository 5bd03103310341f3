"""The communication methods against their formulas, and their exact byte counts."""

import numpy as np
import pytest
import torch

from wash_sweeps import seeding
from wash_sweeps.config import TrainConfig
from wash_sweeps.methods import allreduce_values, draw_pairs, make_method, pair_values
from wash_sweeps.population import Population


def _pop(**kw):
    cfg = TrainConfig.from_preset("tiny", **kw)
    pop = Population(cfg, (1, 40), 10)
    return cfg, pop


def _perturb(pop, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [pop.params, pop.buffers, *pop.opt_state.values()]:
            t.copy_(torch.randn(t.shape, generator=g))


def test_papa_pull_matches_formula():
    cfg, pop = _pop(method="papa", papa_every=10, papa_rate=0.05)
    _perturb(pop)
    method = make_method(cfg, pop, None, total_steps=100)
    before = pop.params.clone()
    assert method.after_step(9, lr_ratio=1.0) == 0  # iteration 9 of epoch 0: 9 % 10 != 0
    assert torch.equal(pop.params, before)
    sent = method.after_step(10, lr_ratio=0.5)  # iteration 10: a sync; rate scaled by lr ratio
    a = 1 - 0.05 * 0.5
    expected = a * before + (1 - a) * before.mean(0, keepdim=True)
    torch.testing.assert_close(pop.params, expected, rtol=1e-6, atol=1e-6)
    d = pop.spec.n_params + pop.spec.n_buffers
    assert sent == 2 * (cfg.n_members - 1) * d * 4


@pytest.mark.parametrize(("per_epoch", "k"), [(50, 10), (30, 10), (7, 3), (5, 10)])
def test_papa_pulls_on_the_official_schedule(per_epoch, k):
    """PAPA's main.py: `i` counts within the epoch from 0, pull when i % k == 0 (so at the
    first iteration of every epoch, and the count restarts each epoch)."""
    cfg, pop = _pop(method="papa", papa_every=k, epochs=3)
    method = make_method(cfg, pop, None, total_steps=per_epoch * 3)
    pulled = [s for s in range(per_epoch * 3) if method.after_step(s, 1.0) > 0]
    official = [e * per_epoch + i for e in range(3) for i in range(per_epoch) if i % k == 0]
    assert pulled == official


@pytest.mark.parametrize(("epochs", "every", "merges"), [
    (6, 2, [0, 2, 4]),
    (5, 2, [0, 2]),  # epoch 4 is the last: no merge after it
    (11, 5, [0, 5]),  # epoch 10 is the last
    (12, 5, [0, 5, 10]),
    (3, 1, [0, 1]),
    (1, 5, []),
])  # fmt: skip
def test_papa_all_merges_on_the_official_schedule(epochs, every, merges):
    """PAPA's main.py merges after epoch e when e % K == 0 (epoch 0 included: mix_from_start)
    and, at the last epoch, only permutes (u = 0): no merge."""
    cfg, pop = _pop(method="papa_all", papa_all_every=every, epochs=epochs)
    method = make_method(cfg, pop, None, total_steps=10 * epochs)
    assert [e for e in range(epochs) if method.after_epoch(e) > 0] == merges


def test_papa_all_replaces_members_by_mean():
    cfg, pop = _pop(method="papa_all", papa_all_every=2, epochs=4)
    _perturb(pop)
    method = make_method(cfg, pop, None, total_steps=100)
    mean = pop.params.mean(0)
    assert method.after_epoch(1) == 0
    assert method.after_epoch(2) > 0
    for r in range(pop.n_local):
        assert torch.equal(pop.params[r], mean)


def test_wash_moves_optimizer_state_and_buffers_with_the_same_coordinates():
    cfg, pop = _pop(method="wash", p=0.2, shuffle_optimizer_state=True, model="cnn1d")
    _perturb(pop)
    # tag each member's state with its member id so we can see where values went
    with torch.no_grad():
        for r in range(pop.n_local):
            pop.params[r].fill_(r)
            pop.opt_state["momentum_buffer"][r].fill_(10 + r)
    method = make_method(cfg, pop, None, total_steps=100)
    sent = method.after_step(0, 1.0)
    src_w = pop.params.round().long()
    src_m = pop.opt_state["momentum_buffer"].round().long() - 10
    assert torch.equal(src_w, src_m)  # momentum travelled exactly with its weight
    moved = int((src_w != torch.arange(pop.n_local)[:, None]).sum())
    assert moved > 0 and sent == 2 * moved * 4  # weights + momentum, float32


def test_wash_shuffles_bn_buffers_when_asked():
    cfg = TrainConfig.from_preset(
        "tiny",
        dataset="synthetic",
        model="resnet20",
        synthetic_shape="3x8x8",
        method="wash",
        p=0.3,
        layer_schedule="uniform",
        shuffle_buffers=True,
    )
    pop = Population(cfg, (3, 8, 8), 10)
    with torch.no_grad():
        for r in range(pop.n_local):
            pop.buffers[r].fill_(r)
    before = pop.buffers.clone()
    method = make_method(cfg, pop, None, total_steps=10)
    sent = method.after_step(0, 1.0)
    moved_buffers = int((pop.buffers != before).sum())
    assert moved_buffers > 0
    assert torch.equal(pop.buffers.sort(0).values, before.sort(0).values)
    assert sent >= moved_buffers * 4


def test_wash_bytes_equal_an_independent_recount():
    cfg, pop = _pop(method="wash", p=0.05, layer_schedule="linear")
    method = make_method(cfg, pop, None, total_steps=50)
    with torch.no_grad():
        pop.params.copy_(torch.arange(pop.n_local, dtype=torch.float32)[:, None])
    total, recount = 0, 0
    for step in range(5):
        # every member holds a distinct value, so a value that changes owner is a changed entry
        with torch.no_grad():
            pop.params.copy_(torch.arange(pop.n_local, dtype=torch.float32)[:, None])
        total += method.after_step(step, 1.0)
        recount += int((pop.params != torch.arange(pop.n_local)[:, None]).sum())
    assert recount > 0 and total == recount * 4


def test_wash_plans_are_derived_from_seed_and_step():
    cfg, pop = _pop(method="wash", p=0.05)
    m = make_method(cfg, pop, None, total_steps=50)
    a, _ = m.plans(7)
    b, _ = m.plans(7)
    assert torch.equal(a.index, b.index) and torch.equal(a.perm, b.perm)
    c, _ = m.plans(8)
    assert not torch.equal(a.index, c.index)
    rng = seeding.numpy_rng(cfg.seed, seeding.SHUFFLE, 7)
    assert rng.random() == seeding.numpy_rng(cfg.seed, seeding.SHUFFLE, 7).random()


def test_wash_stops_at_shuffle_until_and_honours_shuffle_every():
    cfg, pop = _pop(method="wash", p=0.5, shuffle_every=2, shuffle_until=0.5)
    m = make_method(cfg, pop, None, total_steps=10)
    assert m.plans(0)[0] is None  # (0 + 1) % 2 != 0
    assert m.plans(1)[0] is not None
    assert m.plans(5)[0] is None  # 5 >= 0.5 * 10
    assert m.after_step(7, 1.0) == 0


def _same_plans(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return torch.equal(a.index, b.index) and torch.equal(a.perm, b.perm) and a.n_fixed == b.n_fixed


def _wash(prefetch: bool, **kw):
    from wash_sweeps.methods import Wash

    cfg = TrainConfig.from_preset(
        "tiny",
        dataset="synthetic",
        model="resnet20",
        synthetic_shape="3x8x8",
        method="wash",
        p=0.05,
        p_schedule="cosine",
        shuffle_until=0.9,
        shuffle_buffers=True,
        **kw,
    )
    pop = Population(cfg, (3, 8, 8), 10)
    return Wash(cfg, pop, make_method(cfg, pop, None, 1).exchange, 400, prefetch=prefetch)


@pytest.mark.parametrize("every", [1, 3])
def test_prefetched_plans_equal_drawn_plans(every):
    """Plans drawn ahead on the thread are the plans drawn at the step: sequentially, after a
    resume at a later step (a fresh method), after a jump within one method, to the end."""
    drawn, ahead = _wash(False, shuffle_every=every), _wash(True, shuffle_every=every)
    assert ahead.prefetcher is not None and drawn.prefetcher is None
    resumed = _wash(True, shuffle_every=every)
    for steps, method in (
        (range(0, 150), ahead),
        (range(250, 400), ahead),
        (range(137, 200), resumed),
    ):
        for step in steps:
            want, got = drawn.plans(step), method.plans(step)
            assert _same_plans(want[0], got[0]) and _same_plans(want[1], got[1]), step
    assert drawn.plans(360) == (None, None)  # past shuffle_until
    assert ahead.prefetcher.hits > 100 // every  # they did come from the thread
    ahead.prefetcher.close()


def test_prefetched_plans_shuffle_like_drawn_ones():
    drawn, ahead = _wash(False), _wash(True)
    for m in (drawn, ahead):
        _perturb(m.pop)
    sent = [[m.after_step(s, 1.0) for s in range(20)] for m in (drawn, ahead)]
    assert sent[0] == sent[1]
    assert torch.equal(drawn.pop.params, ahead.pop.params)
    assert torch.equal(drawn.pop.buffers, ahead.pop.buffers)


def test_upcoming_shuffle_steps():
    m = _wash(False, shuffle_every=3)  # shuffles at steps 2, 5, 8, ... below 360
    assert m.upcoming(2, 2) == [5, 8] and m.upcoming(3, 2) == [5, 8] and m.upcoming(0, 1) == [2]
    assert m.upcoming(353, 3) == [356, 359]
    assert all(m.shuffles_at(s) for s in m.upcoming(100, 5))


@pytest.mark.parametrize(
    "sched,t,expected", [("constant", 0.5, 1.0), ("linear", 0.25, 0.75), ("cosine", 0.5, 0.5)]
)
def test_p_schedule(sched, t, expected):
    cfg, pop = _pop(method="wash", p_schedule=sched)
    m = make_method(cfg, pop, None, total_steps=100)
    assert m.p_factor(int(t * 100)) == pytest.approx(expected)


def test_independent_sends_nothing():
    cfg, pop = _pop(method="independent")
    m = make_method(cfg, pop, None, total_steps=10)
    before = pop.params.clone()
    assert m.after_step(0, 1.0) == 0 and m.after_epoch(0) == 0
    assert torch.equal(pop.params, before)


def test_allreduce_count():
    assert allreduce_values(5, 1000) == 8000
    assert allreduce_values(1, 1000) == 0


def test_expected_fraction_logged():
    cfg, pop = _pop(method="wash", p=0.01, layer_schedule="uniform")
    d = make_method(cfg, pop, None, 10).derived()
    assert d["wash/expected_fraction_selected"] == pytest.approx(0.01)
    assert d["wash/expected_fraction_changed"] == pytest.approx(0.01 * (1 - 1 / 3))
    assert np.isclose(d["wash/p_first_layer"], 0.01)


# --- PAPA-2 and DART ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_papa2_draws_n_distinct_pairs_uniformly(n):
    from collections import Counter
    from itertools import combinations

    counts = Counter()
    for epoch in range(3000):
        pairs = draw_pairs(n, seeding.numpy_rng(0, seeding.PAIRS, epoch))
        assert len(pairs) == n == len(set(pairs))
        assert all(0 <= a < b < n for a, b in pairs)
        counts.update(pairs)
    every = list(combinations(range(n), 2))
    assert set(counts) == set(every)  # unlike PAPA's code, whose first N pairs leave some out
    expected = 3000 * n / len(every)
    assert all(abs(c - expected) < 6 * expected**0.5 for c in counts.values())


def test_papa2_with_two_members_averages_the_one_pair_twice():
    """As PAPA's code does (n_groups = [[0, 1], [0, 1]]): both become the average."""
    assert draw_pairs(2, np.random.default_rng(0)) == [(0, 1), (0, 1)]


def test_papa2_replaces_members_by_pair_averages_on_papa_alls_schedule():
    cfg, pop = _pop(method="papa2", papa_all_every=2, epochs=5, n_members=5)
    _perturb(pop)
    method = make_method(cfg, pop, None, total_steps=100)
    assert [e for e in range(5) if method.is_merge_epoch(e)] == [0, 2]
    before_p, before_b = pop.params.clone(), pop.buffers.clone()
    momentum = pop.opt_state["momentum_buffer"].clone()
    sent = method.after_epoch(2)
    pairs = method.pairs(2)
    assert pairs == draw_pairs(5, seeding.numpy_rng(cfg.seed, seeding.PAIRS, 2))  # (seed, epoch)
    for k, (a, b) in enumerate(pairs):
        assert torch.equal(pop.params[k], (before_p[a] + before_p[b]) * 0.5)
        assert torch.equal(pop.buffers[k], (before_b[a] + before_b[b]) * 0.5)
    assert torch.equal(pop.opt_state["momentum_buffer"], momentum)  # not the optimizer state
    # recount: member k receives the full state of each pair member that is not itself
    d = pop.spec.n_params + pop.spec.n_buffers
    needed = sum(len({a, b} - {k}) for k, (a, b) in enumerate(pairs))
    assert sent == needed * d * 4 == pair_values(pairs, d) * 4
    assert method.after_epoch(3) == 0 and method.after_epoch(4) == 0  # 4 is the last epoch


def test_dart_forces_member_regularization_and_merges_like_papa_all():
    from wash_sweeps.regularization import NONE

    cfg, pop = _pop(method="dart", papa_all_every=1, epochs=3, member_regularization=False)
    assert cfg.uses_member_regularization
    assert any(pop.regularization(m) != NONE for m in range(cfg.n_members))
    ref_cfg, ref = _pop(method="papa_all", papa_all_every=1, epochs=3)
    assert all(ref.regularization(m) == NONE for m in range(cfg.n_members))
    _perturb(pop)
    _perturb(ref)
    sent = make_method(cfg, pop, None, 30).after_epoch(0)
    assert sent == make_method(ref_cfg, ref, None, 30).after_epoch(0) > 0
    assert torch.equal(pop.params, ref.params)
