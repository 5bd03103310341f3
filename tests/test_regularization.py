"""PAPA's per-member regularisation grid and its batch transforms (mixup, CutMix, erasing)."""

import itertools

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from wash_sweeps import regularization as R
from wash_sweeps import train_and_evaluate
from wash_sweeps.config import TrainConfig
from wash_sweeps.population import Population

SHAPES = [(8, 2, 40), (8, 3, 8, 8)]  # MNIST-1D-like signals and digits-like images


def _batch(shape, n_classes=10):
    # distinct values everywhere, so "changed" is exactly "replaced"; labels distinct and
    # different from their mirror partner (B even), so each target row shows lam directly
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return x, torch.arange(shape[0]) % n_classes


def _rng(i=0):
    return np.random.default_rng(i)


def _is_one_box(region):
    """True when the True entries of an (L,) or (H, W) mask form one segment / rectangle."""
    idx = region.nonzero()
    if not len(idx):
        return True
    lo, hi = idx.min(0).values, idx.max(0).values + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return bool(region[box].all()) and int(region.sum()) == region[box].numel()


# --- the grid -----------------------------------------------------------------------------------


def test_grid_is_papas_product():
    g = R.grid(0)
    assert len(g) == 81 and len(set(g)) == 81
    assert {e.mixup for e in g} == {0.0, 0.5, 1.0}
    assert {e.smoothing for e in g} == {0.0, 0.05, 0.1}
    assert {e.cutmix for e in g} == {0.0, 0.5, 1.0}
    assert {e.erase for e in g} == {0.0, 0.15, 0.35}
    product = itertools.product(R.MIXUP, R.SMOOTHING, R.CUTMIX, R.ERASE)
    assert set(g) == {R.MemberRegularization(*v) for v in product}


def test_grid_shuffle_is_deterministic_per_seed():
    assert R.grid(3) == R.grid(3)
    assert R.grid(3) != R.grid(4)
    product = itertools.product(R.MIXUP, R.SMOOTHING, R.CUTMIX, R.ERASE)
    assert R.grid(3) != [R.MemberRegularization(*v) for v in product]


def test_member_k_takes_entry_k_mod_81():
    g = R.grid(5)
    for k in (0, 1, 40, 80, 81, 100):
        assert R.for_member(5, k, True) == g[k % 81]


def test_disabled_is_all_zeros():
    assert R.for_member(5, 7, False) == R.MemberRegularization(0.0, 0.0, 0.0, 0.0)
    _, pop = _population(member_regularization=False)
    assert pop.regularization(0) == R.NONE


# --- the transforms -----------------------------------------------------------------------------


def _mix(shape, reg, seed=0, n_classes=10):
    x, y = _batch(shape, n_classes)
    out, t = R.mix_batch(x, y, n_classes, reg, _rng(seed))
    return x, y, out, t


@pytest.mark.parametrize("shape", SHAPES)
def test_mixup_blends_with_the_mirrored_batch(shape):
    x, y, out, t = _mix(shape, R.MemberRegularization(mixup=1.0))
    b = len(y)
    rows = torch.arange(b)
    lam = float(t[0, y[0]])
    assert 0 < lam < 1
    perm = rows.flip(0)
    torch.testing.assert_close(out, lam * x + (1 - lam) * x[perm])
    torch.testing.assert_close(t[rows, y], torch.full((b,), lam))
    torch.testing.assert_close(t[rows, y[perm]], torch.full((b,), 1 - lam))
    torch.testing.assert_close(t.sum(1), torch.ones(b))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(5))
def test_cutmix_pastes_a_box_and_weights_by_its_area(shape, seed):
    x, y, out, t = _mix(shape, R.MemberRegularization(cutmix=1.0), seed)
    changed = out != x
    partner = x.flip(0)
    assert torch.equal(out[changed], partner[changed])  # pasted from the partner, nothing else
    region = changed.any(0).any(0)  # (L,) or (H, W): the same box for the whole batch
    assert bool((changed == region).all())  # every sample and channel, same place
    assert _is_one_box(region)
    fraction = float(region.float().mean())
    lam = float(t[0, y[0]])
    assert lam == pytest.approx(1 - fraction)
    torch.testing.assert_close(t[0, y.flip(0)[0]], torch.tensor(fraction))
    torch.testing.assert_close(t.sum(1), torch.ones(len(y)))


@pytest.mark.parametrize("shape,lo,hi", [((4, 1, 200), 0.37, 0.46), ((4, 1, 40, 40), 0.27, 0.36)])
def test_cutmix_box_size_follows_lambda(shape, lo, hi):
    # the box side is n * sqrt(1 - lam) in 2-D and the segment n * (1 - lam) in 1-D, centre
    # uniform, clipped at the border: with lam ~ Beta(1, 1) the mean pasted fraction is
    # E[f - f^2/4] = 0.417 in 1-D and E[(r - r^2/4)^2], r = sqrt(f), = 0.32 in 2-D
    reg = R.MemberRegularization(cutmix=1.0)
    fracs = [1 - float(_mix(shape, reg, s)[3][0, 0]) for s in range(300)]
    assert lo < np.mean(fracs) < hi


