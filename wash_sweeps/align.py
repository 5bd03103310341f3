"""Git Re-Basin weight matching (Ainsworth et al. 2022, arXiv 2209.04836): permute the hidden
units of one model to match another, so that their average lies in one basin.

Pure functions over name -> tensor dicts (a model's state_dict, or rows of the flat layout) and
a declarative `PermutationSpec` per architecture of the zoo, after samuela/git-re-basin's
`src/weight_matching.py` (torch layout here: a weight is (out, in, *kernel)).

    spec = permutation_spec(model)
    perm = weight_matching(spec, params_a, params_b, seed=0)   # b's units matched to a's
    b_aligned = apply_permutation(spec, perm, state_b)

`align_rows` does it for a whole population: every member aligned to member 0.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .models import CNN1D, MLP, VGG16BN, CifarResNet, DigitsCNN

if TYPE_CHECKING:  # the flat layout's types only: align needs nothing else of the population
    from .population import Entry, FlatSpec

Axes = tuple[str | None, ...]  # the permutation group of each axis (None: not permuted)


@dataclasses.dataclass(frozen=True)
class PermutationSpec:
    """Which permutation group acts on which axis of which tensor.

    `axes_to_perm[name]` names a group (or None) per axis of `name`, read on `views[name]` when
    that tensor has one: a linear layer after a flatten sees its input as (out, channels, rest),
    so a channel permutation moves whole blocks of its columns."""

    axes_to_perm: Mapping[str, Axes]
    views: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @property
    def perm_to_axes(self) -> dict[str, list[tuple[str, int]]]:
        out: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for name, axes in self.axes_to_perm.items():
            for axis, group in enumerate(axes):
                if group is not None:
                    out[group].append((name, axis))
        return dict(out)


Perm = dict[str, torch.Tensor]  # group -> (n,) int64: new unit i is old unit perm[i]


# --- specs of the zoo -------------------------------------------------------------------------


def _conv(name: str, p_in: str | None, p_out: str | None, bias: bool = True) -> dict[str, Axes]:
    # a conv or linear weight is (out, in, *kernel): the kernel axes are never permuted
    out = {f"{name}.weight": (p_out, p_in, None, None)}
    if bias:
        out[f"{name}.bias"] = (p_out,)
    return out


def _linear(name: str, p_in: str | None, p_out: str | None) -> dict[str, Axes]:
    return {f"{name}.weight": (p_out, p_in), f"{name}.bias": (p_out,)}


def _bn(name: str, p: str) -> dict[str, Axes]:
    return {
        **{f"{name}.{k}": (p,) for k in ("weight", "bias", "running_mean", "running_var")},
        f"{name}.num_batches_tracked": (),
    }


def _trim(
    axes: dict[str, Axes], model: nn.Module, views: dict[str, tuple[int, ...]] | None = None
) -> PermutationSpec:
    """The spec with axes cut to each tensor's rank, or its view's (1-D convs have one kernel
    axis, 2-D two)."""
    views = views or {}
    rank = {k: len(views.get(k, v.shape)) for k, v in model.state_dict().items()}
    return PermutationSpec({k: a[: rank[k]] for k, a in axes.items()}, views)


def _cnn1d(m: CNN1D) -> PermutationSpec:
    axes = {
        **_conv("conv1", None, "P_conv1"),
        **_conv("conv2", "P_conv1", "P_conv2"),
        **_conv("conv3", "P_conv2", "P_conv3"),
        "fc.weight": (None, "P_conv3", None),  # flattened (channel, position) columns
        "fc.bias": (None,),
    }
    return _trim(axes, m, {"fc.weight": _flat_view(m.fc.weight, m.conv3.out_channels)})


def _cnn_digits(m: DigitsCNN) -> PermutationSpec:
    axes = {
        **_conv("conv1", None, "P_conv1"),
        **_conv("conv2", "P_conv1", "P_conv2"),
        "fc1.weight": ("P_fc1", "P_conv2", None),
        "fc1.bias": ("P_fc1",),
        **_linear("fc2", "P_fc1", None),
    }
    return _trim(axes, m, {"fc1.weight": _flat_view(m.fc1.weight, m.conv2.out_channels)})


def _flat_view(weight: torch.Tensor, channels: int) -> tuple[int, ...]:
    out, cols = weight.shape
    return (out, channels, cols // channels)


def _mlp(m: MLP) -> PermutationSpec:
    axes: dict[str, Axes] = {}
    prev = None
    for i in range(len(m.hidden)):
        axes.update(_linear(f"hidden.{i}", prev, f"P_hidden{i}"))
        prev = f"P_hidden{i}"
    axes.update(_linear("out", prev, None))
    return PermutationSpec(axes)


def _resnet(m: CifarResNet) -> PermutationSpec:
    """The residual stream of a stage carries one permutation through every block of it (the
    shortcut adds it unchanged), as git-re-basin's resnet20 spec ties them; a block's inner
    units have their own; a block with a projection shortcut starts a new stream."""
    axes = {**_conv("conv1", None, "P_stage0", bias=False), **_bn("bn1", "P_stage0")}
    stream, stage = "P_stage0", 0
    for k, block in enumerate(m.layers):
        name, inner = f"layers.{k}", f"P_block{k}_inner"
        out = stream
        if len(block.shortcut):  # a projection: the stream changes width (a new group)
            stage += 1
            out = f"P_stage{stage}"
            axes.update(_conv(f"{name}.shortcut.0", stream, out, bias=False))
            axes.update(_bn(f"{name}.shortcut.1", out))
        axes.update(_conv(f"{name}.conv1", stream, inner, bias=False))
        axes.update(_bn(f"{name}.bn1", inner))
        axes.update(_conv(f"{name}.conv2", inner, out, bias=False))
        axes.update(_bn(f"{name}.bn2", out))
        stream = out
    axes.update(_linear("fc", stream, None))
    return _trim(axes, m)


def _vgg(m: VGG16BN) -> PermutationSpec:
    axes: dict[str, Axes] = {}
    prev = None
    for i, layer in enumerate(m.features):
        if isinstance(layer, nn.Conv2d):
            group = f"P_features{i}"
            axes.update(_conv(f"features.{i}", prev, group))
            prev = group
        elif isinstance(layer, nn.BatchNorm2d):
            axes.update(_bn(f"features.{i}", prev))
    axes.update(_linear("fc", prev, None))
    return _trim(axes, m)


_SPECS = {CNN1D: _cnn1d, DigitsCNN: _cnn_digits, MLP: _mlp, CifarResNet: _resnet, VGG16BN: _vgg}


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation spec of a model of the zoo (every tensor of its state_dict named)."""
    for cls, make in _SPECS.items():
        if isinstance(model, cls):
            return make(model)
    raise ValueError(f"no permutation spec for {type(model).__name__}")


