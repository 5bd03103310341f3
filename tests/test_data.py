"""Datasets without downloads, CIFAR from a small file in torchvision's format, batches."""

import pickle

import numpy as np
import pytest
import torch

from wash_sweeps.config import ConfigError, TrainConfig
from wash_sweeps.data import augment_batch, batch, epoch_order, load_data, steps_per_epoch


def _write_cifar(root, name, monkeypatch, n_per_file=8):
    """A tiny CIFAR in torchvision's on-disk format (python pickle batches); torchvision's
    checksum lists are patched to these files' MD5s (the loader checks them)."""
    from torchvision import datasets

    from wash_sweeps.data import file_md5

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    n_classes = 10 if name == "cifar10" else 100
    rng = np.random.default_rng(0)
    for fname, _ in cls.train_list + cls.test_list:
        entry = {
            b"data": rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8),
            key: list(rng.integers(0, n_classes, n_per_file)),
        }
        with (folder / fname).open("wb") as f:
            pickle.dump(entry, f)
    for attr in ("train_list", "test_list"):
        listed = [[f, file_md5(folder / f)] for f, _ in getattr(cls, attr)]
        monkeypatch.setattr(cls, attr, listed)
    return folder


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loads_from_torchvision_format(tmp_path, name, monkeypatch):
    folder = _write_cifar(tmp_path, name, monkeypatch)
    cfg = TrainConfig.from_preset(
        f"{name}-resnet18", data_root=str(tmp_path), batch_size=4, val_fraction=0.1
    )
    data = load_data(cfg)
    n_train_files = 5 if name == "cifar10" else 1
    assert data.x_train.shape[1:] == (3, 32, 32)
    assert len(data.y_train) + len(data.y_val) == 8 * n_train_files
    assert len(data.y_val) == round(0.1 * 8 * n_train_files)
    assert len(data.y_test) == 8
    # pixel (0, 0) of sample 0, red channel, normalised with the dataset's statistics
    with (folder / ("test_batch" if name == "cifar10" else "test")).open("rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    mean = 0.4914 if name == "cifar10" else 0.5071
    std = 0.2470 if name == "cifar10" else 0.2673
    assert float(data.x_test[0, 0, 0, 0]) == pytest.approx((raw[0, 0] / 255 - mean) / std, rel=1e-5)


def test_missing_cifar_is_a_clear_error(tmp_path):
    cfg = TrainConfig.from_preset("cifar10-resnet18", data_root=str(tmp_path))
    with pytest.raises(ConfigError, match=r"data_root=.*cifar10 file .* is missing"):
        load_data(cfg)


def test_mnist1d_digits_and_synthetic():
    m = load_data(TrainConfig.from_preset("mnist1d-fast"))
    assert m.x_train.shape[1:] == (1, 40) and len(m.y_train) + len(m.y_val) == 4000
    assert len(m.y_test) == 1000 and m.n_classes == 10 and len(m.y_val) == 400  # 10%
    d = load_data(TrainConfig.from_preset("digits"))
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.y_test) == 359
    s = load_data(
        TrainConfig.from_preset(
            "tiny",
            dataset="synthetic",
            model="resnet20",
            synthetic_shape="3x8x8",
            n_train=64,
            batch_size=8,
        )
    )
    assert s.x_train.shape == (58, 3, 8, 8) and len(s.y_val) == 6  # 10% held out


def test_validation_split_is_fixed_and_disjoint():
    a = load_data(TrainConfig.from_preset("digits", seed=0))
    b = load_data(TrainConfig.from_preset("digits", seed=5, n_train=200))
    assert torch.equal(a.x_val, b.x_val)  # the same samples judge every seed and every n_train
    assert len(a.y_val) == round(0.1 * 1438)
    train_rows = {tuple(r) for r in a.x_train.flatten(1).tolist()}
    test_rows = {tuple(r) for r in a.x_test.flatten(1).tolist()}
    val_rows = [tuple(r) for r in a.x_val.flatten(1).tolist()]
    assert not any(r in train_rows for r in val_rows)  # held out of the training set
    assert len(a.y_train) + len(a.y_val) == 1438 and len(a.y_test) == 359
    assert sum(r in test_rows for r in val_rows) < 5  # only exact duplicate images can repeat


def test_cifar_presets_hold_out_two_percent():
    for name in ("cifar10-resnet18", "cifar100-resnet18", "cifar10-short"):
        assert TrainConfig.from_preset(name).val_fraction == 0.02


def test_member_orders_differ_and_are_reproducible():
    cfg = TrainConfig.from_preset("tiny")
    o0, o1 = epoch_order(cfg, 100, 0, 0, "cpu"), epoch_order(cfg, 100, 1, 0, "cpu")
    assert not torch.equal(o0, o1)
    assert torch.equal(o0, epoch_order(cfg, 100, 0, 0, "cpu"))
    assert not torch.equal(o0, epoch_order(cfg, 100, 0, 1, "cpu"))
    assert sorted(o0.tolist()) == list(range(100))


def test_batches_cover_the_epoch_without_repeats():
    cfg = TrainConfig.from_preset("tiny")
    data = load_data(cfg)
    order = epoch_order(cfg, data.n_train, 0, 0, "cpu")
    n = steps_per_epoch(data.n_train, cfg.batch_size)
    seen = torch.cat([batch(data, order, i, cfg.batch_size)[1] for i in range(n)])
    assert len(seen) == n * cfg.batch_size
    assert torch.equal(seen, data.y_train[order[: n * cfg.batch_size]])


def test_augment_crops_and_flips():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=1)
    assert out.shape == x.shape
    for i in range(2):  # every output is a shifted (maybe flipped) window of the padded input
        padded = torch.nn.functional.pad(x[i, 0], (1, 1, 1, 1))
        windows = [padded[r : r + 4, c : c + 4] for r in range(3) for c in range(3)]
        windows += [w.flip(1) for w in windows]
        assert any(torch.equal(out[i, 0], w) for w in windows)
