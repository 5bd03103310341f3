"""`wash-sweeps wandb-sweep`, offline: the `sweeps` package proposes, hyperband stops a bad run,
the cap holds, a grid stops when exhausted, and every run is an offline W&B run read back here."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from wash_sweeps.cli import main
from wash_sweeps.results import read_json
from wash_sweeps.wandb_reader import find_runs, read_run

# lr 1e-5 cannot lower the training loss: hyperband stops it once two runs are ahead of it
HYPERBAND_GRID = """
name: hb
preset: tiny
method: grid
metric: {name: train/loss, goal: minimize}
early_terminate: {type: hyperband, min_iter: 1, eta: 2}
parameters:
  method: {value: independent}
  lr: {values: [0.1, 0.05, 0.00001]}
"""


def sweep_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "sweep_runs.jsonl").read_text().splitlines()]


TINY = ["--set", "n_train=256", "--set", "threads=1"]


@pytest.mark.slow
def test_grid_exhausts_exactly_and_hyperband_stops_the_bad_run(tmp_path):
    out = tmp_path / "sweep"
    args = ["wandb-sweep", str(sweep_file(tmp_path, HYPERBAND_GRID)), "--out", str(out)]
    assert main([*args, "--set", "epochs=3", *TINY]) == 0
    recs = records(out)
    assert [r["proposal"]["lr"] for r in recs] == [0.1, 0.05, 0.00001]  # each point once
    assert [r["state"] for r in recs] == ["finished", "finished", "stopped"]
    assert "hyperband stopped it at epoch" in recs[2]["note"]
    assert len(recs[2]["history"]) < 3 <= len(recs[0]["history"])
    assert main([*args, "--set", "epochs=3", *TINY]) == 0  # the same command: nothing left
    assert len(records(out)) == 3
    summary = read_json(out / "sweep_summary.json")
    assert summary["states"] == {"finished": 2, "stopped": 1}
    assert summary["best_run"]["proposal"]["lr"] in (0.1, 0.05)

    # each run is an offline W&B run in the sweep's group, readable without a server
    local = read_json(out / "runs" / "run-0" / "summary.json")
    (path,) = find_runs(out / "runs" / "run-0")
    wb = read_run(path)
    assert wb.config["group"] == "hb" and wb.config["lr"] == 0.1
    assert wb.last("val/acc_avg") == pytest.approx(local["val/acc_avg"])  # plain or {max, last}
    assert [h["train/epoch"] for h in wb.history if "train/epoch" in h] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "bayes"])
def test_random_and_bayes_respect_the_cap(tmp_path, method):
    sweep = sweep_file(
        tmp_path,
        f"""
        name: capped
        preset: tiny
        method: {method}
        metric: {{name: val/acc_avg, goal: maximize}}
        parameters:
          method: {{value: wash}}
          p: {{distribution: log_uniform_values, min: 0.001, max: 0.1}}
        """,
    )
    out = tmp_path / "sweep"
    args = ["wandb-sweep", str(sweep), "--out", str(out), "--set", "epochs=1", *TINY]
    assert main([*args, "--count", "2"]) == 0
    recs = records(out)
    assert len(recs) == 2 and all(r["state"] == "finished" for r in recs)
    assert all(0.001 <= r["proposal"]["p"] <= 0.1 for r in recs)
    assert len({r["proposal"]["p"] for r in recs}) == 2
    assert len(find_runs(out / "runs")) == 2


@pytest.mark.slow
def test_conditional_grid_skips_duplicate_configs(tmp_path):
    # W&B's grid crosses p with every method; for independent, p does not apply
    sweep = sweep_file(
        tmp_path,
        """
        name: cond
        preset: tiny
        method: grid
        metric: {name: val/acc_avg, goal: maximize}
        parameters:
          method: {values: [independent, wash]}
          p: {values: [0.01, 0.02]}
        conditions:
          p: {method: wash}
        """,
    )
    out = tmp_path / "sweep"
    assert main(["wandb-sweep", str(sweep), "--out", str(out), "--set", "epochs=1", *TINY]) == 0
    recs = records(out)
    assert len(recs) == 4
    trained = [r for r in recs if r["state"] == "finished"]
    assert len(trained) == 3 and [r["state"] for r in recs].count("duplicate") == 1
    configs = {
        (c["method"], c["p"])
        for c in (read_json(Path(r["run_dir"]) / "config.json")["config"] for r in trained)
    }
    assert len(configs) == 3


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    sweep = sweep_file(tmp_path, HYPERBAND_GRID.replace("method: grid", "method: random"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert main(["wandb-sweep", str(sweep), "--online", "--count", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs WANDB_API_KEY" in err and "offline" in err and "\n" not in err
    assert main(["wandb-sweep", str(sweep), "--out", str(tmp_path / "o")]) == 2
    assert "needs --count K" in capsys.readouterr().err
    for command in ("wandb-sweep", "study"):  # one flag definition, checked by both commands
        with pytest.raises(SystemExit) as exit_:
            main([command, str(sweep), "--nproc-per-trial", "0"])
        assert exit_.value.code == 2
        assert "--nproc-per-trial: 0: must be >= 1" in capsys.readouterr().err
    on_test = sweep_file(
        tmp_path,
        HYPERBAND_GRID.replace("{name: train/loss, goal: minimize}", "{name: test/loss_avg}"),
    )
    out = tmp_path / "t"
    assert main(["wandb-sweep", str(on_test), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "tuning on the test split is not allowed" in err and "\n" not in err
    assert not out.exists()


@pytest.mark.slow
def test_agent_run_trains_what_the_agent_proposes(tmp_path, monkeypatch):
    # what `wandb agent` runs on each machine: the sweep's command with key=value arguments
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    sweep = sweep_file(tmp_path, HYPERBAND_GRID)
    out = tmp_path / "agent"
    argv = ["wandb-sweep", "--agent-run", "--set=epochs=1", "--set=n_train=256", "--out", str(out)]
    assert main([*argv, str(sweep), "preset=tiny", "method=independent", "lr=0.05"]) == 0
    cfg = read_json(out / "runs" / "abc123" / "config.json")["config"]
    assert (cfg["lr"], cfg["epochs"], cfg["group"], cfg["track"]) == (0.05, 1, "hb", "wandb")
    assert len(find_runs(out / "runs" / "abc123")) == 1
    assert main([*argv, str(sweep), "colour=red"]) == 2  # not a parameter of the sweep


@pytest.mark.slow
def test_runs_under_torchrun_are_followed_and_stopped(tmp_path):
    """`--nproc-per-trial 2`: each run is a torchrun job; hyperband still sees every epoch and
    stops the bad run's job."""
    out = tmp_path / "sweep"
    args = ["wandb-sweep", str(sweep_file(tmp_path, HYPERBAND_GRID)), "--out", str(out)]
    fixed = ["--set", "epochs=3", "--set", "dataset=synthetic", "--set", "n_members=2", *TINY]
    assert main([*args, "--nproc-per-trial", "2", *fixed]) == 0
    recs = records(out)
    assert [r["state"] for r in recs] == ["finished", "finished", "stopped"]
    assert [len(r["history"]) for r in recs[:2]] == [3, 3] and len(recs[2]["history"]) < 3
    for r in recs[:2]:
        summary = read_json(Path(r["run_dir"]) / "summary.json")
        assert summary["dist/world_size"] == 2
        assert r["summary"]["train/loss"] == pytest.approx(summary["train/loss"])
    assert (Path(recs[2]["run_dir"]) / "torchrun.log").exists()


@pytest.mark.slow
def test_tracked_sweep_runs_share_the_mlflow_store_of_the_output_root(tmp_path, monkeypatch):
    """`--track mlflow`: the sweep's runs go to `<out_dir>/mlflow.db`, the store of the root's
    plain runs, not to one of the sweep directory's own; the default --out is under out_dir."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "runs"
    sweep = sweep_file(
        tmp_path,
        """
        name: two
        preset: tiny
        method: grid
        metric: {name: val/acc_avg, goal: maximize}
        parameters:
          method: {values: [independent, papa]}
        """,
    )
    flags = ["--set", "track=mlflow", "--set", f"out_dir={root}", "--set", "epochs=1", *TINY]
    assert main(["wandb-sweep", str(sweep), *flags]) == 0
    assert len(records(root / "wandb-sweeps" / "two")) == 2
    assert sorted(root.glob("**/mlflow.db")) == [root / "mlflow.db"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.run_name for r in runs) == ["run-0", "run-1"]
    assert {r.data.tags["group"] for r in runs} == {"two"}
