"""The population's forward and backward as one vectorised call over the stacked weights.

`torch.func.vmap` of `functional_call` over the member axis of the flat (N, P) rows: one forward
and one backward for all members instead of N (fewer, larger kernels: what a GPU wants when
each member's step is small). The gradients land in the flat grads; BatchNorm running statistics,
which vmap cannot update in place, are computed from the batch statistics each BN layer saw and
moved exactly as BatchNorm moves them (lerp by its momentum, unbiased variance).

    losses = vectorized_backward(pop, batches)   # then pop.optimizer_update(lr)

Only the plain loss (no per-member regularisation: those members differ in how they mix their
batches, which the loop does). Measured slower than the loop on a 2-core CPU (docs/benchmarks.md),
so it is opt-in: `vectorize=true`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

if TYPE_CHECKING:
    from .population import Population


def _bn_modules(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    }


def _stat_hook(stats: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable:
    """A forward pre-hook that records a BN input's per-channel mean and unbiased variance."""

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().float()
        dims = [d for d in range(x.dim()) if d != 1]
        stats.append((x.mean(dims), x.var(dims, unbiased=True)))

    return hook


def vectorized_backward(
    pop: Population, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Forward and backward of every local member at once; grads accumulate into pop.grads
    (zeroed by the caller) and BN running statistics move as in training. Returns the
    (n_local,) losses, detached."""
    spec, n = pop.spec, pop.n_local
    base = pop.models[0]  # the architecture; its own tensors are replaced by each member's
    x = torch.stack([b[0] for b in batches])
    y = torch.stack([b[1] for b in batches])
    flat = pop.params.detach().requires_grad_(True)
    flat.grad = pop.grads  # autograd accumulates into the flat grads in place
    params = {e.name: flat[:, e.offset : e.offset + e.size].view(n, *e.shape) for e in spec.params}
    buffers = {
        e.name: pop.buffers[:, e.offset : e.offset + e.size].view(n, *e.shape) for e in spec.buffers
    }
    bns = _bn_modules(base)
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(_stat_hook(stats)) for m in bns.values()]

    def member(p: dict, b: dict, xb: torch.Tensor, yb: torch.Tensor) -> tuple:
        stats.clear()
        loss = F.cross_entropy(functional_call(base, {**p, **b}, (xb,)), yb)
        return loss, list(stats)  # the hooks' stats leave vmap as outputs, per member

    base.train()
    try:
        with pop.autocast():
            losses, member_stats = vmap(member)(params, buffers, x, y)
    finally:
        for h in hooks:
            h.remove()
    (pop.scaler.scale(losses.sum()) if pop.scaler else losses.sum()).backward()
    _move_running_stats(pop, bns, member_stats)
    return losses.detach()


@torch.no_grad()
def _move_running_stats(
    pop: Population,
    bns: dict[str, nn.modules.batchnorm._BatchNorm],
    member_stats: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """running <- running + momentum (batch - running), per member, as BatchNorm does."""
    rows = {e.name: e for e in pop.spec.buffers}
    for (name, bn), (mean, var) in zip(bns.items(), member_stats, strict=True):
        # what the loop's BatchNorm counts; the base module counted its own forward already
        for model in pop.models[1:]:
            model.get_submodule(name).num_batches_tracked.add_(1)
        # momentum None: BatchNorm's cumulative average
        rate = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        for key, value in (("running_mean", mean), ("running_var", var)):
            e = rows[f"{name}.{key}" if name else key]
            pop.buffers[:, e.offset : e.offset + e.size].lerp_(value, rate)
