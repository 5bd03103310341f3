"""Presets: deltas over TrainConfig's defaults (`TrainConfig.from_preset(name, **overrides)`)."""

from __future__ import annotations

from typing import Any

from .config import ConfigError, TrainConfig, unknown_preset

# --- presets: deltas over the default ---------------------------------------------------------

# the small-model recipe of the first prototype (docs/LOG.md): SGD 0.05 cosine, uniform p with
# the optimizer state shuffled along, no shuffle in the last 10% of steps, PAPA's pull scaled to
# short schedules (chosen on test accuracy before the validation split existed: to be re-tuned)
_SMALL = dict(
    lr=0.05,
    weight_decay=5e-4,
    p=0.01,
    layer_schedule="uniform",
    shuffle_optimizer_state=True,
    shuffle_until=0.9,
    papa_rate=0.1,
)
# MNIST-1D's 1-D CNN: 30 steps/epoch at batch 128; at 32 channels every method lands 3-20
# points lower (docs/LOG.md)
_MNIST1D = dict(_SMALL, dataset="mnist1d", model="cnn1d", width=64, batch_size=128)
# PAPA's CIFAR protocol (docs/method.md): ResNet-18, SGD 0.1, batch 64, random crop + flip, N=5;
# evaluation sparser and barriers only at the end, since a CPU/GPU eval of 5 ResNets is costly
_CIFAR = dict(
    model="resnet18",
    val_fraction=0.02,  # 1000 of 50000 images, PAPA's held-out split
    epochs=300,
    batch_size=64,
    lr=0.1,
    momentum=0.9,
    augment=True,
    n_members=5,
    p=0.001,
    layer_schedule="linear",
    papa_rate=0.01,
    papa_every=10,
    papa_all_every=5,
    eval_every=5,
    barrier_every=0,
    eval_batch_size=500,
    barrier_pairs=2,
)

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "mnist1d-fast": dict(_MNIST1D, epochs=40),
    # the longer schedule where the prototype saw WASH's average close to PAPA's
    "mnist1d": dict(_MNIST1D, epochs=120),
    # seconds, for tests and smoke runs; it still learns (members reach ~30-45% on MNIST-1D's
    # 10 classes in 2 epochs), so an end-to-end test can tell a broken learner from a working one
    "tiny": dict(
        dataset="mnist1d",
        model="cnn1d",
        width=16,
        epochs=2,
        batch_size=32,
        lr=0.1,
        n_train=2048,
        n_members=3,
        eval_batch_size=512,
        barrier_points=5,
        barrier_samples=200,
        progress=False,
    ),
    "digits": dict(
        _SMALL,
        dataset="digits",
        model="cnn_digits",
        epochs=30,
        batch_size=64,
    ),
    # `wash-sweeps demo`: digits on a short schedule, evaluated once at the end (docs/LOG.md,
    # 2026-12-01, "the demo": the cheapest setting in which the paper's claims can be checked)
    "demo": dict(
        _SMALL,
        dataset="digits",
        model="cnn_digits",
        epochs=15,
        batch_size=64,
        eval_every=15,
        barrier_every=0,
    ),
    "cifar10-resnet18": dict(_CIFAR, dataset="cifar10", weight_decay=1e-4),
    "cifar100-resnet18": dict(_CIFAR, dataset="cifar100", weight_decay=5e-4),
    # a short CIFAR-10 schedule for a quick GPU check, with the small-model WASH/PAPA recipe
    "cifar10-short": _CIFAR | _SMALL | dict(dataset="cifar10", epochs=10, eval_every=2, lr=0.1),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(unknown_preset(name))
    return TrainConfig(**{**PRESETS[name], "preset": name})