# --- permuting and matching -------------------------------------------------------------------


def permuted(
    spec: PermutationSpec, perm: Perm, name: str, w: torch.Tensor, except_axis: int | None = None
) -> torch.Tensor:
    """Tensor `name` (value `w`) with every group of `perm` applied, except on `except_axis`."""
    axes = spec.axes_to_perm[name]  # a tensor the spec does not know fails here: never skipped
    view = spec.views.get(name)
    out = w.reshape(view) if view is not None else w
    for axis, group in enumerate(axes):
        if group is not None and axis != except_axis:
            out = out.index_select(axis, perm[group].to(out.device))
    return out.reshape(w.shape) if view is not None else out


def apply_permutation(
    spec: PermutationSpec, perm: Perm, tensors: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Every tensor of `tensors` (parameters and BN statistics) with `perm` applied."""
    return {k: permuted(spec, perm, k, v) for k, v in tensors.items()}


def group_sizes(spec: PermutationSpec, params: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Units per permutation group, read off `params`."""
    sizes = {}
    for group, axes in spec.perm_to_axes.items():
        name, axis = next((n, a) for n, a in axes if n in params)
        sizes[group] = _viewed(spec, name, params[name]).shape[axis]
    return sizes


def _viewed(spec: PermutationSpec, name: str, w: torch.Tensor) -> torch.Tensor:
    view = spec.views.get(name)
    return w.reshape(view) if view is not None else w


def _similarity(
    spec: PermutationSpec, perm: Perm, group: str, a: Mapping[str, torch.Tensor], b: Mapping
) -> torch.Tensor:
    """(n, n): sum over the tensors the group acts on of <a's unit i, b's unit j>, with b's
    other axes already permuted (the objective of one coordinate-descent step)."""
    total = None
    for name, axis in spec.perm_to_axes[group]:
        if name not in a:  # BN statistics: moved with their units, not matched (as the paper)
            continue
        w_a = _viewed(spec, name, a[name]).double()
        w_b = _viewed(spec, name, permuted(spec, perm, name, b[name], except_axis=axis)).double()
        w_a = w_a.movedim(axis, 0).reshape(w_a.shape[axis], -1)
        w_b = w_b.movedim(axis, 0).reshape(w_b.shape[axis], -1)
        term = w_a @ w_b.T
        total = term if total is None else total + term
    return total


def weight_matching(
    spec: PermutationSpec,
    params_a: Mapping[str, torch.Tensor],
    params_b: Mapping[str, torch.Tensor],
    seed: int = 0,
    max_iter: int = 100,
) -> Perm:
    """The permutation of `params_b`'s units that maximises sum_l <W_a, P W_b P'>: per group a
    linear assignment on the summed inner products, groups visited in a seeded random order,
    repeated until a whole pass improves nothing (or `max_iter` passes)."""
    sizes = group_sizes(spec, params_a)
    perm = {g: torch.arange(n) for g, n in sizes.items()}
    names = list(perm)
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        progress = False
        for g in (names[i] for i in rng.permutation(len(names))):
            sim = _similarity(spec, perm, g, params_a, params_b).cpu().numpy()
            rows, cols = linear_sum_assignment(sim, maximize=True)
            assert (rows == np.arange(len(rows))).all()
            old = sim[np.arange(len(cols)), perm[g].numpy()].sum()
            new = sim[rows, cols].sum()
            # the reference's strict improvement test, so a tie never loops
            progress = progress or new > old + 1e-12
            perm[g] = torch.from_numpy(cols).long()
        if not progress:
            break
    return perm


# --- a population in the flat layout ------------------------------------------------------------


def rows_to_dict(entries: Sequence[Entry], row: torch.Tensor) -> dict[str, torch.Tensor]:
    """name -> tensor views of one flat row (`entries`: FlatSpec.params or .buffers)."""
    return {e.name: row[e.offset : e.offset + e.size].view(e.shape) for e in entries}


def dict_to_row(
    entries: Sequence[Entry], tensors: Mapping[str, torch.Tensor], row: torch.Tensor
) -> None:
    """Write `tensors` into one flat row, in place (the inverse of `rows_to_dict`)."""
    for e in entries:
        row[e.offset : e.offset + e.size] = tensors[e.name].reshape(-1)


@torch.no_grad()
def align_rows(
    spec: PermutationSpec,
    flat: FlatSpec,
    params: torch.Tensor,
    buffers: torch.Tensor,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member (row) of (N, P) params and (N, Q) float buffers permuted to match member 0
    (weight matching on the parameters; the BN statistics move with their units). `flat` is the
    population's FlatSpec. Returns new tensors; member 0 is unchanged."""
    out_p, out_b = params.clone(), buffers.clone()
    ref = rows_to_dict(flat.params, params[0])
    for i in range(1, params.shape[0]):
        mine = rows_to_dict(flat.params, params[i])
        perm = weight_matching(spec, ref, mine, seed=seed + i)
        dict_to_row(flat.params, apply_permutation(spec, perm, mine), out_p[i])
        bufs = rows_to_dict(flat.buffers, buffers[i])
        dict_to_row(flat.buffers, apply_permutation(spec, perm, bufs), out_b[i])
    return out_p, out_b


__all__ = [
    "PermutationSpec",
    "align_rows",
    "apply_permutation",
    "permutation_spec",
    "weight_matching",
]
