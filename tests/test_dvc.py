"""The real pipeline, reproduced by real DVC in a `git clone` of this repository (the user's
path: the clone's own .gitignore, .dvcignore, dvc.yaml and params.yaml, not rebuilt copies).

Only sweeps/showcase.yaml's values are shrunk (tiny schedules, two trials per method). Slow
(a few minutes on 2 loaded cores): `pytest -m slow tests/test_dvc.py`. The clone holds what is
committed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from wash_sweeps.cli import main
from wash_sweeps.grid import GENERATED

ROOT = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        # the stages call `python`: this interpreter, with the clone's own code first on sys.path
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }


def sh(repo: Path, *cmd: str) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=repo, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("clone") / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, env=env())
    return repo


TINY_SHOWCASE = {
    "metric": "val/acc_avg",
    "n_members": 2,
    "tuning_seed": 100,
    "seeds": [0, 1],
    "workers": 1,
    "jobs": 2,
    "methods": {
        "independent": {},
        "wash": {"p": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.1}},
        "papa": {"papa_rate": {"values": [0.05, 0.2]}},
    },
    "tasks": {  # the task names of dvc.yaml's `foreach`, on tiny schedules
        "mnist1d": {
            "preset": "tiny",
            "trials": 2,
            "set": {"epochs": 1, "n_train": 256},
            "fronts": {"wash": {"p": [0.003]}},
            "map": {"p": [0.003], "n_members": [3]},
        },
        "digits": {
            "preset": "digits",
            "trials": 2,
            "set": {"epochs": 1, "eval_every": 1, "barrier_every": 0, "barrier_samples": 200},
            "fronts": {"papa": {"papa_every": [5]}},
            "map": {"p": [0.003]},
        },
    },
}


def shrink(repo: Path) -> None:
    """The clone's sweeps/showcase.yaml with tiny values (its keys must exist: a renamed key
    fails)."""
    spec = yaml.safe_load((repo / "sweeps/showcase.yaml").read_text())
    assert set(TINY_SHOWCASE) <= set(spec) and set(spec["tasks"]) == set(TINY_SHOWCASE["tasks"])
    (repo / "sweeps/showcase.yaml").write_text(yaml.safe_dump(TINY_SHOWCASE))


STAGES = ["tune@mnist1d", "tune@digits", "plan", "train", "report"]


@pytest.mark.slow
def test_dvc_reads_the_pipeline_in_a_fresh_clone(clone: Path) -> None:
    # the commands the README gives, before anything ran: none may refuse the checkout
    # (a git-ignored dvc.lock made every one of them fail)
    assert "dvc.lock" not in (clone / ".gitignore").read_text()
    sh(clone, "dvc", "status")
    dag = sh(clone, "dvc", "dag", "dvc.yaml").stdout
    assert all(stage in dag for stage in STAGES)
    # before a first run DVC's plain `--dry` cannot hash the missing outputs that later stages
    # depend on (DVC issue 9021); `--force` lists every command without hashing them
    dry = sh(clone, "dvc", "repro", "--dry", "--force", "dvc.yaml").stdout
    assert "python -m wash_sweeps showcase tune sweeps/showcase.yaml --task digits" in dry
    assert dry.count("Running stage") == len(STAGES)


def test_dvc_tunes_every_task_of_the_showcase_file() -> None:
    """dvc.yaml's `foreach` lists exactly the tasks of sweeps/showcase.yaml, and `plan`
    depends on each task's tuning directory (a task added to one and not the other fails)."""
    tasks = set(yaml.safe_load((ROOT / "sweeps/showcase.yaml").read_text())["tasks"])
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages["tune"]["foreach"]) == tasks
    assert {f"outputs/showcase/{t}/tuning" for t in tasks} <= set(stages["plan"]["deps"])


