"""The real dvc.yaml, driven by a tiny params.yaml, reproduced by real DVC in a temporary git repo.

The repo gets this checkout's dvc.yaml, .dvcignore, gpu/ pipeline and the code the stages run
(wash_sweeps/, analysis/); params.yaml is the real one with the tiny preset and a grid of two
methods x one seed. Slow (about a minute on 2 loaded cores): `pytest -m slow tests/test_dvc.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "train": {"preset": "tiny", "epochs": 2, "eval_every": 1, "n_members": 3, "threads": 1},
    "grid": {"seeds": [0], "baselines": ["independent"], "p": [0.01], "n_methods": [],
             "n_members": [], "schedules": [], "opt_state": []},
    "study": {"trials": 1},
}  # fmt: skip


def tiny_params() -> dict:
    """The real params.yaml with TINY's values; fails if a key of TINY is not in the real one."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        assert set(values) <= set(params[section]), f"params.yaml lacks {section} keys"
        params[section].update(values)
    return params


def sh(repo: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        # the stages call `python`: this interpreter, with the repo's own code first on sys.path
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("wash_sweeps", "analysis", "gpu", "sweeps"):
        shutil.copytree(ROOT / name, repo / name, ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copyfile(ROOT / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    (repo / ".gitignore").write_text("outputs/\n__pycache__/\n")
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "tiny pipeline")
    return repo


def lock_outs(repo: Path) -> dict[str, list[str]]:
    """Stage -> the paths of its outputs (outs, metrics and plots: dvc.lock lists all as outs)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {name: [o["path"] for o in stage.get("outs", [])] for name, stage in lock.items()}


@pytest.mark.slow
def test_dvc_repro_tiny_pipeline(repo: Path) -> None:
    stages = sh(repo, "dvc", "stage", "list", "--name-only").stdout.split()
    assert stages == [
        "train_baselines@independent-0",
        "train_wash@0.01-0",
        "study",
        "aggregate",
        "figures",
    ]  # ./dvc.yaml only: the GPU pipeline in gpu/dvc.yaml is not a default target

    first = sh(repo, "dvc", "repro").stdout
    assert first.count("Running stage") == len(stages)

    # every declared output exists (dvc.lock lists each stage's outs and metrics by path)
    outs = lock_outs(repo)
    assert sorted(outs) == sorted(stages)
    declared = [path for paths in outs.values() for path in paths]
    assert "outputs/runs/independent-N3-s0/summary.json" in declared  # a metrics file
    for path in declared:
        assert (repo / path).exists(), path
    for fig in ("fig1_accuracy_vs_p", "fig3_diversity", "fig4_barriers", "fig5_accuracy_vs_bytes"):
        assert (repo / "docs/results/figures" / f"{fig}.png").stat().st_size > 1000
    assert (repo / "docs/results/figures/fig7_wash-p_optimization_history.png").exists()
    assert "± " in (repo / "docs/results/report.md").read_text()

    # DVC reads every metrics file: both run summaries and the aggregated table
    metrics = json.loads(sh(repo, "dvc", "metrics", "show", "--json").stdout)
    files = next(iter(metrics.values()))["data"]
    run = files["outputs/runs/wash-p0.01-N3-s0/summary.json"]["data"]
    assert 0.0 <= run["val/acc_avg"] <= 1.0
    table = files["docs/results/tables/summary.json"]["data"]
    assert table["N3 independent"]["n"] == 1

    # nothing changed: a second repro runs no stage, and status is clean
    second = sh(repo, "dvc", "repro").stdout
    assert "Running stage" not in second
    assert second.count("didn't change, skipping") == len(stages)
    assert json.loads(sh(repo, "dvc", "status", "dvc.yaml", "--json").stdout) == {}


@pytest.mark.slow
def test_dvc_exp_run_with_a_changed_parameter(repo: Path) -> None:
    sh(repo, "dvc", "exp", "run", "-S", "train.epochs=1", "-n", "one-epoch")
    cfg = json.loads((repo / "outputs/runs/independent-N3-s0/config.json").read_text())
    assert cfg["config"]["epochs"] == 1
    exps = sh(repo, "dvc", "exp", "show", "--json").stdout
    assert "one-epoch" in exps


@pytest.mark.parametrize("path", ["params.yaml", "gpu/params.yaml"])
def test_params_are_config_values(path: str) -> None:
    """Every run the grids describe is a valid TrainConfig (a typo fails here, not mid-repro)."""
    from wash_sweeps.config import TrainConfig

    params = yaml.safe_load((ROOT / path).read_text())
    train, grid = dict(params["train"]), params["grid"]
    presets = [train.pop("preset")] if "preset" in train else grid["presets"]
    for preset in presets:
        base = TrainConfig.from_preset(preset, **train)
        for method in grid["baselines"]:
            assert base.replace(method=method).method == method
        for p in grid["p"]:
            assert base.replace(method="wash", p=p).p == p
        for method in grid.get("n_methods", []):
            for n in grid["n_members"]:
                base.replace(method=method, n_members=n)
        for schedule in grid.get("schedules", []):
            for opt in grid["opt_state"]:
                base.replace(method="wash", layer_schedule=schedule, shuffle_optimizer_state=opt)
