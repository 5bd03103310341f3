"""Turning a population into one model: uniform soup, BN re-estimation, greedy soup.

Soups are vectors over the flat layout (params (P,), float buffers (Q,)); `load_into` puts one
into a spare model from `Population.new_model()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .population import has_batchnorm


def uniform_soup(
    params: torch.Tensor, buffers: torch.Tensor, rows: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over members (rows) of parameters and float buffers (BN statistics averaged).

    Summed in float64, so that the soup of identical members is exactly that member."""
    if rows is not None:
        idx = torch.as_tensor(list(rows), device=params.device)
        params, buffers = params[idx], buffers[idx]
    return (params.double().mean(0).to(params.dtype), buffers.double().mean(0).to(buffers.dtype))


@torch.no_grad()
def load_into(
    vectors: tuple[torch.Tensor, torch.Tensor], target: tuple[nn.Module, torch.Tensor, torch.Tensor]
) -> nn.Module:
    model, p, b = target
    p.copy_(vectors[0])
    b.copy_(vectors[1])
    return model


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Sequence[torch.Tensor]) -> nn.Module:
    """Reset BN running statistics and recompute them as a cumulative average (momentum=None)
    over `batches` of training inputs, in train mode; leaves the model in eval mode."""
    if not has_batchnorm(model):
        return model
    saved = {}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved[m] = m.momentum
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for x in batches:
        model(x)
    for m, momentum in saved.items():
        m.momentum = momentum
    return model.eval()


def greedy_soup(
    order_scores: Sequence[float], evaluate: Callable[[list[int]], float]
) -> tuple[list[int], float, list[dict]]:
    """Model soups' greedy recipe: sort members by held-out score (descending), start from the
    best, add each next member only if the held-out score of the average strictly improves.

    `evaluate(rows)` returns the held-out score of the uniform soup of `rows`. Returns the chosen
    rows, their score, and the trace of every decision.
    """
    ranked = sorted(range(len(order_scores)), key=lambda i: -order_scores[i])
    chosen = [ranked[0]]
    best = evaluate(chosen)
    trace = [{"member": ranked[0], "score": best, "added": True}]
    for i in ranked[1:]:
        score = evaluate([*chosen, i])
        added = score > best
        trace.append({"member": i, "score": score, "added": added})
        if added:
            chosen.append(i)
            best = score
    return chosen, best, trace
