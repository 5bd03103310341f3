"""The population: N members whose parameters are rows of one flat (N, P) tensor.

Each member is an ordinary nn.Module (a Python loop over members is the fastest CPU design),
but its parameters, gradients and optimizer state are *views* into flat tensors:

    params (N, P)   grads (N, P)   opt_state[name] (N, P)   buffers (N, Q) (BN running stats)

so that the communication operators (shuffle, PAPA's pull, averaging) and the optimizer update
are single tensor operations on the whole population. A process may hold only a slice of the
members (`members=range(a, b)`, for torch.distributed); row r is then member members[r].
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from . import regularization as member_reg
from . import seeding
from .config import TrainConfig
from .models import build_model, layer_index
from .runtime import amp_dtype
from .shuffle import Segment, layer_probabilities
from .vectorized import vectorized_backward

_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    offset: int
    size: int
    layer: int  # depth of the owning module (0 = input side)


@dataclasses.dataclass(frozen=True)
class FlatSpec:
    """Where each named tensor lives in the flat rows."""

    params: tuple[Entry, ...]
    buffers: tuple[Entry, ...]  # floating-point buffers only (BN running mean / var)

    @property
    def n_params(self) -> int:
        return sum(e.size for e in self.params)

    @property
    def n_buffers(self) -> int:
        return sum(e.size for e in self.buffers)

    @property
    def n_layers(self) -> int:
        return max((e.layer for e in self.params), default=-1) + 1

    def segments(self, p: float, schedule: str) -> list[Segment]:
        probs = layer_probabilities([e.layer for e in self.params], p, schedule)
        return [Segment(e.offset, e.size, q) for e, q in zip(self.params, probs, strict=True)]

    def buffer_segments(self, p: float, schedule: str) -> list[Segment]:
        # a buffer takes the probability of the layer that owns it
        probs = layer_probabilities([e.layer for e in self.buffers], p, schedule, self.n_layers)
        return [Segment(e.offset, e.size, q) for e, q in zip(self.buffers, probs, strict=True)]

    def layer_slices(self) -> dict[str, tuple[int, int]]:
        """Module name -> (start, end) of its parameters in the flat row (contiguous)."""
        out: dict[str, tuple[int, int]] = {}
        for e in self.params:
            mod = e.name.rsplit(".", 1)[0] if "." in e.name else e.name
            lo, hi = out.get(mod, (e.offset, e.offset + e.size))
            out[mod] = (min(lo, e.offset), max(hi, e.offset + e.size))
        return out


def flat_spec(model: nn.Module) -> FlatSpec:
    depth = layer_index(model)
    params, off = [], 0
    for name, p in model.named_parameters():
        params.append(Entry(name, tuple(p.shape), off, p.numel(), depth[name]))
        off += p.numel()
    buffers, off = [], 0
    module_layer = {n.rsplit(".", 1)[0]: d for n, d in depth.items()}
    for name, b in model.named_buffers():
        if b.is_floating_point():
            layer = module_layer.get(name.rsplit(".", 1)[0], 0)
            buffers.append(Entry(name, tuple(b.shape), off, b.numel(), layer))
            off += b.numel()
    return FlatSpec(tuple(params), tuple(buffers))


def _get(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = dotted.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


def bind(
    model: nn.Module,
    spec: FlatSpec,
    params: torch.Tensor,
    buffers: torch.Tensor,
    grads: torch.Tensor | None = None,
) -> None:
    """Make `model`'s parameters (and grads, float buffers) views of 1-D rows, copying the
    model's current values into them first."""
    named = dict(model.named_parameters())
    with torch.no_grad():
        for e in spec.params:
            p = named[e.name]
            view = params[e.offset : e.offset + e.size].view(e.shape)
            view.copy_(p.data)
            p.data = view
            if grads is not None:
                p.grad = grads[e.offset : e.offset + e.size].view(e.shape)
        for e in spec.buffers:
            mod, attr = _get(model, e.name)
            view = buffers[e.offset : e.offset + e.size].view(e.shape)
            view.copy_(getattr(mod, attr))
            setattr(mod, attr, view)


