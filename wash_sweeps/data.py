"""Datasets as tensors on the training device, the held-out split, and per-member batches.

Every dataset becomes a :class:`Data` of tensors: train / validation (held out of the training
set, fixed per dataset) / test. Batches are taken by
direct tensor indexing with a per-member permutation of each epoch (derived from (seed, member,
epoch), so a resumed run sees the same order): no per-member DataLoader.

    data = load_data(cfg, device)
    for x, y in member_batches(data, cfg, member=0, epoch=3): ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from . import seeding
from .cache import cached_arrays
from .config import ConfigError, TrainConfig

# per-channel statistics used for normalisation (torchvision's usual values)
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclasses.dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    def to(self, device: torch.device | str) -> Data:
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)
            },
        )


_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


def mnist1d_args() -> dict[str, Any]:
    """The generator's arguments and the package version: the cache key of MNIST-1D."""
    from importlib.metadata import version

    from mnist1d.data import get_dataset_args

    return {"mnist1d": version("mnist1d"), **get_dataset_args(as_dict=True)}


def _mnist1d() -> tuple[np.ndarray, ...]:
    # the package's generator, never its downloader: 4000/1000 split, length-40 signals;
    # generating takes seconds, so the arrays are cached (see wash_sweeps.cache)
    def make() -> dict[str, np.ndarray]:
        from mnist1d.data import get_dataset_args, make_dataset

        ds = make_dataset(get_dataset_args())
        return {k: ds[k] for k in _MNIST1D_KEYS}

    ds = cached_arrays("mnist1d", mnist1d_args(), _MNIST1D_KEYS, make)
    return ds["x"][:, None, :], ds["y"], ds["x_test"][:, None, :], ds["y_test"]


def _digits(seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = d.target
    order = np.random.default_rng(1234).permutation(len(y))  # fixed 80/20 split, not the run seed
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and numpy arrays; any other global (a function to
    call: os.system, builtins.eval...) is refused before it is looked up."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            # a numpy scalar (labels written as np.int64): built from a dtype and raw bytes
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, md5: str, root: str) -> dict:
    """One torchvision CIFAR batch file, checked against torchvision's MD5 before unpickling."""
    if file_md5(path) != md5:
        raise ConfigError(
            f"data_root={root!r}: {path} does not match torchvision's MD5 for {path.name} "
            "(corrupt or not the original file); not read. Replace it with the extracted archive"
        )
    try:
        with path.open("rb") as f:
            entry = _ArraysOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ConfigError(f"data_root={root!r}: {path} is not a CIFAR batch file ({e})") from None
    if not isinstance(entry, dict):
        raise ConfigError(f"data_root={root!r}: {path} is not a CIFAR batch file")
    return entry


