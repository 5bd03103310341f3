"""Section `gpu`: the paper's setting on one device, CIFAR-shaped synthetic tensors, N = 5.

- throughput: population images/s of this project's step (`Population.train_step`, fp16 with
  its gradient scaler, bf16, vectorised with vmap, compiled; channels_last on CUDA) against a
  PAPA-code-style loop: N
  nn.Modules, N torch.optim.SGD, N GradScalers, autocast fp16, one member after the other (as
  SamsungSAILMontreal/PAPA trains). Same models, initialisations, batches (tensor indexing on
  the device for both: data loading is not what is compared), hyper-parameters.
- cost as % of a step: WASH at p = 0.01 (uniform schedule, momentum shuffled along: the most
  expensive setting) with its plans prefetched on a thread (the default on CUDA) and drawn in
  the loop, PAPA's pull amortised over its period; each measured as (step + it) / step - 1 in
  one interleaved round-robin, plus the plan's host-side draw alone.
- a short training run (`train_and_evaluate`, cifar10-short's recipe on synthetic data of
  CIFAR's shape, bf16 on CUDA): wall time, training images/s, test accuracy.

There is no dataset download on a GPU machine here, and a step's cost does not depend on pixel
values. `--tiny` (what `gpu/smoke.sh --quick` and the CPU test run): ResNet-20 on 3x8x8, N = 3,
seconds, numbers meaningless.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from wash_sweeps import seeding
from wash_sweeps.config import TrainConfig
from wash_sweeps.data import Data, load_data
from wash_sweeps.methods import LocalExchange, Papa, Wash
from wash_sweeps.models import build_model

from .cases import MemberBatches, ProjectLoop, device_sync
from .comm_bench import _FAR, _counter
from .timing import interleaved, median, paired_ratio

P = 0.01


def gpu_config(device: str, tiny: bool, **changes: Any) -> TrainConfig:
    """cifar10-resnet18's recipe (N = 5, batch 64, SGD 0.1) on synthetic CIFAR-shaped data."""
    size = (
        dict(model="resnet20", synthetic_shape="3x8x8", n_train=256, n_members=3, batch_size=16)
        if tiny
        else dict(synthetic_shape="3x32x32", n_train=4096)
    )
    return TrainConfig.from_preset(
        "cifar10-resnet18",
        **{"dataset": "synthetic", "augment": False, "progress": False, "device": device}
        | size
        | changes,
    )


