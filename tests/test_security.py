"""Nothing the tool reads runs code: planted checkpoints (a run directory, a study's trial
directory) and planted CIFAR batch files are refused in one line, and their code never runs."""

from __future__ import annotations

import os
import pickle
import pickletools
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from wash_sweeps.cli import main
from wash_sweeps.config import ConfigError, TrainConfig
from wash_sweeps.data import file_md5, load_data
from wash_sweeps.results import RunDir


class _Payload:
    """Unpickling this runs `touch <marker>` (what an attacker's file would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_checkpoint(run_dir: Path, marker: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"config": {}, "population": _Payload(marker), "state": {}}, run_dir / "checkpoint.pt"
    )


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_the_payload_would_run_code_when_unpickled(tmp_path):
    """The test's own check, read without unpickling: the planted file's pickle stream calls
    os.system with the marker command (so refusing it is what keeps the code from running)."""
    plant_checkpoint(tmp_path / "run", tmp_path / "ran")
    with zipfile.ZipFile(tmp_path / "run" / "checkpoint.pt") as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(archive.read(name))]
    strings = [arg for _, arg in ops if isinstance(arg, str)]
    assert ("GLOBAL", f"{os.system.__module__} system") in ops  # os.system, as the file names it
    assert f"touch {tmp_path / 'ran'}" in strings and ("REDUCE", None) in ops
    assert not (tmp_path / "ran").exists()


def test_a_checkpoint_of_a_real_run_loads_with_weights_only(tmp_path, tiny_cfg):
    from wash_sweeps.train import train_and_evaluate

    cfg = tiny_cfg(method="wash", epochs=1)
    summary = train_and_evaluate(cfg, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["config"] == cfg.to_dict()
    assert summary["train/epoch"] == 1


def test_resume_refuses_a_planted_checkpoint(tmp_path, tiny_cfg, capsys):
    run_dir, marker = tmp_path / "run", tmp_path / "ran"
    RunDir(run_dir).write_config(tiny_cfg().to_dict(), {})
    plant_checkpoint(run_dir, marker)
    assert main(["train", "--resume", str(run_dir)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "checkpoint.pt" in line and "not a checkpoint of this tool" in line
    assert not marker.exists()


def test_a_corrupt_checkpoint_is_one_line(tmp_path, tiny_cfg, capsys):
    run_dir = tmp_path / "run"
    RunDir(run_dir).write_config(tiny_cfg().to_dict(), {})
    (run_dir / "checkpoint.pt").write_bytes(b"\x00garbage" * 10)
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "checkpoint.pt" in one_error_line(capsys.readouterr().err)


STUDY = """
name: planted
preset: tiny
method: grid
metric: {name: train/loss, goal: minimize}
parameters:
  method: {value: independent}
  lr: {values: [0.05]}
"""


def test_a_study_refuses_a_planted_trial_checkpoint(tmp_path, capsys):
    import optuna

    from wash_sweeps.study import JOURNAL_NAME, open_storage

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(textwrap.dedent(STUDY))
    out, marker = tmp_path / "study", tmp_path / "ran"
    plant_checkpoint(out / "trials" / "trial-0", marker)
    assert main(["study", str(sweep), "--out", str(out), "--set", "epochs=1"]) == 0
    assert not marker.exists()
    study = optuna.load_study(study_name="planted", storage=open_storage(str(out / JOURNAL_NAME)))
    (trial,) = study.get_trials()
    assert trial.state.name == "FAIL"
    assert "not a checkpoint of this tool" in trial.user_attrs["fail_reason"]


# --- CIFAR batch files ---------------------------------------------------------------------------


def _cifar10_files(root: Path, payload: object | None = None) -> list[list[str]]:
    """A tiny CIFAR-10 in torchvision's format; returns its [name, md5] list (what a test gives
    in place of torchvision's checksums). `payload` replaces the first file's contents."""
    from torchvision import datasets

    folder = root / datasets.CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f for f, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list]
    listed = []
    for i, fname in enumerate(names):
        entry = {b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8), b"labels": [1] * 8}
        with (folder / fname).open("wb") as f:
            pickle.dump(payload if (payload is not None and i == 0) else entry, f)
        listed.append([fname, file_md5(folder / fname)])
    return listed


def _use_checksums(monkeypatch, listed: list[list[str]]) -> None:
    from torchvision import datasets

    monkeypatch.setattr(datasets.CIFAR10, "train_list", listed[:-1])
    monkeypatch.setattr(datasets.CIFAR10, "test_list", listed[-1:])


def _cifar_cfg(root: Path) -> TrainConfig:
    return TrainConfig.from_preset("cifar10-resnet18", data_root=str(root), batch_size=4)


def test_cifar_files_are_checked_against_torchvisions_md5s(tmp_path):
    _cifar10_files(tmp_path)  # our files, torchvision's real checksums
    with pytest.raises(ConfigError, match=r"data_batch_1 does not match torchvision's MD5"):
        load_data(_cifar_cfg(tmp_path))


def test_cifar_files_load_when_their_md5s_are_listed(tmp_path, monkeypatch):
    _use_checksums(monkeypatch, _cifar10_files(tmp_path))
    data = load_data(_cifar_cfg(tmp_path))
    assert data.x_test.shape == (8, 3, 32, 32)


def test_a_planted_cifar_file_runs_no_code(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    listed = _cifar10_files(tmp_path, payload=_Payload(marker))
    with pytest.raises(ConfigError, match="does not match torchvision's MD5"):
        load_data(_cifar_cfg(tmp_path))  # the checksum refuses it first
    _use_checksums(monkeypatch, listed)  # even with its checksum listed, no code runs
    with pytest.raises(ConfigError, match="not a CIFAR batch file"):
        load_data(_cifar_cfg(tmp_path))
    assert not marker.exists()


def test_cifar_checksum_error_from_the_cli_is_one_line(tmp_path, capsys):
    _cifar10_files(tmp_path)
    args = ["train", "--preset", "cifar10-resnet18", "--set", f"data_root={tmp_path}"]
    assert main([*args, "--workdir", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "data_batch_1" in line and "MD5" in line
