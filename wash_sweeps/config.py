"""The training configuration: one frozen dataclass and its validation (presets: `presets.py`,
command-line flags: `config_cli.py`).

Every other entry point (CLI flags, sweep files, DVC's params.yaml, tracker params, checkpoint
metadata) is derived from :class:`TrainConfig`; nothing else defines a hyper-parameter.

    cfg = TrainConfig.from_preset("mnist1d-fast", method="wash", p=0.01)
    cfg = TrainConfig.from_yaml("my_run.yaml")          # may name `preset:` inside
    cfg = TrainConfig.from_cli(["--preset", "digits", "--set", "p=0.003"])
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import math
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

Dataset = Literal["mnist1d", "digits", "cifar10", "cifar100", "synthetic"]
Model = Literal["cnn1d", "cnn_digits", "mlp", "resnet18", "resnet20", "vgg16_bn"]
Method = Literal["independent", "wash", "papa", "papa_all", "papa2", "dart"]
POPULATION_METHODS = ("wash", "papa", "papa_all", "papa2", "dart")


# fields that steer how a run is executed or recorded, never what it computes: they may differ
# between a run and its resume / retry, and are left out of the run directory's config hash
RUN_CONTROL = frozenset(
    {
        "out_dir",
        "run_name",
        "progress",
        "threads",
        "device",
        "compile",
        "vectorize",
        "track",
        "project",
        "group",
        "job_type",
        "tags",
        "wandb_entity",
        "wandb_mode",
        "mlflow_uri",
        "checkpoint_every",
        "data_root",
        "download",
    }
)


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the field and what is allowed."""


TRACKERS = ("wandb", "mlflow")  # the trackers the `track` field may name


def trackers(cfg: Any) -> tuple[str, ...]:
    """The trackers `cfg.track` names, in order: "wandb, mlflow" -> ("wandb", "mlflow"). The one
    place the `track` string is parsed."""
    return tuple(t.strip() for t in cfg.track.split(",") if t.strip())


def with_tracker(cfg: Any, name: str) -> str:
    """`cfg.track` with tracker `name` added (once, after those it names)."""
    return ",".join(dict.fromkeys([*trackers(cfg), name]))


