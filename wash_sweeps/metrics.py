"""The science metrics, defined exactly as in docs/method.md.

Accuracy of members / logit ensemble / soups on a named split (`val/...` validation, `test/...`
test), diversity (consensus distance overall and per layer, mean pairwise L2, prediction
disagreement, pairwise KL; on the test split), the loss barrier on the linear path between two
weight vectors (test split; BN statistics re-estimated per point), and communication counts
(see `methods`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .averaging import reestimate_bn
from .data import eval_batches


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([model(xb) for xb, _ in eval_batches(x, x, batch_size)])
    model.train(was_training)
    return out


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean())


def loss(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.float(), y))


def population_predictions(logits: torch.Tensor, y: torch.Tensor, split: str) -> dict[str, float]:
    """From member logits (N, n, C) on `split` ("val" or "test"): member accuracies and losses
    and the logit ensemble (argmax of the mean logits), keyed `<split>/...` and
    `member/<i>/<split>_acc`."""
    n = logits.shape[0]
    accs = [accuracy(logits[i], y) for i in range(n)]
    out = {
        f"{split}/acc_member_mean": sum(accs) / n,
        f"{split}/acc_member_min": min(accs),
        f"{split}/acc_member_max": max(accs),
        f"{split}/loss_member_mean": sum(loss(logits[i], y) for i in range(n)) / n,
    }
    for i, a in enumerate(accs):
        out[f"member/{i}/{split}_acc"] = a
    ens = logits.mean(0)
    out[f"{split}/acc_ens"] = accuracy(ens, y)
    out[f"{split}/loss_ens"] = loss(ens, y)
    return out


def disagreement_and_kl(logits: torch.Tensor) -> dict[str, float]:
    """Disagreement: fraction of inputs where two members' argmax differ, averaged over pairs.
    KL: mean over ordered pairs i != j and inputs of KL(softmax_i || softmax_j)."""
    n = logits.shape[0]
    if n < 2:
        return {"div/disagreement": 0.0, "div/kl": 0.0}
    pred = logits.argmax(-1)
    logp = F.log_softmax(logits.float(), -1)
    dis, kl = [], []
    for i, j in itertools.combinations(range(n), 2):
        dis.append(float((pred[i] != pred[j]).float().mean()))
        for a, b in ((i, j), (j, i)):
            kl.append(float((logp[a].exp() * (logp[a] - logp[b])).sum(-1).mean()))
    return {"div/disagreement": sum(dis) / len(dis), "div/kl": sum(kl) / len(kl)}


def consensus_distance(
    params: torch.Tensor, layers: dict[str, tuple[int, int]] | None = None
) -> dict[str, float]:
    """(1/N) sum_i ||w_i - w_mean||^2, overall and per layer (module name -> flat slice)."""
    dev = params - params.mean(0, keepdim=True)
    sq = dev.pow(2)
    out = {"div/consensus": float(sq.sum() / params.shape[0])}
    for name, (lo, hi) in (layers or {}).items():
        out[f"div/consensus/{name}"] = float(sq[:, lo:hi].sum() / params.shape[0])
    return out


def mean_pairwise_distance(params: torch.Tensor) -> float:
    """Mean over unordered pairs of ||w_i - w_j||_2."""
    n = params.shape[0]
    if n < 2:
        return 0.0
    d = torch.cdist(params.double().unsqueeze(0), params.double().unsqueeze(0))[0]
    iu = torch.triu_indices(n, n, 1)
    return float(d[iu[0], iu[1]].mean())


def interpolation_alphas(points: int) -> list[float]:
    return [i / (points - 1) for i in range(points)]


@torch.no_grad()
def loss_curve(
    target: tuple[nn.Module, torch.Tensor, torch.Tensor],
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    points: int,
    batch_size: int,
    bn_batches: Sequence[torch.Tensor] = (),
    ends: tuple[float, float] | None = None,
) -> list[float]:
    """Test loss L(alpha) at (1 - alpha) A + alpha B for alpha on a uniform grid of `points`.

    Parameters are interpolated. BN running statistics are re-estimated on `bn_batches` (training
    inputs) for every interpolated model when given, since interpolated statistics do not match
    the interpolated weights (the barrier would then measure that mismatch); without
    `bn_batches` they are interpolated too. `ends`: L(0) and L(1) when the caller has them
    already (the end points are A and B themselves), so only the interior points are evaluated."""
    alphas = interpolation_alphas(points)
    if ends is not None and not bn_batches:
        inner = _losses_at(target, a, b, alphas[1:-1], x, y, batch_size)
        return [ends[0], *inner, ends[1]]
    return _losses_at(target, a, b, alphas, x, y, batch_size, bn_batches)


def _losses_at(
    target: tuple[nn.Module, torch.Tensor, torch.Tensor],
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    alphas: Sequence[float],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    bn_batches: Sequence[torch.Tensor] = (),
) -> list[float]:
    model, p, buf = target
    curve = []
    for alpha in alphas:
        torch.lerp(a[0], b[0], alpha, out=p)
        torch.lerp(a[1], b[1], alpha, out=buf)
        if bn_batches:
            reestimate_bn(model, bn_batches)
        curve.append(loss(logits_of(model, x, batch_size), y))
    return curve


def barrier(curve: Sequence[float]) -> float:
    """max over alpha of L(alpha) - ((1 - alpha) L(0) + alpha L(1)); 0 for a straight curve."""
    alphas = interpolation_alphas(len(curve))
    return max(c - ((1 - t) * curve[0] + t * curve[-1]) for t, c in zip(alphas, curve, strict=True))


def barrier_pairs(n: int, max_pairs: int) -> list[tuple[int, int]]:
    """The member pairs measured: all, or the first `max_pairs` of (0,1), (1,2), ... (0,2), ...,
    so that every member appears before any repeats."""
    ring = [(i, i + 1) for i in range(n - 1)]
    rest = [p for p in itertools.combinations(range(n), 2) if p not in ring]
    pairs = ring + rest
    return pairs if max_pairs == 0 else pairs[:max_pairs]
