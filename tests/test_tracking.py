"""Trackers against the real W&B (offline) and MLflow (SQLite, a real `mlflow server`), read back.

.venv/bin/pytest tests/test_tracking.py            # about a minute; -m "not slow" skips runs
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from unittest.mock import ANY

import pytest

from wash_sweeps import TrainConfig, train_and_evaluate
from wash_sweeps.results import iter_jsonl, read_json
from wash_sweeps.tracking import (
    Guarded,
    MlflowTracker,
    make_tracker,
    mlflow_key,
    start_study_run,
)

_ENV = (
    "WANDB_DIR",
    "WANDB_CACHE_DIR",
    "WANDB_CONFIG_DIR",
    "WANDB_DATA_DIR",
    "WANDB_API_KEY",
    "WANDB_MODE",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and working directory inside tmp_path; tracker env vars restored after."""
    home = tmp_path / "home"
    cwd = tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    # mnist1d imports matplotlib, whose font cache would land in HOME: not a tracker's file
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for key in _ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(cwd)
    return home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(run_dir: Path) -> list[dict]:
    return list(iter_jsonl(run_dir / "metrics.jsonl"))


def _ours(metrics: dict) -> dict:
    """The metrics this package logs (MLflow adds its system/ metrics every 10 s)."""
    return {k: v for k, v in metrics.items() if not k.startswith("system/")}


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _check_mlflow_run(
    client, run_id: str, run_dir: Path, cfg: TrainConfig, resumed: bool = False
) -> None:
    """Every metric at every step of metrics.jsonl, once; params = config; provenance tags.

    `resumed`: the timings of an epoch redone after a resume differ from its first logging."""
    records = _records(run_dir)
    keys = {k for r in records for k in r["metrics"]}
    for key in keys:
        history = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        expected = {r["step"]: float(r["metrics"][key]) for r in records if key in r["metrics"]}
        assert sorted(history) == sorted(expected), key
        if not (resumed and key.startswith("time/")):
            assert all(_close(history[s], v) for s, v in expected.items()), key
        assert len(client.get_metric_history(run_id, key)) == len(expected), key
    run = client.get_run(run_id)
    for k, v in cfg.to_dict().items():
        assert run.data.params[k] == (v if isinstance(v, str) else json.dumps(v)), k
    derived = read_json(run_dir / "config.json")["derived"]
    for k, v in derived.items():
        assert run.data.params[f"derived/{k}"] == json.dumps(v), k
    summary = read_json(run_dir / "summary.json")
    assert _close(run.data.metrics["val/acc_avg"], summary["val/acc_avg"])
    tags = run.data.tags
    assert tags["prov/git_commit"] == str(summary["provenance"]["git_commit"])
    assert tags["prov/device"] == summary["provenance"]["device"]
    assert tags["prov/version/torch"] == summary["provenance"]["versions"]["torch"]
    assert json.loads(tags["prov/seeds_init"]) == summary["provenance"]["seeds"]["init"]
    # MLflow's own source tags: the UI's "Source" and "Git commit"
    assert tags["mlflow.source.git.commit"] == str(summary["provenance"]["git_commit"])
    assert tags["mlflow.source.git.dirty"] == str(summary["provenance"]["git_dirty"]).lower()
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert run.info.status == "FINISHED"
    files = {f.path for d in ("results", "curves") for f in client.list_artifacts(run_id, d)}
    results = {"config.json", "metrics.jsonl", "summary.json", "averaged.pt"}
    assert {f"results/{f}" for f in results} <= files
    curve_steps = [r["step"] for r in records if r["curves"]]
    assert {f"curves/step_{s:06d}.json" for s in curve_steps} <= files
    _check_mlflow_model(client, run_id, run_dir)