def _f(default: Any, help: str, **constraints: Any) -> Any:
    """A field with its help text (unit first) and range constraints (min, max, gt)."""
    return dataclasses.field(default=default, metadata={"help": help, **constraints})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # --- what to train -------------------------------------------------------------------
    preset: str = _f("default", "name of the preset these values started from (recorded only)")
    dataset: Dataset = _f("mnist1d", "dataset name")
    data_root: str = _f("data", "directory holding torchvision datasets (cifar10/100)")
    download: bool = _f(False, "let torchvision download CIFAR when missing (needs network)")
    n_train: int = _f(0, "samples: cap on the training set size, 0 = all", min=0)
    synthetic_shape: str = _f(
        "1x40",
        "CxL or CxHxW of synthetic inputs",
    )
    synthetic_classes: int = _f(10, "classes of the synthetic dataset", min=2)
    val_fraction: float = _f(
        0.1,
        "fraction of the training set held out as the validation split (fixed per dataset; "
        "every decision: objectives, pruning, greedy soup)",
        min=0.0,
        max=0.5,
    )
    augment: bool = _f(False, "random crop (4 px padding) + horizontal flip for image data")
    model: Model = _f("cnn1d", "architecture")
    width: int = _f(
        32, "channels of the first layer of the small models (cnn1d/cnn_digits/mlp)", min=1
    )
    # --- the population and its communication ---------------------------------------------
    method: Method = _f(
        "wash",
        "independent | wash | papa | papa_all | papa2 (pairwise averages at papa_all's times) | "
        "dart (papa_all's schedule, member_regularization forced on)",
    )
    n_members: int = _f(5, "population size N", min=1, max=1024)
    same_init: bool = _f(False, "all members start from member 0's initialisation")
    member_regularization: bool = _f(
        False,
        "PAPA's grid: member k takes entry k of the seed-shuffled product of mixup {0,.5,1}, "
        "label smoothing {0,.05,.1}, CutMix {0,.5,1}, random erasing {0,.15,.35} "
        "(always on for method=dart)",
    )
    p: float = _f(
        0.01,
        "per coordinate per shuffle: probability that a coordinate is shuffled",
        min=0.0,
        max=1.0,
    )
    layer_schedule: Literal["linear", "uniform"] = _f(
        "linear", "p per layer: uniform p, or linear p*(1-l/L) decreasing with depth"
    )
    shuffle_every: int = _f(1, "optimizer steps between shuffles", min=1)
    shuffle_until: float = _f(
        1.0, "fraction of training after which shuffling stops", min=0.0, max=1.0
    )
    p_schedule: Literal["constant", "cosine", "linear"] = _f(
        "constant", "p over training: constant, or decayed to 0 by cosine/linear"
    )
    shuffle_optimizer_state: bool = _f(False, "momentum buffers move with their weights")
    shuffle_buffers: bool = _f(False, "BatchNorm running statistics are shuffled too")
    papa_rate: float = _f(0.01, "per sync: PAPA pull (1-a) toward the mean", min=0.0, max=1.0)
    papa_every: int = _f(10, "optimizer steps between PAPA pulls", min=1)
    papa_scale_with_lr: bool = _f(True, "PAPA pull scaled by lr_t/lr_0 along the schedule")
    papa_all_every: int = _f(
        5,
        "epochs K between merges of papa_all, papa2 and dart (after epochs 0, K, 2K, ..., "
        "never after the last)",
        min=1,
    )
    # --- optimisation ---------------------------------------------------------------------
    optimizer: Literal["sgd", "adamw"] = _f("sgd", "optimizer of every member")
    lr: float = _f(0.05, "learning rate at the start of the schedule", gt=0.0)
    momentum: float = _f(0.9, "SGD momentum", min=0.0, max=0.999)
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(5e-4, "L2 weight decay per step", min=0.0)
    lr_schedule: Literal["cosine", "constant", "step"] = _f(
        "cosine", "learning-rate schedule, per iteration (step: x0.1 at 50% and 75%)"
    )
    warmup_epochs: float = _f(0.0, "epochs of linear learning-rate warm-up", min=0.0)
    batch_size: int = _f(128, "samples per member per step", min=1)
    epochs: int = _f(40, "epochs of training", min=1)
    precision: Literal["fp32", "bf16", "fp16"] = _f(
        "fp32",
        "training forward/backward arithmetic: fp32, or autocast to bf16 or fp16 (fp16 with "
        "torch.amp's gradient scaler, CUDA only); weights, optimizer state, the shuffle and "
        "evaluation stay fp32",
    )
    # --- evaluation -----------------------------------------------------------------------
    eval_every: int = _f(
        1, "epochs between evaluations (the last epoch is always evaluated)", min=1
    )
    eval_batch_size: int = _f(1000, "samples per forward pass at evaluation", min=1)
    barrier_points: int = _f(11, "points on the interpolation grid of the loss barrier", min=2)
    barrier_pairs: int = _f(3, "member pairs on which the barrier is measured, 0 = all", min=0)
    barrier_every: int = _f(
        1, "evaluations between barrier measurements, 0 = at the end only", min=0
    )
    barrier_samples: int = _f(1000, "test samples used for the loss barrier, 0 = all", min=0)
    barrier_points_during: int = _f(
        3,
        "points on the interpolation grid at evaluations before the last (3: the midpoint); "
        "the final evaluation measures barrier_points",
        min=2,
    )
    barrier_bn_reestimate: bool = _f(
        True,
        "re-estimate BN statistics of every interpolated model on training batches "
        "(models with BatchNorm only; off = interpolate the running statistics)",
    )
    bn_reestimate_batches: int = _f(20, "training batches to re-estimate BN statistics", min=1)
    align_at_end: bool = _f(
        True,
        "final evaluation only: Git Re-Basin weight matching of every member to member 0, then "
        "the average (BN statistics re-estimated): val/ and test/acc_aligned, barrier/aligned_mean",
    )
    # --- run control ----------------------------------------------------------------------
    seed: int = _f(0, "base seed; every other seed is derived from it", min=0)
    device: str = _f("auto", "auto | cpu | cuda | cuda:K")
    compile: bool = _f(
        False, "torch.compile every member's training forward (first steps slower; for GPUs)"
    )
    vectorize: bool = _f(
        False,
        "one torch.func.vmap forward/backward over the stacked members instead of a loop "
        "(not with per-member regularisation; slower than the loop on CPUs)",
    )
    threads: int = _f(
        0,
        "torch CPU threads; 0 = auto: OMP_NUM_THREADS if set, else up to 2 while the cores are "
        "free and 1 while other processes use them (re-decided each second; see runtime.py)",
        min=0,
    )
    out_dir: str = _f("runs", "root directory of run directories")
    run_name: str = _f("", "run directory name; empty = derived from method, p, N and seed")
    checkpoint_every: int = _f(1, "epochs between checkpoints, 0 = only at the end", min=0)
    progress: bool = _f(True, "tqdm progress bar")
    # --- tracking -------------------------------------------------------------------------
    track: str = _f("", "comma list of trackers: wandb, mlflow (local files are always written)")
    project: str = _f("wash-sweeps", "W&B project / MLflow experiment name")
    wandb_entity: str = _f("", "W&B entity (team or user)")
    wandb_mode: Literal["offline", "online", "disabled"] = _f(
        "offline", "W&B mode; online needs WANDB_API_KEY"
    )
    group: str = _f("", "run group (a study or sweep name)")
    job_type: str = _f("train", "W&B job type")
    tags: str = _f("", "comma list of tags")
    mlflow_uri: str = _f(
        "", "MLflow tracking URI; empty = MLFLOW_TRACKING_URI or SQLite in out_dir"
    )

    # ----------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name), _hints()[f.name])
        _check_cross_fields(self)

    # construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """Apply `values` over `base` (or over the preset named in `values`, or the default)."""
        values = dict(values)
        bad = [k for k in values if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"config key {bad[0]!r}: field names are strings (see fields)")
        if base is None:
            from .presets import preset

            base = preset(str(values["preset"])) if "preset" in values else cls()
        unknown = sorted(set(values) - set(field_names()))
        if unknown:
            raise ConfigError(unknown_field(unknown[0]))
        coerced = {k: coerce(k, v) for k, v in values.items()}
        return dataclasses.replace(base, **coerced)

    @classmethod
    def from_preset(cls, name: str = "default", **overrides: Any) -> TrainConfig:
        from .presets import preset

        return cls.from_dict(overrides, base=preset(name))

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        from .yaml_file import read_yaml

        data = read_yaml(path, "config") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of field: value")
        return cls.from_dict({**data, **overrides})

    @classmethod
    def from_cli(cls, argv: Sequence[str]) -> TrainConfig:
        from .config_cli import add_config_arguments, from_args

        parser = argparse.ArgumentParser(add_help=False)
        add_config_arguments(parser)
        args, rest = parser.parse_known_args(argv)
        if rest:
            raise ConfigError(f"unknown arguments: {' '.join(rest)}")
        return from_args(args)

    # views --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict(changes, base=self)

    @property
    def is_population_method(self) -> bool:
        return self.method in POPULATION_METHODS

    @property
    def uses_member_regularization(self) -> bool:
        """PAPA's per-member grid is on: asked for, or DART (its members differ by it)."""
        return self.member_regularization or self.method == "dart"

    def result_config(self) -> dict[str, Any]:
        """The fields that change a run's results (all but RUN_CONTROL): what a retry, a resume
        and a run directory's identity compare."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CONTROL}

    @property
    def config_hash(self) -> str:
        """6 hex digits of the result-changing config (two configs that train differently never
        share a default run directory)."""
        text = json.dumps(self.result_config(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:6]

    @property
    def default_run_name(self) -> str:
        parts = [self.dataset, self.method, f"N{self.n_members}"]
        if self.method == "wash":
            parts.append(f"p{self.p:g}")
        if self.method == "papa":
            parts.append(f"r{self.papa_rate:g}")
        parts.append(f"s{self.seed}")
        parts.append(self.config_hash)
        return "-".join(parts)

    def run_dir(self, workdir: str | Path | None = None) -> Path:
        """Where a run of this config writes: `workdir`, else out_dir/(run_name or the default)."""
        return Path(workdir or Path(self.out_dir) / (self.run_name or self.default_run_name))


# --- field checking ---------------------------------------------------------------------------


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def did_you_mean(name: Any, known: Sequence[str]) -> str:
    """The closest known name as `did you mean 'n_members'? ` (empty when none is close)."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def unknown_field(name: Any) -> str:
    """One line for a misspelled field: the closest field, not all ~70 of them."""
    return (
        f"unknown config field {name!r}; {did_you_mean(name, field_names())}"
        "(`wash-sweeps fields` lists every field)"
    )


