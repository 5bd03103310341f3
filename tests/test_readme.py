"""The README's first-look commands, as a newcomer runs them in a `git clone` of this repository
(the clone's own README, code and sweep files: what is committed, not this working tree).

The commands are read from the README itself, so the two cannot drift apart. `wash-sweeps X`
runs as `python -m wash_sweeps X` in the clone (this interpreter, the clone's code first on
sys.path). Slow (a few minutes on 2 loaded cores): `pytest -m slow tests/test_readme.py`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_LOOK = "A first look in a few minutes"


def first_look(readme: str) -> list[str]:
    """The command lines of the README's first-look block (comments dropped)."""
    start = readme.index(FIRST_LOOK)
    block = readme[start:].split("\n\n", 2)[1]  # the indented block after that sentence
    lines = [ln.strip() for ln in block.splitlines()]
    return [re.sub(r"\s+# .*$", "", ln) for ln in lines if ln and not ln.startswith("#")]


def run(clone: Path, line: str, env: dict[str, str]) -> str:
    argv = shlex.split(line)
    assert argv[0] == "wash-sweeps", line
    out = subprocess.run(
        [sys.executable, "-m", "wash_sweeps", *argv[1:]],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, f"{line}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("readme") / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    return repo


@pytest.mark.slow
def test_the_readme_first_look_works_in_a_fresh_clone(clone: Path, tmp_path: Path) -> None:
    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from wash_sweeps import load_averaged
    from wash_sweeps.results import read_json

    lines = first_look((clone / "README.md").read_text())
    commands = [ln for ln in lines if ln.startswith("wash-sweeps ")]
    assert [c.split()[1] for c in commands] == ["--version", "train", "study", "figures"]
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),  # nothing of the newcomer's own configuration
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "WANDB_SILENT": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    outputs = {c.split()[1]: run(clone, c, env) for c in commands}

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert outputs["--version"].startswith("wash-sweeps ") and head[:10] in outputs["--version"]
    assert "best trial" in outputs["study"]
    assert (clone / "runs/figures/figures/fig5_accuracy_vs_bytes.png").stat().st_size > 1000

    # the store `mlflow ui` is pointed at holds everything: the plain run beside the study's
    # parent run and its nested trials, in one experiment; no other store was made
    [ui] = [ln for ln in lines if " mlflow ui " in f" {ln} "]
    assert "--backend-store-uri sqlite:///runs/mlflow.db" in ui
    assert sorted((clone / "runs").rglob("mlflow.db")) == [clone / "runs/mlflow.db"]
    client = MlflowClient(f"sqlite:///{clone / 'runs/mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.experiment_id for r in runs} == {
        client.get_experiment_by_name("wash-sweeps").experiment_id
    }
    [parent] = [r for r in runs if r.data.tags.get("study") == "wash-p"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    nested = {r.info.run_id for r in trials}
    plain = [
        r for r in runs if r.data.tags.get("job_type") == "train" and r.info.run_id not in nested
    ]
    assert len(trials) == 2 and len(plain) == 1 and len(runs) == 4
    assert parent.data.params["best/layer_schedule"] in ("uniform", "linear")
    assert all(r.info.status == "FINISHED" for r in runs)

    # the tiny run's model, loaded the way the README says, is its averaged model
    [run_dir] = [p.parent for p in (clone / "runs").glob("*/trackers.json")]
    run_id = read_json(run_dir / "trackers.json")["mlflow"]["run_id"]
    assert run_id == plain[0].info.run_id
    with _use_tracking_uri(f"sqlite:///{clone / 'runs/mlflow.db'}"):
        model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    x = torch.randn(4, *read_json(run_dir / "config.json")["derived"]["in_shape"])
    assert torch.allclose(model(x), load_averaged(run_dir)(x), atol=1e-5)


HEADLINE = re.compile(
    r"<!-- headline: docs/results/headline.md -->\n(.*?)\n<!-- /headline -->", re.S
)


def test_the_readme_headline_and_figure_are_the_reports() -> None:
    """The README quotes docs/results/headline.md (written by the report stage from the runs)
    word for word, and its first figure is one the report stage drew."""
    readme = (ROOT / "README.md").read_text()
    quoted = HEADLINE.search(readme)
    assert quoted, "README: no headline block quoting docs/results/headline.md"
    headline = (ROOT / "docs/results/headline.md").read_text()
    assert " ".join(quoted.group(1).split()) == " ".join(headline.split())
    first_image = re.search(r'<img src="([^"]+)"', readme)
    assert first_image and first_image.group(1).startswith("docs/results/figures/")
    assert (ROOT / first_image.group(1)).is_file()
    assert readme.index("<img") < readme.index("make demo") < readme.index("make test")