def _check_mlflow_model(client, run_id: str, run_dir: Path) -> None:
    """`mlflow.pytorch.load_model("runs:/<id>/model")` is the run's averaged model (same
    outputs as load_averaged), with a signature and an input example."""
    import mlflow.pytorch
    import torch
    from mlflow.models import get_model_info
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from wash_sweeps import load_averaged

    with _use_tracking_uri(client.tracking_uri):
        loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
        info = get_model_info(f"runs:/{run_id}/model")
    assert info.signature is not None and info.saved_input_example_info is not None
    ours = load_averaged(run_dir)
    shape = read_json(run_dir / "config.json")["derived"]["in_shape"]
    x = torch.randn(5, *shape)
    assert torch.allclose(loaded(x), ours(x), atol=1e-5)


@pytest.mark.slow
def test_wandb_and_mlflow_read_back(home, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from wash_sweeps.wandb_reader import find_runs, read_run

    out = tmp_path / "runs"
    cfg = TrainConfig.from_preset(
        "tiny", track="wandb,mlflow", out_dir=str(out), group="g1", tags="smoke,t2"
    )
    # an interval far longer than the run: MLflow alone would log no system metrics at all;
    # the samples of the last, partial interval are logged when the run ends
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "3600")
    monkeypatch.setenv("WANDB_X_STATS_SAMPLING_INTERVAL", "1")
    summary = train_and_evaluate(cfg)
    run_dir = Path(summary["run_dir"])
    records = _records(run_dir)
    assert len(records) == cfg.epochs

    # MLflow: the default store is SQLite in out_dir, artifacts beside it
    uri = f"sqlite:///{out / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runs = mlflow.search_runs(experiment_names=[cfg.project])
    assert len(runs) == 1
    assert runs.loc[0, "params.method"] == cfg.method
    assert runs.loc[0, "tags.group"] == "g1"
    client = MlflowClient(uri)
    _check_mlflow_run(client, runs.loc[0, "run_id"], run_dir, cfg)
    assert (out / "mlartifacts").is_dir()
    system = client.get_run(runs.loc[0, "run_id"]).data.metrics
    assert system["system/cpu_utilization_percentage"] >= 0
    assert system["system/system_memory_usage_megabytes"] > 0
    cpu = client.get_metric_history(runs.loc[0, "run_id"], "system/cpu_utilization_percentage")
    assert [m.step for m in cpu] == [0]  # one sample: the partial interval, logged once

    # W&B: the offline run, read back from its .wandb log
    [wb_path] = find_runs(run_dir / "wandb")
    wb = read_run(wb_path)
    assert (wb.project, wb.group, wb.job_type, wb.exit_code) == (cfg.project, "g1", "train", 0)
    assert sorted(wb.tags) == ["smoke", "t2"]
    assert [h["_step"] for h in wb.history] == [r["step"] for r in records]
    for row, rec in zip(wb.history, records, strict=True):
        for k, v in rec["metrics"].items():
            assert _close(float(row[k]), float(v)), k
        assert row["curves/barrier"]["nrows"] == sum(len(c) for c in rec["curves"].values())
    for k, v in cfg.to_dict().items():
        assert wb.config[k] == v, k
    assert wb.config["provenance/git_commit"] == str(summary["provenance"]["git_commit"])
    # define_metric keeps the best and the last value ({"max", "last"}); W&B's backend writes
    # the plain last value instead when the run ends before it has folded the history in
    best_last = wb.summary["val/acc_avg"]
    assert _close(wb.last("val/acc_avg"), summary["val/acc_avg"]), best_last
    if isinstance(best_last, dict):
        assert best_last["max"] >= best_last["last"] - 1e-9, best_last
    assert wb.summary["provenance"]["seeds"] == summary["provenance"]["seeds"]
    # the members table holds each member's final accuracy
    members = json.loads((wb_path / "files" / wb.summary["tables/members"]["path"]).read_text())
    assert members["columns"] == ["member", "test_acc", "val_acc"]
    for split, column in (("test", 1), ("val", 2)):
        assert [row[column] for row in members["data"]] == [
            summary[f"member/{i}/{split}_acc"] for i in range(cfg.n_members)
        ]
    # one model artifact per run (never a name shared by every run), a loadable run directory
    model = {"name": f"averaged-model-{wb.run_id}", "type": "model"}
    assert model | {"files": ["averaged.pt", "config.json"]} in wb.artifacts
    assert [a for a in wb.artifacts if a["type"] == "model"] == [model | {"files": ANY}]
    # the step axis and the summaries are declared: best and last of the val/ accuracies
    defs = {d.get("name") or d.get("glob_name"): d for d in wb.metric_defs}
    assert defs["*"]["step_metric"] == "train/step" and "train/step" in defs
    assert defs["val/acc*"]["summary"] == {"max": True, "last": True}
    assert defs["val/loss*"]["summary"] == {"min": True, "last": True}
    # system stats are on: W&B samples them in groups (cpu, memory, disk, process), any may come
    sampled = {k for sample in wb.stats for k in sample}
    assert any(k.startswith(("cpu", "proc.cpu", "memory", "proc.memory")) for k in sampled)
    assert read_json(run_dir / "trackers.json")["wandb"]["path"] == f"{cfg.project}/{wb.run_id}"

    # nothing outside tmp_path: the home and working directories stay empty
    assert list(home.rglob("*")) == []
    assert list((tmp_path / "cwd").rglob("*")) == []


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resumed_run_continues_its_tracker_runs(home, tmp_path, monkeypatch):
    """Stopped after epoch 3 with the last checkpoint at epoch 2, then resumed: MLflow holds
    one run with every step once (epoch 3, logged twice by the trainer, is not duplicated);
    W&B offline cannot resume, so the second part is a new run pointing at the first."""
    from mlflow.tracking import MlflowClient

    from wash_sweeps.wandb_reader import find_runs, read_run

    out = tmp_path / "runs"
    cfg = TrainConfig.from_preset(
        "tiny", track="wandb,mlflow", out_dir=str(out), epochs=4, eval_every=1, checkpoint_every=2
    )
    run_dir = out / "r"

    def stop(epoch: int, metrics: dict) -> None:
        if epoch == 3:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_and_evaluate(cfg, run_dir, on_epoch=stop)
    first = read_json(run_dir / "trackers.json")
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    assert client.get_run(first["mlflow"]["run_id"]).info.status == "KILLED"
    steps = [m.step for m in client.get_metric_history(first["mlflow"]["run_id"], "val/acc_avg")]
    assert len(steps) == 3  # epochs 1-3 logged; the checkpoint holds epoch 2

    summary = train_and_evaluate(cfg, run_dir, resume=True)
    second = read_json(run_dir / "trackers.json")
    assert second["mlflow"] == first["mlflow"]
    [run] = client.search_runs([client.get_experiment_by_name(cfg.project).experiment_id])
    assert run.info.run_id == first["mlflow"]["run_id"]
    _check_mlflow_run(client, run.info.run_id, run_dir, cfg, resumed=True)  # each step once
    assert [r["epoch"] for r in _records(run_dir)] == [1, 2, 3, 4]
    assert summary["run_dir"] == str(run_dir)

    wb = {r.name.rsplit("-", 1)[-1]: read_run(r) for r in find_runs(run_dir / "wandb")}
    assert set(wb) == {first["wandb"]["id"], second["wandb"]["id"]} and len(wb) == 2
    resumed = wb[second["wandb"]["id"]]
    assert resumed.config["resumed_from"] == first["wandb"]["id"]
    assert [h["_step"] for h in resumed.history] == [r["step"] for r in _records(run_dir)[2:]]
    assert resumed.exit_code == 0

    # resuming a finished run redoes nothing and leaves its MLflow run finished
    assert train_and_evaluate(cfg, run_dir, resume=True) == read_json(run_dir / "summary.json")
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    # a refused resume (another config) is refused before any tracker run is reopened
    with pytest.raises(ValueError, match="fields: lr"):
        train_and_evaluate(cfg.replace(lr=0.5), run_dir, resume=True)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert read_json(run_dir / "trackers.json") == second
    assert list(home.rglob("*")) == []