def unknown_preset(name: Any) -> str:
    from .presets import PRESETS

    hint = did_you_mean(name, list(PRESETS))
    return f"preset={name!r}: {hint}allowed presets are {', '.join(PRESETS)}"


_HINTS: dict[str, Any] = {}


def _hints() -> dict[str, Any]:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(TrainConfig))
    return _HINTS


def field_type(name: str) -> Any:
    return _hints()[name]


def field_choices(name: str) -> tuple[Any, ...] | None:
    hint = field_type(name)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def field_help(name: str) -> str:
    return TrainConfig.__dataclass_fields__[name].metadata.get("help", "")


def _base_type(hint: Any) -> type:
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    return hint


def coerce(name: str, value: Any) -> Any:
    """Turn a CLI/YAML/sweep value into the field's type; refuse what does not fit."""
    if name not in TrainConfig.__dataclass_fields__:
        raise ConfigError(unknown_field(name))
    typ = _base_type(field_type(name))
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        if typ is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ConfigError(f"{name}={value!r}: expected a boolean (true/false)")
        try:
            if typ is int and "e" in text.lower():
                number = float(text)
                if not number.is_integer():
                    raise ValueError(text)
                return int(number)
            return typ(text)
        except (ValueError, OverflowError):
            raise ConfigError(f"{name}={value!r}: expected {typ.__name__}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_field(name: str, value: Any) -> Any:
    """Coerce `value` for field `name` and check its type, choices and range (not cross-field:
    a sweep value is checked alone, the combination when a trial builds its config)."""
    value = coerce(name, value)
    _check_field(TrainConfig.__dataclass_fields__[name], value, field_type(name))
    return value


def _check_field(f: dataclasses.Field, value: Any, hint: Any) -> None:
    typ = _base_type(hint)
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(
            f"{f.name}={value!r}: expected {typ.__name__}, got {type(value).__name__}"
        )
    choices = field_choices(f.name)
    if choices is not None and value not in choices:
        raise ConfigError(f"{f.name}={value!r}: allowed values are {', '.join(map(str, choices))}")
    if typ in (int, float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name}={value!r}: must be a finite number")
        lo, hi, gt = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("gt")
        if lo is not None and value < lo:
            raise ConfigError(
                f"{f.name}={value!r}: must be >= {lo}" + (f" and <= {hi}" if hi is not None else "")
            )
        if hi is not None and value > hi:
            raise ConfigError(
                f"{f.name}={value!r}: must be <= {hi}" + (f" and >= {lo}" if lo is not None else "")
            )
        if gt is not None and value <= gt:
            raise ConfigError(f"{f.name}={value!r}: must be > {gt}")


# which models read which input shapes
_MODEL_DATASETS = {
    "cnn1d": ("mnist1d", "synthetic"),
    "cnn_digits": ("digits", "synthetic"),
    "mlp": ("mnist1d", "digits", "synthetic", "cifar10", "cifar100"),
    "resnet18": ("cifar10", "cifar100", "synthetic"),
    "resnet20": ("cifar10", "cifar100", "synthetic"),
    "vgg16_bn": ("cifar10", "cifar100", "synthetic"),
}


def _check_cross_fields(c: TrainConfig) -> None:
    if c.is_population_method and c.n_members < 2:
        raise ConfigError(f"n_members={c.n_members}: method {c.method!r} needs n_members >= 2")
    if c.dataset not in _MODEL_DATASETS[c.model]:
        raise ConfigError(
            f"model={c.model!r} does not take dataset={c.dataset!r}; "
            f"it takes {', '.join(_MODEL_DATASETS[c.model])}"
        )
    dims = c.synthetic_shape.lower().split("x")
    if not (2 <= len(dims) <= 3 and all(d.isdigit() and int(d) > 0 for d in dims)):
        raise ConfigError(
            f"synthetic_shape={c.synthetic_shape!r}: expected CxL or CxHxW, "
            "positive integers (e.g. 1x40, 3x32x32)"
        )
    if c.dataset == "synthetic" and c.model == "cnn1d" and len(dims) != 2:
        raise ConfigError(f"synthetic_shape={c.synthetic_shape!r}: model cnn1d needs CxL")
    if c.dataset == "synthetic" and c.model != "cnn1d" and c.model != "mlp" and len(dims) != 3:
        raise ConfigError(f"synthetic_shape={c.synthetic_shape!r}: model {c.model} needs CxHxW")
    if c.device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", c.device):
        raise ConfigError(f"device={c.device!r}: allowed values are auto, cpu, cuda, cuda:K")
    if c.vectorize and c.uses_member_regularization:
        raise ConfigError(
            "vectorize=true: members with their own regularisation (member_regularization, "
            "method=dart) mix their batches one by one; use vectorize=false"
        )
    if c.device == "cpu":  # device=auto is checked once resolved (train.setup)
        from .runtime import check_precision

        check_precision(c.precision, "cpu")
    if any(t not in TRACKERS for t in trackers(c)):
        raise ConfigError(f"track={c.track!r}: allowed trackers are {', '.join(TRACKERS)}")
    if "/" in c.run_name or c.run_name in (".", ".."):
        raise ConfigError(f"run_name={c.run_name!r}: must be a plain directory name")
    _check_no_credentials(c)


def _check_no_credentials(c: TrainConfig) -> None:
    """A config is written to disk and to trackers: it never holds a password."""
    from .redact import has_password, redact_url

    if has_password(c.mlflow_uri):
        raise ConfigError(
            f"mlflow_uri={redact_url(c.mlflow_uri)!r}: holds a password, which would be recorded "
            "with the run; give the URI without it and set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD in the environment"
        )