class PapaStyleLoop:
    """N modules, N optimizers, N GradScalers, autocast: PAPA's official training step."""

    def __init__(self, cfg: TrainConfig, data: Data, amp: torch.dtype):
        self.device, self.amp = data.x_train.device, amp
        self.models, self.opts, self.scalers = [], [], []
        for m in range(cfg.n_members):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seeding.derive(cfg.seed, seeding.INIT, m))
                model = build_model(cfg, data.in_shape, data.n_classes).to(self.device)
            opt = torch.optim.SGD(
                model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
            scaler = torch.amp.GradScaler(self.device.type, enabled=amp == torch.float16)
            self.models.append(model)
            self.opts.append(opt)
            self.scalers.append(scaler)
        self.batches = MemberBatches(cfg, data, range(cfg.n_members))

    def step(self) -> None:
        for model, opt, scaler, (x, y) in zip(
            self.models, self.opts, self.scalers, self.batches.next(), strict=True
        ):
            model.train()
            with torch.autocast(self.device.type, dtype=self.amp):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


def _amp(device: str) -> tuple[str, torch.dtype]:
    # PAPA's code trains with fp16 AMP; a CPU has no fast fp16 (and the config refuses it there)
    return ("fp16", torch.float16) if device.startswith("cuda") else ("bf16", torch.bfloat16)


def bench_throughput(device: str, tiny: bool, repeats: int, block_s: float) -> dict[str, Any]:
    cfg = gpu_config(device, tiny, method="independent")
    data = load_data(cfg, device)
    precision, dtype = _amp(device)
    loops = {
        "papa_style": PapaStyleLoop(cfg, data, dtype).step,
        f"project_{precision}": ProjectLoop(cfg.replace(precision=precision), data).step,
        "project_bf16": ProjectLoop(cfg.replace(precision="bf16"), data).step,
        # one vmap'd forward/backward over the stacked members (torch.func)
        f"project_{precision}_vmap": ProjectLoop(
            cfg.replace(precision=precision, vectorize=True), data
        ).step,
    }
    notes = {}
    if device.startswith("cuda") and not tiny:
        notes["compile"] = _add_compiled(loops, cfg.replace(precision=precision), data, device)
    s = interleaved(loops, repeats, block_s, sync=device_sync(device))
    images = cfg.n_members * cfg.batch_size
    rows = {
        k: {"ms_per_step": 1e3 * median(v), "images_per_s": images / median(v)}
        for k, v in s.items()
    }
    return {
        "model": cfg.model,
        "n_members": cfg.n_members,
        "batch_size": cfg.batch_size,
        "input": cfg.synthetic_shape,
        "rows": rows,
        "speedup": {k: paired_ratio(s["papa_style"], v) for k, v in s.items() if k != "papa_style"},
        **notes,
    }  # fmt: skip


def _add_compiled(loops: dict, cfg: TrainConfig, data: Data, device: str) -> str:
    """A torch.compile'd project loop, compiled before timing starts (its compile time is
    reported, not averaged into steps); a compile failure is recorded, not fatal."""
    start = time.perf_counter()
    try:
        loop = ProjectLoop(cfg.replace(compile=True), data)
        for _ in range(3):
            loop.step()
        device_sync(device)()
    except Exception as e:  # inductor needs a compiler toolchain; the other rows still count
        return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    loops[f"project_{cfg.precision}_compiled"] = loop.step
    return f"compiled in {time.perf_counter() - start:.1f} s"


def bench_overheads(device: str, tiny: bool, repeats: int, block_s: float) -> dict[str, Any]:
    precision, _ = _amp(device)
    cfg = gpu_config(
        device, tiny, method="wash", p=P, layer_schedule="uniform", shuffle_optimizer_state=True
    ).replace(precision=precision)
    data = load_data(cfg, device)
    loop = ProjectLoop(cfg, data)
    exchange = LocalExchange(cfg.n_members)
    ahead = Wash(cfg, loop.pop, exchange, _FAR, prefetch=True)
    inline = Wash(cfg, loop.pop, exchange, _FAR, prefetch=False)
    papa = Papa(cfg.replace(method="papa"), loop.pop, exchange, _FAR)
    draw = [0]

    def plan_only() -> None:
        inline._draw_host(draw[0])
        draw[0] += 1

    fns: dict[str, Callable[[], None]] = {"step": loop.step, "plan": plan_only}
    for name, method in (("wash_prefetched", ahead), ("wash_inline", inline), ("papa", papa)):
        fns[name] = _with_step(loop.step, _counter(method.after_step))
    calls = {"papa": cfg.papa_every * 2}  # whole PAPA periods: the amortised cost
    s = interleaved(fns, repeats, block_s, calls=calls, sync=device_sync(device))
    if ahead.prefetcher is not None:
        ahead.prefetcher.close()
    out = {
        k: 100.0 * (paired_ratio(s[k], s["step"]) - 1.0)
        for k in ("wash_prefetched", "wash_inline", "papa")
    }
    return {
        "p": P,
        "precision": precision,
        "step_ms": 1e3 * median(s["step"]),
        "plan_ms": 1e3 * median(s["plan"]),
        "plan_pct_of_step": 100.0 * paired_ratio(s["plan"], s["step"]),
        "pct_of_step": out,
        "n_params": loop.pop.spec.n_params,
    }


def _with_step(step: Callable[[], None], after: Callable[[], None]) -> Callable[[], None]:
    def call() -> None:
        step()
        after()

    return call


def train_run(device: str, tiny: bool, workdir: Path) -> dict[str, Any]:
    """A short CIFAR-shaped training run through `train_and_evaluate`."""
    from wash_sweeps.train import train_and_evaluate

    precision = "bf16"  # the GPU recipe; bf16 runs on a CPU too (slowly), fp16 does not
    size = (
        # seconds on a CPU: one epoch, a 3-point barrier at the end, no alignment
        dict(epochs=1, n_train=256, barrier_points=3, bn_reestimate_batches=2, align_at_end=False)
        if tiny
        else dict(epochs=3, n_train=8192)
    )
    cfg = gpu_config(device, tiny, method="wash", precision=precision, eval_every=1, **size)
    cfg = cfg.replace(out_dir=str(workdir), augment=not tiny)
    start = time.perf_counter()
    s = train_and_evaluate(cfg, workdir / "gpu-train-run")
    wall = time.perf_counter() - start
    return {
        "config": {k: getattr(cfg, k) for k in ("model", "n_members", "epochs", "n_train")},
        "precision": precision,
        "wall_s": wall,
        "train_s": s["time/train_s"],
        "train_images_per_s": s["time/samples_per_s"],
        "test_acc_avg": s["test/acc_avg"],
        "test_acc_ens": s["test/acc_ens"],
    }


def bench_gpu(device: str, tiny: bool, repeats: int, block_s: float, workdir: Path) -> dict:
    torch.manual_seed(0)
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "throughput": bench_throughput(device, tiny, repeats, block_s),
        "overheads": bench_overheads(device, tiny, repeats, block_s),
        "train_run": train_run(device, tiny, workdir),
    }