def _cifar(name: str, root: str, download: bool) -> tuple[np.ndarray, ...]:
    """CIFAR-10/100 from torchvision's on-disk format (the python pickle batches under
    `root/cifar-10-batches-py` or `root/cifar-100-python`); torchvision downloads them when asked.
    Each file is checked against torchvision's MD5 (`train_list` / `test_list`) before it is
    unpickled, and unpickled with numpy arrays as the only objects allowed: a planted file runs
    no code."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = Path(root) / cls.base_folder
    if download and not folder.exists():
        cls(root, train=True, download=True)
        cls(root, train=False, download=True)
    label_key = b"labels" if name == "cifar10" else b"fine_labels"

    def read(files: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for fname, md5 in files:
            path = folder / fname
            if not path.exists():
                raise ConfigError(
                    f"data_root={root!r}: {name} file {path} is missing; put "
                    "torchvision's extracted CIFAR files there or set download=true"
                )
            entry = _read_cifar_batch(path, md5, root)
            xs.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry[label_key], dtype=np.int64))
        return np.concatenate(xs).transpose(0, 2, 3, 1), np.concatenate(ys)  # NHWC like torchvision

    x, y = read(cls.train_list)
    xt, yt = read(cls.test_list)
    return x, y, xt, yt


def _synthetic(cfg: TrainConfig) -> tuple[np.ndarray, ...]:
    """Gaussian class prototypes plus noise: learnable, any shape, no download."""
    shape = tuple(int(d) for d in cfg.synthetic_shape.lower().split("x"))
    rng = np.random.default_rng(seeding.derive(cfg.seed, seeding.SPLIT, 99))
    n_train = cfg.n_train or 2048
    protos = rng.normal(size=(cfg.synthetic_classes, *shape)).astype(np.float32)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, cfg.synthetic_classes, size=n)
        return protos[y] + 1.5 * rng.normal(size=(n, *shape)).astype(np.float32), y

    x, y = sample(n_train)
    xt, yt = sample(max(256, n_train // 4))
    return x, y, xt, yt


def _normalise_images(x: np.ndarray, name: str) -> torch.Tensor:
    t = torch.from_numpy(x).float().div_(255.0).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in _CIFAR_STATS[name])
    return (t - mean) / std


def load_data(cfg: TrainConfig, device: torch.device | str = "cpu") -> Data:
    """Load `cfg.dataset`, standardise it, hold out `val_fraction` of the training set as the
    validation split, fixed by the dataset (not the run seed), and move everything to `device`."""
    if cfg.dataset == "mnist1d":
        x, y, xt, yt = _mnist1d()
    elif cfg.dataset == "digits":
        x, y, xt, yt = _digits(cfg.seed)
    elif cfg.dataset in _CIFAR_STATS:
        x, y, xt, yt = _cifar(cfg.dataset, cfg.data_root, cfg.download)
    else:
        x, y, xt, yt = _synthetic(cfg)

    if cfg.dataset in _CIFAR_STATS:
        xtr, xte = _normalise_images(x, cfg.dataset), _normalise_images(xt, cfg.dataset)
    else:
        xtr, xte = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(xt, dtype=torch.float32)
        mean, std = xtr.mean(), xtr.std()  # statistics of the training set only
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    ytr, yte = torch.as_tensor(y, dtype=torch.long), torch.as_tensor(yt, dtype=torch.long)
    n_classes = int(max(ytr.max(), yte.max())) + 1

    # the validation split is fixed per dataset so every run and seed is judged on the same
    # samples; it never depends on the run seed (nor on n_train, which caps the rest)
    order = torch.from_numpy(np.random.default_rng(20240527).permutation(len(ytr)))
    n_val = round(cfg.val_fraction * len(ytr))
    val, train = order[:n_val], order[n_val:]
    if cfg.n_train:
        train = train[: cfg.n_train]
    if len(train) < cfg.batch_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size}: larger than the {len(train)} training "
            f"samples of {cfg.dataset}"
        )
    return Data(xtr[train], ytr[train], xtr[val], ytr[val], xte, yte, n_classes).to(device)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Every member takes the same number of full batches per epoch (the remainder is dropped)."""
    return n_train // batch_size


def epoch_order(
    cfg: TrainConfig, n_train: int, member: int, epoch: int, device: torch.device | str
) -> torch.Tensor:
    g = seeding.torch_generator(cfg.seed, seeding.DATA_ORDER, member, epoch)
    return torch.randperm(n_train, generator=g).to(device)


def augment_batch(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with `pad` pixels of zero padding and a random horizontal flip, vectorised
    over the batch (per-sample offsets drawn from `g`)."""
    b, _, h, w = x.shape
    offs = torch.randint(0, 2 * pad + 1, (2, b), generator=g).to(x.device)
    flip = (torch.rand(b, generator=g) < 0.5).to(x.device)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = offs[0][:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offs[1][:, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def batch(
    data: Data, order: torch.Tensor, step_in_epoch: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    idx = order[step_in_epoch * batch_size : (step_in_epoch + 1) * batch_size]
    return data.x_train[idx], data.y_train[idx]


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    for i in range(0, len(y), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


def n_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
