"""The real pipeline, reproduced by real DVC in a `git clone` of this repository (the user's
path: the clone's own .gitignore, .dvcignore, dvc.yaml and params.yaml, not rebuilt copies).

Only params.yaml's values are shrunk (the tiny preset, two runs, one study trial). Slow (about a
minute on 2 loaded cores): `pytest -m slow tests/test_dvc.py`. The clone holds what is committed.
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

from wash_sweeps.cli import main
from wash_sweeps.grid import GENERATED

ROOT = Path(__file__).resolve().parents[1]
TINY_RUNS = [{"method": "independent", "seed": 0}, {"method": "wash", "p": 0.01, "seed": 0}]


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


def shrink(repo: Path) -> None:
    """The clone's params.yaml with tiny values (its keys must exist: a renamed key fails)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert {"train", "jobs", "grids", "runs", "study"} <= set(params)
    params["train"] = {"preset": "tiny", "epochs": 2, "eval_every": 1, "progress": False}
    params["runs"] = TINY_RUNS
    params["study"] |= {"trials": 1, "workers": 1}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_dvc_reads_the_pipeline_in_a_fresh_clone(clone: Path) -> None:
    # the commands the README gives, before anything ran: none may refuse the checkout
    # (a git-ignored dvc.lock made every one of them fail)
    assert "dvc.lock" not in (clone / ".gitignore").read_text()
    sh(clone, "dvc", "status")
    dag = sh(clone, "dvc", "dag", "dvc.yaml").stdout
    assert all(stage in dag for stage in ("train_grid", "study", "aggregate", "figures"))
    # before a first run DVC's plain `--dry` cannot hash the missing outputs that later stages
    # depend on (DVC issue 9021); `--force` lists every command without hashing them
    dry = sh(clone, "dvc", "repro", "--dry", "--force").stdout
    assert "python -m wash_sweeps grid params.yaml" in dry
    assert dry.count("Running stage") == 4


@pytest.mark.slow
def test_dvc_repro_and_exp_run_in_a_clone(clone: Path) -> None:
    shrink(clone)
    stages = sh(clone, "dvc", "stage", "list", "--name-only").stdout.split()
    assert stages == ["train_grid", "study", "aggregate", "figures"]  # not gpu/dvc.yaml's
    first = sh(clone, "dvc", "repro").stdout
    assert first.count("Running stage") == len(stages)
    assert "[2/2]" in first  # one progress line per finished run
    listed = json.loads((clone / "outputs/runs/grid.json").read_text())["runs"]
    assert len(listed) == 2 and all(
        (clone / "outputs/runs" / r / "summary.json").exists() for r in listed
    )
    for fig in ("fig1_accuracy_vs_p", "fig3_diversity", "fig4_barriers", "fig5_accuracy_vs_bytes"):
        assert (clone / "docs/results/figures" / f"{fig}.png").stat().st_size > 1000
    assert (clone / "docs/results/figures/fig7_wash-p_optimization_history.png").exists()
    assert (clone / "docs/results/headline.md").exists()

    # the only metrics file is the small aggregated one (no per-run summaries: few columns)
    metrics = json.loads(sh(clone, "dvc", "metrics", "show", "--json").stdout)
    files = next(iter(metrics.values()))["data"]
    assert list(files) == ["docs/results/tables/summary.json"]
    table = files["docs/results/tables/summary.json"]["data"]
    assert table["N3 independent"]["n"] == 1 and 0 <= table["N3 independent"]["test/acc_avg"] <= 1

    # tabular plots: DVC reads x and y columns (so `dvc plots diff` overlays experiments)
    plots = json.loads(sh(clone, "dvc", "plots", "show", "--json").stdout)
    tabular = {"accuracy_over_epochs", "accuracy_vs_p", "accuracy_vs_bytes"}
    errors = {e["name"] for e in plots.get("errors", [])}
    assert tabular <= set(plots["data"]) and not errors & tabular
    assert errors <= {
        f"docs/results/figures/{f}.png" for f in ("fig2_accuracy_vs_n", "fig6_ablation")
    }
    epochs = plots["data"]["accuracy_over_epochs"][0]["content"]
    assert "wash" in json.dumps(epochs) and "epoch" in json.dumps(epochs)

    assert "Running stage" not in sh(clone, "dvc", "repro", "--dry").stdout
    # nothing changed: a second repro runs no stage, and status is clean
    second = sh(clone, "dvc", "repro").stdout
    assert "Running stage" not in second
    assert json.loads(sh(clone, "dvc", "status", "dvc.yaml", "--json").stdout) == {}

    # an experiment with another parameter: only the new grid is aggregated
    sh(clone, "dvc", "exp", "run", "-S", "train.epochs=1", "-n", "one-epoch")
    runs = json.loads((clone / "docs/results/tables/runs.json").read_text())
    assert len(runs) == 2 and {r["epochs"] for r in runs} == {1}
    show = json.loads(sh(clone, "dvc", "exp", "show", "--json").stdout)
    assert "one-epoch" in json.dumps(show)


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
    assert text.startswith("# Parameters of the CPU-scale reproduction") and GENERATED in text
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