def test_import_and_no_tracker_stay_light(tmp_path):
    code = (
        "import sys, wash_sweeps\n"
        "from wash_sweeps.tracking import Tracker, make_tracker\n"
        "from wash_sweeps import TrainConfig\n"
        "t = make_tracker(TrainConfig.from_preset('tiny'), sys.argv[1])\n"
        "assert type(t) is Tracker, t\n"
        "bad = [m for m in ('wandb', 'mlflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)


def test_unreachable_mlflow_server_does_not_stop_the_run(home, tmp_path, capsys):
    port = _free_port()  # bound then closed: nothing listens there
    cfg = TrainConfig.from_preset(
        "tiny",
        track="mlflow",
        mlflow_uri=f"http://127.0.0.1:{port}",
        out_dir=str(tmp_path),
        epochs=1,
    )
    start = time.perf_counter()
    summary = train_and_evaluate(cfg)
    assert time.perf_counter() - start < 60
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning: tracker mlflow" in line]
    assert len(warnings) == 1, err
    assert f"127.0.0.1:{port}" in warnings[0]
    run_dir = Path(summary["run_dir"])
    assert len(_records(run_dir)) == 1
    assert read_json(run_dir / "summary.json")["val/acc_avg"] == summary["val/acc_avg"]
    assert (run_dir / "averaged.pt").is_file()


def test_failing_tracker_warns_once_then_stops(home, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    cfg = TrainConfig.from_preset("tiny", track="mlflow", out_dir=str(tmp_path))
    inner = MlflowTracker(cfg, tmp_path / "run", "r")
    t = Guarded(inner, "RUN")
    t.log_params({"lr": 0.1, "bad@key": 1})
    t.log_metrics({"div/consensus/conv1": 2.0, "a:b c-d.e": 1.0}, step=3)
    t.log_params({"lr": 0.2})  # MLflow params are immutable: a real failure
    t.log_metrics({"val/acc_avg": 0.5}, step=4)  # dropped: the tracker is off
    t.log_params({"lr": 0.3})
    t.finish()
    warnings = [x for x in capsys.readouterr().err.splitlines() if "tracker mlflow failed" in x]
    assert len(warnings) == 1 and "log_params" in warnings[0] and "RUN" in warnings[0]
    run = MlflowClient(inner.uri).get_run(inner.run_id)
    assert run.data.params == {"lr": "0.1", "bad_key": "1"}
    assert _ours(run.data.metrics) == {"div/consensus/conv1": 2.0, "a:b c-d.e": 1.0}
    assert run.info.status == "RUNNING"  # finish was skipped too
    assert mlflow_key("member/3/val_acc") == "member/3/val_acc"
    assert mlflow_key("loss(a)@x") == "loss_a__x"


def test_study_run_nests_trials(home, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from wash_sweeps.wandb_reader import find_runs, read_run

    # online without a key falls back to offline, with one warning
    fields = {"track": "wandb,mlflow", "out_dir": str(tmp_path), "wandb_mode": "online"}
    study = start_study_run(fields, study_name="st1", kind="optuna")
    assert "no WANDB_API_KEY" in capsys.readouterr().err
    assert study.mlflow_run_id
    assert study.mlflow_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrainConfig.from_preset(  # trials live elsewhere, but log to the study's MLflow
        "tiny",
        track="wandb,mlflow",
        out_dir=str(tmp_path / "trials"),
        group="st1",
        mlflow_uri=study.mlflow_uri,
    )
    trial = make_tracker(cfg, tmp_path / "trial0", mlflow_parent_run_id=study.mlflow_run_id)
    trial.log_metrics({"val/acc_avg": 0.5}, step=1)
    trial.finish("FINISHED")
    (tmp_path / "study.json").write_text("{}")
    study.log_summary({"best/val_acc_avg": 0.5})
    study.log_artifact(tmp_path / "study.json")
    study.finish("FINISHED")

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(study.mlflow_run_id)
    assert parent.data.tags["study_kind"] == "optuna"
    assert _ours(parent.data.metrics) == {"best/val_acc_avg": 0.5}
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{study.mlflow_run_id}'"
    )
    assert len(children) == 1 and _ours(children[0].data.metrics) == {"val/acc_avg": 0.5}

    [study_wb] = find_runs(tmp_path / "st1")
    [trial_wb] = find_runs(tmp_path / "trial0")
    s, t = read_run(study_wb), read_run(trial_wb)
    assert (s.group, s.job_type, t.group, t.job_type) == ("st1", "study", "st1", "train")
    assert s.summary["best/val_acc_avg"] == 0.5 and s.exit_code == 0
    assert study_wb.name.startswith("offline-run-")
    assert list(home.rglob("*")) == []


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "server-artifacts"),
        "--workers",
        "1",
    ]
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # one process less to start
        "HOME": str(tmp_path),
    }
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"mlflow server did not start: {(tmp_path / 'server.log').read_text()}"
                    )
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (gunicorn/uvicorn)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
def test_mlflow_server(home, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    cfg = TrainConfig.from_preset(
        "tiny",
        track="mlflow",
        mlflow_uri=mlflow_server,
        out_dir=str(tmp_path / "runs"),
        epochs=1,
    )
    summary = train_and_evaluate(cfg)
    client = MlflowClient(mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name(cfg.project).experiment_id])
    _check_mlflow_run(client, run.info.run_id, Path(summary["run_dir"]), cfg)
    # artifacts went through the server into its destination, not beside the runs
    assert list((tmp_path / "server-artifacts").rglob("averaged.pt"))
    assert not (tmp_path / "runs" / "mlflow.db").exists()


