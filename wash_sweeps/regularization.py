"""Per-member regularisation, PAPA's grid: mixup, label smoothing, CutMix and random erasing.

The grid is the Cartesian product of the four value sets in PAPA's order (mixup, smoothing,
cutmix, erasing), shuffled with the run seed; member k takes entry k % 81. The batch transforms
follow timm's `Mixup` (batch mode, mix_prob 1, switch_prob 0.5, label smoothing folded into the
mixed soft targets, CutMix lambda corrected by the clipped box) and `RandomErasing` (mode
'const', one box per sample), as PAPA configures them. They work on images (B, C, H, W: a box)
and on 1-D signals (B, C, L: a contiguous segment). All randomness comes from an explicit numpy
Generator derived from (seed, member, step), so a resumed run draws exactly the same.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np
import torch
from torch.nn import functional as F

from . import seeding

MIXUP = (0.0, 0.5, 1.0)
SMOOTHING = (0.0, 0.05, 0.1)
CUTMIX = (0.0, 0.5, 1.0)
ERASE = (0.0, 0.15, 0.35)
SWITCH_PROB = 0.5  # probability of CutMix instead of mixup when both alphas are > 0
ERASE_AREA = (0.02, 1 / 3)  # erased fraction of the signal / image
ERASE_ASPECT = (0.3, 1 / 0.3)  # h / w of an erased box, drawn log-uniformly (images only)
_ERASE_ATTEMPTS = 10  # timm retries a box that does not fit, at most this often
# sub-purposes under seeding.REGULARIZATION, so the grid and the batch draws never share a seed
_GRID, _BATCH = 0, 1


@dataclasses.dataclass(frozen=True)
class MemberRegularization:
    """One member's settings: mixup alpha, label smoothing, CutMix alpha, erasing probability."""

    mixup: float = 0.0
    smoothing: float = 0.0
    cutmix: float = 0.0
    erase: float = 0.0

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


NONE = MemberRegularization()


@functools.lru_cache(maxsize=8)
def _grid(seed: int) -> tuple[MemberRegularization, ...]:
    entries = [MemberRegularization(*v) for v in itertools.product(MIXUP, SMOOTHING, CUTMIX, ERASE)]
    order = seeding.numpy_rng(seed, seeding.REGULARIZATION, _GRID).permutation(len(entries))
    return tuple(entries[i] for i in order)


def grid(seed: int) -> list[MemberRegularization]:
    """The 81 settings in PAPA's product order, shuffled deterministically from the run seed."""
    return list(_grid(seed))


def for_member(seed: int, member: int, enabled: bool) -> MemberRegularization:
    """Member k's settings: grid entry k % 81 (PAPA repeats the grid), all zeros when off."""
    if not enabled:
        return NONE
    entries = _grid(seed)
    return entries[member % len(entries)]


def batch_rng(seed: int, member: int, step: int) -> np.random.Generator:
    """The generator of one member's transforms at one step (resume draws the same)."""
    return seeding.numpy_rng(seed, seeding.REGULARIZATION, _BATCH, member, step)


def soft_targets(y: torch.Tensor, n_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets smoothed as torch's label_smoothing: (1-eps) + eps/C on the true class."""
    off = smoothing / n_classes
    t = torch.full((len(y), n_classes), off, device=y.device)
    return t.scatter_(1, y.long().view(-1, 1), 1.0 - smoothing + off)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    if x.dim() not in (3, 4):
        raise ValueError(f"expected (B, C, L) or (B, C, H, W) inputs, got shape {tuple(x.shape)}")
    return tuple(x.shape[2:])


def _cutmix_box(
    spatial: tuple[int, ...], lam: float, rng: np.random.Generator
) -> tuple[tuple[slice, ...], float]:
    """timm's rand_bbox in k = 1 or 2 dims: side n * (1-lam)^(1/k) (int), centre uniform, clipped
    to the input; lam is then corrected to 1 - (pasted area fraction)."""
    ratio = (1.0 - lam) ** (1.0 / len(spatial))
    box = []
    for n in spatial:
        half, centre = int(n * ratio) // 2, int(rng.integers(0, n))
        box.append(slice(max(centre - half, 0), min(centre + half, n)))
    area = math.prod(s.stop - s.start for s in box)
    return tuple(box), 1.0 - area / math.prod(spatial)


def _mix_lambda(reg: MemberRegularization, rng: np.random.Generator) -> tuple[float, bool]:
    """(lam, use_cutmix) for the whole batch, as timm's batch mode with mix_prob 1."""
    use_cutmix = reg.cutmix > 0 and (reg.mixup <= 0 or rng.random() < SWITCH_PROB)
    alpha = reg.cutmix if use_cutmix else reg.mixup
    return float(rng.beta(alpha, alpha)), use_cutmix


def mix_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    reg: MemberRegularization,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix of the batch with its reverse (timm pairs sample i with B-1-i; the batch
    order is already random), and the matching soft targets with label smoothing."""
    lam = 1.0
    if reg.mixes:
        lam, use_cutmix = _mix_lambda(reg, rng)
        partner = x.flip(0)
        if use_cutmix:
            box, lam = _cutmix_box(_spatial(x), lam, rng)
            x = x.clone()
            x[(slice(None), slice(None), *box)] = partner[(slice(None), slice(None), *box)]
        else:
            x = x * lam + partner * (1.0 - lam)
    t = soft_targets(y, n_classes, reg.smoothing)
    return x, (lam * t + (1.0 - lam) * t.flip(0)).to(x.dtype)


def _erase_sizes(spatial: tuple[int, ...], b: int, rng: np.random.Generator) -> np.ndarray:
    """(B, k) sizes of each sample's erased region: timm's first of 10 candidates that fits
    (each side < the input's), zeros when none does."""
    area = rng.uniform(*ERASE_AREA, size=(b, _ERASE_ATTEMPTS)) * math.prod(spatial)
    if len(spatial) == 1:
        sizes = np.rint(area)[..., None]  # a segment has no aspect ratio
    else:
        aspect = np.exp(rng.uniform(*np.log(ERASE_ASPECT), size=(b, _ERASE_ATTEMPTS)))
        sizes = np.rint(np.stack([np.sqrt(area * aspect), np.sqrt(area / aspect)], -1))
    fits = (sizes < np.array(spatial)).all(-1)  # (B, attempts)
    first = fits.argmax(1)
    chosen = sizes[np.arange(b), first].astype(np.int64)
    return np.where(fits.any(1)[:, None], chosen, 0)


def random_erase(x: torch.Tensor, prob: float, rng: np.random.Generator) -> torch.Tensor:
    """Each sample, with probability `prob`, gets one box (segment in 1-D) set to 0 (timm's
    'const' mode; the inputs are normalised, so 0 is the data mean)."""
    if prob <= 0:
        return x
    spatial, b = _spatial(x), len(x)
    apply = rng.random(b) < prob
    sizes = _erase_sizes(spatial, b, rng) * apply[:, None]
    starts = rng.integers(0, np.array(spatial) - sizes + 1)  # inclusive, as random.randint
    mask = torch.ones((b, 1) + (1,) * len(spatial), dtype=torch.bool, device=x.device)
    for d, n in enumerate(spatial):
        idx = torch.arange(n, device=x.device)
        lo = torch.from_numpy(starts[:, d]).to(x.device)[:, None]
        hi = lo + torch.from_numpy(sizes[:, d]).to(x.device)[:, None]
        shape = [1] * len(spatial)
        shape[d] = n
        mask = mask & ((idx >= lo) & (idx < hi)).view(b, 1, *shape)
    return x.masked_fill(mask, 0.0)