@pytest.mark.slow
def test_dvc_repro_and_exp_run_in_a_clone(clone: Path) -> None:
    shrink(clone)
    stages = sh(clone, "dvc", "stage", "list", "--name-only", "dvc.yaml").stdout.split()
    assert stages == STAGES  # not gpu/dvc.yaml's
    first = sh(clone, "dvc", "repro", "dvc.yaml").stdout
    assert first.count("Running stage") == len(stages)
    roles = json.loads((clone / "outputs/showcase/roles.json").read_text())
    assert roles and all(
        (clone / "outputs/showcase/runs" / name / "summary.json").exists() for name in roles
    )
    for task in ("mnist1d", "digits"):  # every figure of every task, and the report names it
        for fig in ("methods", "front", "failure_map"):
            assert (clone / f"docs/results/figures/{task}_{fig}.png").stat().st_size > 1000
    report = (clone / "docs/results/report.md").read_text()
    assert "## mnist1d" in report and "## digits" in report and "not finished" not in report
    headline = (clone / "docs/results/headline.md").read_text()
    assert "On mnist1d (n = 2 fresh seeds" in headline and "On digits (n = 2" in headline

    # the only metrics file is the small aggregated one: each task's methods, test accuracy
    metrics = json.loads(sh(clone, "dvc", "metrics", "show", "--json").stdout)
    files = next(iter(metrics.values()))["data"]
    assert list(files) == ["docs/results/summary.json"]
    table = files["docs/results/summary.json"]["data"]["test/acc_avg"]
    assert set(table) == {"mnist1d", "digits"} and 0 <= table["digits"]["wash"] <= 1

    assert "Running stage" not in sh(clone, "dvc", "repro", "--dry", "dvc.yaml").stdout
    # nothing changed: a second repro runs no stage, and status is clean
    second = sh(clone, "dvc", "repro", "dvc.yaml").stdout
    assert "Running stage" not in second
    assert json.loads(sh(clone, "dvc", "status", "dvc.yaml", "--json").stdout) == {}

    # an experiment with other fresh seeds: the tuning is kept, the report has the new seeds
    exp = sh(clone, "dvc", "exp", "run", "-S", "sweeps/showcase.yaml:seeds=[0,2]", "-n", "s02")
    assert "Running stage 'tune@" not in exp.stdout and "Running stage 'plan'" in exp.stdout
    runs = pd.read_csv(clone / "docs/results/tables/showcase_runs.csv")
    reported = runs[runs["roles"].str.contains("report")]
    assert set(reported["seed"]) == {0, 2}
    show = json.loads(sh(clone, "dvc", "exp", "show", "--json").stdout)
    assert "s02" in json.dumps(show)


def test_params_yaml_agrees_with_the_sweep_files(capsys: pytest.CaptureFixture) -> None:
    assert main(["dvc-params", "--check", "--params", str(ROOT / "params.yaml")]) == 0
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    from wash_sweeps.grid import grid_configs

    configs = grid_configs(params, Path("outputs/runs"))  # every listed run is a valid config
    assert len({c.run_dir().name for c in configs}) == len(configs) - 3  # 3 shared points


def test_dvc_params_rewrites_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copytree(ROOT / "sweeps", tmp_path / "sweeps")
    shutil.copyfile(ROOT / "params.yaml", tmp_path / "params.yaml")
    grid = tmp_path / "sweeps/method_grid.yaml"
    grid.write_text(grid.read_text().replace("seed: {values: [0, 1, 2]}", "seed: {values: [7]}"))
    args = ["dvc-params", "--params", str(tmp_path / "params.yaml")]
    assert main([*args, "--check"]) == 1
    assert "out of date" in capsys.readouterr().out
    assert main(args) == 0
    assert main([*args, "--check"]) == 0
    text = (tmp_path / "params.yaml").read_text()
    assert text.startswith("# Parameters of the exploratory grid") and GENERATED in text
    runs = yaml.safe_load(text)["runs"]
    assert {"method": "papa", "papa_rate": 0.1, "preset": "mnist1d-fast", "seed": 7} in runs


@pytest.mark.parametrize("path", ["gpu/params.yaml"])
def test_gpu_params_are_config_values(path: str) -> None:
    """Every run the GPU grid describes is a valid TrainConfig (a typo fails here)."""
    from wash_sweeps.config import TrainConfig

    params = yaml.safe_load((ROOT / path).read_text())
    train, grid = dict(params["train"]), params["grid"]
    for preset in grid["presets"]:
        base = TrainConfig.from_preset(preset, **train)
        for method in grid["baselines"]:
            assert base.replace(method=method).method == method
        for p in grid["p"]:
            assert base.replace(method="wash", p=p).p == p