_WORKER = """
import sys
from wash_sweeps import TrainConfig
from wash_sweeps.tracking import make_tracker
cfg = TrainConfig.from_preset("tiny", track="mlflow", out_dir=sys.argv[1], run_name=sys.argv[2])
t = make_tracker(cfg, sys.argv[1] + "/" + sys.argv[2])
t.log_params(cfg.to_dict())
for step in range(20):
    t.log_metrics({f"m/{i}": float(i * step) for i in range(20)}, step)
t.finish()
"""


@pytest.mark.slow
def test_workers_share_a_fresh_sqlite_store(home, tmp_path):
    """Study workers open the same new mlflow.db at once (schema creation races without a lock)."""
    from mlflow.tracking import MlflowClient

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path), f"w{i}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert not [e for e in errors if "warning: tracker" in e], errors
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("wash-sweeps").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["w0", "w1"]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert len(client.get_metric_history(r.info.run_id, "m/7")) == 20


def test_end_run_ends_the_recorded_mlflow_run(home, tmp_path, monkeypatch):
    """A job stopped from outside: `end_run` ends the MLflow run its trackers.json names."""
    from mlflow.tracking import MlflowClient

    from wash_sweeps.tracking import end_run, tracker_refs

    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")  # no monitor left behind
    cfg = TrainConfig.from_preset("tiny", track="mlflow", out_dir=str(tmp_path))
    make_tracker(cfg, tmp_path / "run")  # opened, never finished: a killed job's run
    ref = tracker_refs(tmp_path / "run")["mlflow"]
    client = MlflowClient(ref["uri"])
    assert client.get_run(ref["run_id"]).info.status == "RUNNING"
    end_run(tmp_path / "run", status="KILLED")
    assert client.get_run(ref["run_id"]).info.status == "KILLED"
    end_run(tmp_path / "no-such-run")  # nothing recorded: nothing to do, no error