class _FlatOptimizer:
    """What torch.amp.GradScaler asks of an optimizer, over the flat (N, P) rows: one parameter
    whose grad is the flat grads, and a step that is the population's update."""

    def __init__(self, pop: Population, lr: float):
        holder = nn.Parameter(pop.params, requires_grad=True)  # shares pop.params' storage
        holder.grad = pop.grads
        self.param_groups = [{"params": [holder]}]
        self._pop, self._lr = pop, lr

    def step(self) -> None:
        self._pop.optimizer_update(self._lr)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class Population:
    """The members held by this process, their flat state and the training step."""

    def __init__(
        self,
        cfg: TrainConfig,
        in_shape: Sequence[int],
        n_classes: int,
        device: torch.device | str = "cpu",
        members: Sequence[int] | None = None,
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        self.members = list(range(cfg.n_members) if members is None else members)
        self.in_shape, self.n_classes = tuple(in_shape), n_classes
        self.models = [self._init_model(m) for m in self.members]
        self.spec = flat_spec(self.models[0])
        n, d, q = len(self.members), self.spec.n_params, self.spec.n_buffers
        kw = dict(device=self.device, dtype=torch.float32)
        self.params = torch.zeros(n, d, **kw)
        self.grads = torch.zeros(n, d, **kw)
        self.buffers = torch.zeros(n, q, **kw)
        names = (
            ("exp_avg", "exp_avg_sq")
            if cfg.optimizer == "adamw"
            else (("momentum_buffer",) if cfg.momentum > 0 else ())
        )
        self.opt_state = {name: torch.zeros(n, d, **kw) for name in names}
        self.opt_steps = 0  # optimizer steps taken (Adam's bias correction)
        for r, model in enumerate(self.models):
            bind(model, self.spec, self.params[r], self.buffers[r], self.grads[r])
        self.has_bn = has_batchnorm(self.models[0])
        self._init_arithmetic()

    # --- construction ----------------------------------------------------------------------
    def _init_arithmetic(self) -> None:
        """Precision, memory format and compilation of the training step (GPU settings; the
        flat fp32 rows are the same whatever they are)."""
        cfg = self.cfg
        self.amp_dtype = amp_dtype(cfg.precision)
        # one scaler for the population: an overflow in any member skips every member's step,
        # so members keep the same step count (the shuffle and PAPA's schedule rely on it)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        # distributed: makes a (found inf) flag the maximum over every process, so that one
        # overflow skips the step of the whole population and every rank keeps the same scale
        self.agree_max: Callable[[torch.Tensor], None] | None = None
        # channels_last on the inputs only: the weights stay views of the flat rows (their
        # layout is the shuffle's and the checkpoints'); cuDNN then runs NHWC kernels and the
        # activations stay channels_last through the network
        convolutional = any(isinstance(m, nn.Conv2d) for m in self.models[0].modules())
        self.channels_last = self.device.type == "cuda" and convolutional
        self.forwards = [torch.compile(m) if cfg.compile else m for m in self.models]
        self.vectorized = cfg.vectorize  # config refuses it with per-member regularisation

    def _init_model(self, member: int) -> nn.Module:
        init_member = 0 if self.cfg.same_init else member
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeding.derive(self.cfg.seed, seeding.INIT, init_member))
            model = build_model(self.cfg, self.in_shape, self.n_classes)
        return model.to(self.device)

    def new_model(self) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """A spare model bound to its own (P,) and (Q,) vectors (for soups and interpolation)."""
        model = build_model(self.cfg, self.in_shape, self.n_classes).to(self.device)
        p = torch.zeros(self.spec.n_params, device=self.device)
        b = torch.zeros(self.spec.n_buffers, device=self.device)
        bind(model, self.spec, p, b)
        for prm in model.parameters():
            prm.requires_grad_(False)
        return model.eval(), p, b

    @property
    def n_local(self) -> int:
        return len(self.members)

    # --- training ---------------------------------------------------------------------------
    def regularization(self, member: int) -> member_reg.MemberRegularization:
        """A member's entry of PAPA's grid; all zeros unless member_regularization (or dart)."""
        return member_reg.for_member(self.cfg.seed, member, self.cfg.uses_member_regularization)

    def member_loss(self, row: int, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        member = self.members[row]
        reg = self.regularization(member)
        model = self.forwards[row]
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if reg == member_reg.NONE:
            return F.cross_entropy(model(x), y)
        # erasing first, then mixing: PAPA erases in the dataset transform, mixes in the step
        rng = member_reg.batch_rng(self.cfg.seed, member, step)
        x = member_reg.random_erase(x, reg.erase, rng)
        if reg.mixes:
            x, target = member_reg.mix_batch(x, y, self.n_classes, reg, rng)
            return member_reg.soft_cross_entropy(model(x), target)
        return F.cross_entropy(model(x), y, label_smoothing=reg.smoothing)

    def train_step(
        self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], lr: float, step: int
    ) -> torch.Tensor:
        """One optimizer step of every local member on its own batch; returns the (n_local,)
        losses (detached, on the device: no synchronisation here)."""
        self.grads.zero_()
        if self.vectorized:
            losses = vectorized_backward(self, batches)
        else:
            losses = self._looped_backward(batches, step)
        if self.scaler is None:
            self.optimizer_update(lr)
        else:
            self.scaled_update(lr)
        return losses

    def _looped_backward(
        self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], step: int
    ) -> torch.Tensor:
        losses = []
        for row, (x, y) in enumerate(batches):
            self.models[row].train()
            with self.autocast():
                loss = self.member_loss(row, x, y, step)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            losses.append(loss.detach())
        return torch.stack(losses)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's precision; fp32 enters no autocast at all (the same kernels as before
        precision existed)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def scaled_update(self, lr: float) -> None:
        """fp16: unscale the flat grads, step every member unless any grad is inf/NaN (on any
        process, when distributed), and adjust the scale, through torch.amp.GradScaler."""
        opt = _FlatOptimizer(self, lr)
        if self.agree_max is not None:
            self.scaler.unscale_(opt)  # records this process's found-inf flags
            # GradScaler keeps them per optimizer; step() and update() read them from there
            found = self.scaler._per_optimizer_states[id(opt)]["found_inf_per_device"]
            for flag in found.values():
                self.agree_max(flag)
        self.scaler.step(opt)
        self.scaler.update()

    @torch.no_grad()
    def optimizer_update(self, lr: float) -> None:
        """Every member's optimizer step at once, on the flat rows. SGD matches
        torch.optim.SGD (dampening 0) bit for bit; AdamW matches torch.optim.AdamW."""
        cfg, w, g = self.cfg, self.params, self.grads
        self.opt_steps += 1
        if cfg.optimizer == "sgd":
            if cfg.weight_decay:
                g = g.add(w, alpha=cfg.weight_decay)
            if "momentum_buffer" in self.opt_state:
                buf = self.opt_state["momentum_buffer"]
                if self.opt_steps == 1:
                    buf.copy_(g)  # torch's first step: buf = clone(grad)
                else:
                    buf.mul_(cfg.momentum).add_(g)
                g = g.add(buf, alpha=cfg.momentum) if cfg.nesterov else buf
            w.add_(g, alpha=-lr)
            return
        b1, b2 = _ADAM_BETAS
        m, v, t = self.opt_state["exp_avg"], self.opt_state["exp_avg_sq"], self.opt_steps
        w.mul_(1 - lr * cfg.weight_decay)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(_ADAM_EPS)
        w.addcdiv_(m, denom, value=-lr / (1 - b1**t))

    # --- state --------------------------------------------------------------------------------
    def int_buffers(self) -> list[dict[str, torch.Tensor]]:
        return [
            {n: b for n, b in m.named_buffers() if not b.is_floating_point()} for m in self.models
        ]

    def state_dict(self) -> dict:
        return {
            "members": self.members,
            "params": self.params.cpu().clone(),
            "buffers": self.buffers.cpu().clone(),
            "opt_state": {k: v.cpu().clone() for k, v in self.opt_state.items()},
            "opt_steps": self.opt_steps,
            "int_buffers": [{k: v.cpu().clone() for k, v in d.items()} for d in self.int_buffers()],
            **({"scaler": self.scaler.state_dict()} if self.scaler else {}),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if list(state["members"]) != self.members:
            raise ValueError(
                f"checkpoint holds members {state['members']}, this process {self.members}"
            )
        self.params.copy_(state["params"])
        self.buffers.copy_(state["buffers"])
        for k, v in state["opt_state"].items():
            self.opt_state[k].copy_(v)
        self.opt_steps = int(state["opt_steps"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for model, ints in zip(self.models, state["int_buffers"], strict=True):
            for name, value in ints.items():
                mod, attr = _get(model, name)
                getattr(mod, attr).copy_(value)