def test_mixup_and_cutmix_switch_per_batch():
    reg = R.MemberRegularization(mixup=1.0, cutmix=1.0)
    kinds = []
    for seed in range(200):
        x, _, out, _ = _mix((8, 3, 8, 8), reg, seed)
        changed = (out != x).float().mean()
        kinds.append("mixup" if changed == 1 else "cutmix")
    assert 0.35 < kinds.count("cutmix") / len(kinds) < 0.65
    only_mixup = [(_mix((8, 3, 8, 8), R.MemberRegularization(mixup=1.0), s)) for s in range(20)]
    assert all(bool((out != x).all()) for x, _, out, _ in only_mixup)


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1])
def test_label_smoothing_in_the_targets(eps):
    n_classes = 10
    x, y = _batch((8, 2, 40), n_classes)
    out, t = R.mix_batch(x, y, n_classes, R.MemberRegularization(smoothing=eps), _rng())
    assert torch.equal(out, x)  # no mixing when both alphas are 0
    rows = torch.arange(len(y))
    torch.testing.assert_close(t[rows, y], torch.full((len(y),), 1 - eps + eps / n_classes))
    assert float(t.min()) == pytest.approx(eps / n_classes)
    logits = torch.randn(len(y), n_classes)
    torch.testing.assert_close(
        R.soft_cross_entropy(logits, t), F.cross_entropy(logits, y, label_smoothing=eps)
    )


@pytest.mark.parametrize("shape,largest", [((500, 2, 40), 13 / 40), ((500, 3, 8, 8), 0.4)])
def test_erasing_with_prob_one_zeroes_a_region_of_every_sample(shape, largest):
    x, _ = _batch(shape)
    out = R.random_erase(x, 1.0, _rng())
    erased = out != x
    assert torch.equal(out[erased], torch.zeros(int(erased.sum())))  # 'const' mode: zeros
    assert bool((erased == erased[:, :1]).all())  # the same region across channels
    assert all(_is_one_box(e[0]) for e in erased)
    fraction = erased.flatten(1).float().mean(1)
    assert bool((fraction > 0).all())
    # area ~ U(0.02, 1/3) of the input (mean 0.177), up to rounding of the sides
    assert float(fraction.max()) <= largest
    assert 0.15 < float(fraction.mean()) < 0.2


@pytest.mark.parametrize("shape", SHAPES)
def test_erasing_with_prob_zero_changes_nothing(shape):
    x, _ = _batch(shape)
    assert torch.equal(R.random_erase(x, 0.0, _rng()), x)


def test_erasing_prob_is_per_sample():
    x, _ = _batch((400, 1, 40))
    out = R.random_erase(x, 0.35, _rng())
    hit = (out != x).flatten(1).any(1).float().mean()
    assert 0.25 < float(hit) < 0.45


def test_transforms_are_deterministic_given_the_generator():
    x, y = _batch((8, 3, 8, 8))
    reg = R.MemberRegularization(mixup=1.0, cutmix=1.0, smoothing=0.1, erase=0.35)

    def draw(step):
        rng = R.batch_rng(0, 2, step)
        return R.mix_batch(R.random_erase(x, reg.erase, rng), y, 10, reg, rng)

    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


# --- in the population and a run -----------------------------------------------------------------


def _population(**kw):
    cfg = TrainConfig.from_preset("tiny", **kw)
    return cfg, Population(cfg, (1, 40), 10)


def test_population_loss_uses_the_members_settings():
    cfg, pop = _population(member_regularization=True, n_members=4)
    assert [pop.regularization(m) for m in range(4)] == R.grid(cfg.seed)[:4]
    x, y = torch.randn(8, 1, 40), torch.arange(8)
    for row in range(4):
        reg = pop.regularization(row)
        rng = R.batch_rng(cfg.seed, row, 3)
        xe = R.random_erase(x, reg.erase, rng)
        xm, t = R.mix_batch(xe, y, 10, reg, rng)
        expected = R.soft_cross_entropy(pop.models[row](xm), t)
        torch.testing.assert_close(pop.member_loss(row, x, y, 3), expected)


def test_run_with_member_regularization(tmp_path, tiny_cfg):
    cfg = tiny_cfg(member_regularization=True, method="papa", dataset="digits", model="cnn_digits")
    s = train_and_evaluate(cfg, tmp_path / "run")
    assert np.isfinite(s["train/loss"]) and np.isfinite(s["val/acc_avg"])
    settings = [R.for_member(cfg.seed, m, True) for m in range(cfg.n_members)]
    assert len(set(settings)) == cfg.n_members
