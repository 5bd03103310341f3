"""`wash-sweeps study`: pruning and resume, several worker processes (journal file, PostgreSQL),
kill -9 of a worker then resume with the killed trial retried, the report's figures.

Real components: Optuna storages on disk, a PostgreSQL server started here, subprocess workers.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from pg_server import PostgresServer, ensure_installed

from wash_sweeps.cli import main
from wash_sweeps.results import RunDir
from wash_sweeps.study import JOURNAL_NAME, open_storage, used_slots

REPO = Path(__file__).resolve().parent.parent

# lr 1e-5 cannot lower the loss: the median pruner stops those trials after epoch 2
PRUNE_GRID = """
name: prune-grid
preset: tiny
method: grid
metric: {name: train/loss, goal: minimize}
parameters:
  method: {value: independent}
  lr: {values: [0.1, 0.05, 0.00001, 0.00002]}
"""

RANDOM = """
name: rand
preset: tiny
method: random
metric: {name: val/acc_avg, goal: maximize}
parameters:
  method: {values: [wash, papa]}
  p: {distribution: log_uniform_values, min: 0.001, max: 0.1}
conditions:
  p: {method: wash}
"""

TINY = ["--set", "n_train=256", "--set", "threads=1"]
# trials long enough (a few seconds) that a second process, still importing torch on a loaded
# machine, gets a share: with 1-epoch trials on 256 samples one process could take all of them
SHARED = ["--set", "epochs=4", "--set", "n_train=1024", "--set", "threads=1"]


def sweep_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage))


def cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wash_sweeps", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_study_prunes_and_continues_where_it_stopped(tmp_path, capsys):
    sweep, out = sweep_file(tmp_path, PRUNE_GRID), tmp_path / "study"
    args = ["study", str(sweep), "--out", str(out), "--pruner", "median", "--set", "epochs=3"]
    args += TINY
    assert main([*args, "--n-trials", "2"]) == 0  # interrupted after 2 trials of the grid
    storage = str(out / JOURNAL_NAME)
    first = load(storage, "prune-grid").trials  # the grid's points wait in the queue
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2 + [TrialState.WAITING] * 2
    assert main(args) == 0  # the same command finishes the grid (4 points)
    trials = load(storage, "prune-grid").trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert sorted(t.params["lr"] for t in trials) == [0.00001, 0.00002, 0.05, 0.1]
    states = {t.params["lr"]: t.state for t in trials}
    assert states[0.1] == states[0.05] == TrialState.COMPLETE
    assert TrialState.PRUNED in (states[0.00001], states[0.00002])
    for t in trials:
        assert t.intermediate_values and Path(t.user_attrs["run_dir"]).is_dir()
        assert t.user_attrs["run_dir"].endswith(f"trials/trial-{t.number}")
    summary = json.loads((out / "study_summary.json").read_text())
    assert summary["best_trial"]["params"]["lr"] in (0.1, 0.05)
    assert summary["best_config"]["lr"] == summary["best_trial"]["params"]["lr"]
    assert summary["states"]["COMPLETE"] >= 2
    # a third run adds nothing: the grid is done
    assert main(args) == 0
    assert len(load(storage, "prune-grid").trials) == 4

    assert main(["study-report", "--out", str(out)]) == 0
    for name in ("optimization_history", "param_importances", "intermediate_values"):
        png = out / f"{name}.png"
        assert png.stat().st_size > 10_000, png  # a drawn figure, not an empty canvas


def check_parallel_study(storage: str, name: str, n: int) -> None:
    trials = load(storage, name).trials
    assert len(trials) == n
    assert sorted(t.number for t in trials) == list(range(n))  # no duplicate numbers
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes ran trials


@pytest.mark.slow
def test_two_workers_share_the_default_journal(tmp_path):
    sweep, out = sweep_file(tmp_path, RANDOM), tmp_path / "study"
    r = cli("study", str(sweep), "--n-trials", "4", "--workers", "2", "--out", str(out),
            "--pruner", "none", *SHARED)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    check_parallel_study(str(out / JOURNAL_NAME), "rand", 4)
    assert "best trial" in r.stdout


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    with PostgresServer(tmp_path_factory.mktemp("pg")) as pg:
        yield pg


@pytest.mark.slow
def test_two_machines_share_a_postgresql_study(tmp_path, postgres):
    """The multi-machine recipe: create the study once, then one `study` command per machine,
    each with its own output directory, all on the same PostgreSQL database."""
    url = postgres.create_db("study_two_machines")
    sweep = sweep_file(tmp_path, RANDOM)
    common = ["study", str(sweep), "--n-trials", "4", "--storage", url, "--pruner", "none",
              *SHARED]  # fmt: skip
    r = cli(*common, "--out", str(tmp_path / "machine-a"), "--create-only")
    assert r.returncode == 0, r.stderr[-2000:]
    machines = [
        subprocess.Popen(
            [sys.executable, "-m", "wash_sweeps", *common, "--out", str(tmp_path / m)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for m in ("machine-a", "machine-b")
    ]
    outputs = [m.communicate(timeout=240)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    check_parallel_study(url, "rand", 4)
    for m in ("machine-a", "machine-b"):
        assert (tmp_path / m / "study_summary.json").exists()
        assert not (tmp_path / m / JOURNAL_NAME).exists()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "sig"),
    [("sqlite", signal.SIGKILL), ("journal", signal.SIGKILL), ("journal", signal.SIGINT)],
    ids=["sqlite-kill9", "journal-kill9", "journal-ctrl-c"],
)
def test_killed_worker_trial_is_retried_from_its_checkpoint(tmp_path, kind, sig):
    sweep, out = sweep_file(tmp_path, RANDOM), tmp_path / "study"
    storage = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else str(out / "j.log")
    cmd = [sys.executable, "-m", "wash_sweeps", "study", str(sweep), "--n-trials", "1",
           "--out", str(out), "--storage", storage, "--heartbeat", "1", "--grace", "2",
           "--pruner", "none", "--set", "epochs=30", "--set", "n_train=256",
           "--set", "threads=1"]  # fmt: skip
    # as from a terminal: a job started in the background by a non-interactive shell (how CI
    # may run) inherits an ignored SIGINT, and Python then never raises KeyboardInterrupt
    worker = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_default_sigint
    )
    ckpt = out / "trials" / "trial-0" / "checkpoint.pt"
    # 30 short epochs: the signal (50 ms after the first checkpoint) must land mid-trial even on
    # an idle machine, where 6 epochs could all finish first
    try:
        wait_for(ckpt.exists, 120, "the first checkpoint of trial 0")
    finally:
        os.kill(worker.pid, sig)  # mid-trial
        worker.communicate(timeout=60)
    first = load(storage, "rand").trials[0]
    if sig == signal.SIGKILL:
        assert first.state == TrialState.RUNNING  # left behind by the dead worker
        time.sleep(3)  # past the grace period: its heartbeat is stale
    else:  # Ctrl-C fails the trial and queues its retry at once
        assert worker.returncode == 130
        assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "interrupted"

    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    if sig == signal.SIGKILL:  # the stale trial is reported (on SQLite too: Optuna fails it)
        assert "trial 0: no heartbeat for 2 s, failed, retry queued" in r.stdout
    trials = load(storage, "rand").trials
    assert trials[0].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[0].params
    assert retry.user_attrs["run_dir"].endswith("trial-0")  # the killed trial's directory
    assert retry.user_attrs["resumed_at_epoch"] >= 1  # continued from its checkpoint
    assert used_slots(trials) == 1 and len(trials) == 2  # the retry took the killed one's slot
    records = [
        json.loads(line) for line in (ckpt.parent / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == list(range(1, 31))  # each epoch once, none lost


# the load test's trials: as cheap as a real trial can be (one epoch of 256 samples, two members,
# one evaluation with one barrier pair), so the test measures the study machinery, not training
LOAD = """
name: load
preset: tiny
method: random
metric: {name: val/acc_avg, goal: maximize}
parameters:
  method: {value: independent}
  lr: {distribution: log_uniform_values, min: 0.001, max: 0.3}
"""
CHEAP = [
    *("--set", "epochs=1", "--set", "n_train=256", "--set", "eval_every=1"),
    *("--set", "barrier_every=0", "--set", "barrier_pairs=1", "--set", "n_members=2"),
]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_four_workers_run_forty_trials_without_duplicates_or_crashes(tmp_path, request, backend):
    """Load: `--workers 4 --n-trials 40` on the default journal file and on PostgreSQL. Exactly
    40 trials, numbered 0..39 once each, all COMPLETE (none FAIL, RUNNING or WAITING), 40
    distinct points, one run directory each, every worker busy, exit 0, no traceback."""
    sweep, out = sweep_file(tmp_path, LOAD), tmp_path / "study"
    storage, flags = str(out / JOURNAL_NAME), []
    if backend == "postgresql":
        storage = request.getfixturevalue("postgres").create_db("load_study")
        flags = ["--storage", storage]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_start, start = cpu.ru_utime + cpu.ru_stime, time.perf_counter()
    r = cli("study", str(sweep), "--n-trials", "40", "--workers", "4", "--out", str(out),
            "--pruner", "none", *flags, *CHEAP, timeout=480)  # fmt: skip
    elapsed = time.perf_counter() - start
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = cpu.ru_utime + cpu.ru_stime - cpu_start
    print(f"{backend}: 4 workers x 40 trials in {elapsed:.1f} s ({cpu_s:.1f} CPU s)")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "no heartbeat" not in r.stdout, r.stdout  # no live trial taken for a dead one
    assert "Traceback" not in r.stderr and "Error" not in r.stderr, r.stderr[-2000:]
    trials = load(storage, "load").trials
    assert sorted(t.number for t in trials) == list(range(40))  # 40, no number twice
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 40, [t.state for t in trials]
    assert len({t.params["lr"] for t in trials}) == 40  # no point proposed twice
    assert not any(t.user_attrs.get("fail_reason") for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 4  # every worker ran trials
    for t in trials:  # each trial in its own directory, written once: one evaluation, its lr
        assert t.user_attrs["run_dir"] == str(out / "trials" / f"trial-{t.number}")
        assert len(RunDir(t.user_attrs["run_dir"]).read_metrics()) == 1
        run = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert run["config"]["lr"] == t.params["lr"] and run["val/acc_avg"] == t.value
    done = [line for line in r.stdout.splitlines() if line.startswith("[load] trial ")]
    assert sorted(int(line.split()[2]) for line in done) == list(range(40))
    assert all(" COMPLETE " in line for line in done)
    summary = json.loads((out / "study_summary.json").read_text())
    assert summary["states"] == {"COMPLETE": 40} and summary["failures"] == {}


@pytest.mark.slow
def test_a_killed_trial_resumes_when_the_study_continues_with_more_workers(tmp_path):
    """Trial 0 is killed (kill -9) in a one-worker study, whose trials use torch's default
    thread count; the study continues with `--workers 2`, whose trials get a fixed `threads`
    share. The retry resumes trial 0 from its checkpoint: `threads` only steers how the run
    executes, so the checkpoint is not refused over it."""
    sweep, out = sweep_file(tmp_path, RANDOM), tmp_path / "study"
    storage = str(out / JOURNAL_NAME)
    cmd = [sys.executable, "-m", "wash_sweeps", "study", str(sweep), "--n-trials", "1",
           "--out", str(out), "--heartbeat", "1", "--grace", "2", "--pruner", "none",
           "--set", "epochs=30", "--set", "n_train=256"]  # fmt: skip
    worker = subprocess.Popen([*cmd, "--workers", "1"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)  # fmt: skip
    run_dir = out / "trials" / "trial-0"
    try:
        wait_for((run_dir / "checkpoint.pt").exists, 120, "the first checkpoint of trial 0")
    finally:
        os.kill(worker.pid, signal.SIGKILL)  # mid-trial
        worker.communicate(timeout=60)
    assert load(storage, "rand").trials[0].state == TrialState.RUNNING
    assert json.loads((run_dir / "config.json").read_text())["config"]["threads"] == 0
    time.sleep(3)  # past the grace period: its heartbeat is stale

    r = subprocess.run([*cmd, "--workers", "2"], cwd=REPO, capture_output=True, text=True,
                       timeout=240)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    trials = load(storage, "rand").trials
    assert trials[0].state == TrialState.FAIL
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE, retry.user_attrs.get("fail_reason")
    assert retry.params == trials[0].params and not retry.user_attrs["fail_reason"]
    assert retry.user_attrs["run_dir"] == str(run_dir)
    assert retry.user_attrs["resumed_at_epoch"] >= 1  # continued from its checkpoint
    assert len(trials) == 2 and used_slots(trials) == 1
    threads = json.loads((run_dir / "config.json").read_text())["config"]["threads"]
    assert threads == max(1, (os.cpu_count() or 1) // 2)  # the retry ran with the new share
    records = RunDir(run_dir).read_metrics()
    assert [rec["epoch"] for rec in records] == list(range(1, 31))  # each epoch once


def test_bad_input_is_one_line(tmp_path, capsys):
    sweep = sweep_file(tmp_path, RANDOM)
    assert main(["study", str(sweep), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--n-trials K (K >= 1) is needed for a random sweep") and "\n" not in err
    assert main(["study", str(tmp_path / "nope.yaml"), "--n-trials", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["study-report", "--out", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_objective_on_the_test_split_is_refused(tmp_path, capsys):
    sweep = sweep_file(tmp_path, RANDOM.replace("val/acc_avg", "test/acc_avg"))
    out = tmp_path / "o"
    assert main(["study", str(sweep), "--out", str(out), "--n-trials", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "name='test/acc_avg': tuning on the test split is not allowed" in err
    assert "\n" not in err and not out.exists()  # refused before anything was recorded


def test_a_study_tunes_on_validation_and_reports_test(tmp_path, capsys):
    """The storage holds the validation objective; the summary shows the chosen trial's test
    numbers beside it, read from its run (reported, never used to choose)."""
    sweep = sweep_file(tmp_path, RANDOM)
    out = tmp_path / "o"
    args = ["study", str(sweep), "--out", str(out), "--n-trials", "2", "--set", "epochs=1"]
    assert main([*args, *TINY]) == 0
    study = load(str(out / JOURNAL_NAME), "rand")
    assert study.metric_names == ["val/acc_avg"]
    assert study.user_attrs["objectives"] == [["val/acc_avg", "maximize"]]
    best = study.best_trial
    run = json.loads((Path(best.user_attrs["run_dir"]) / "summary.json").read_text())
    assert best.value == run["val/acc_avg"]  # the objective is the validation number
    summary = json.loads((out / "study_summary.json").read_text())
    chosen = summary["best_trial"]
    assert chosen["number"] == best.number
    assert chosen["test"]["test/acc_avg"] == run["test/acc_avg"]
    assert chosen["test"]["test/acc_ens"] == run["test/acc_ens"]
    assert "its test numbers (reported, not used to choose)" in capsys.readouterr().out


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path):
    # n_members 1 is fine for independent but not for WASH (a bad sampled combination), and
    # lr 1e9 makes the loss NaN (DivergedError)
    sweep = sweep_file(
        tmp_path,
        """
        name: bad-combo
        preset: tiny
        method: grid
        metric: {name: val/acc_avg, goal: maximize}
        parameters:
          method: {values: [wash, independent]}
          n_members: {values: [1]}
          lr: {values: [0.05, 1000000000.0]}
        conditions:
          lr: {method: independent}
        """,
    )
    out = tmp_path / "o"
    assert main(["study", str(sweep), "--out", str(out), "--set", "epochs=1", *TINY]) == 0
    trials = load(str(out / JOURNAL_NAME), "bad-combo").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL]
    assert "needs n_members >= 2" in trials[0].user_attrs["fail_reason"]
    assert trials[2].user_attrs["fail_reason"].startswith("DivergedError: training loss is nan")
    summary = json.loads((out / "study_summary.json").read_text())
    assert set(summary["failures"]) == {"0", "2"}
    assert summary["best_trial"]["number"] == 1


@pytest.mark.slow
def test_multi_objective_study_is_tracked_and_has_a_pareto_front(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep = sweep_file(
        tmp_path,
        """
        name: acc-bytes
        preset: tiny
        method: random
        metric: {name: val/acc_avg, goal: maximize}
        objectives:
          - {name: val/acc_avg, goal: maximize}
          - {name: comm/bytes_total, goal: minimize}
        parameters:
          method: {values: [wash, papa]}
          p: {distribution: log_uniform_values, min: 0.001, max: 0.1}
        conditions:
          p: {method: wash}
        """,
    )
    out, root = tmp_path / "study", tmp_path / "runs"
    args = ["study", str(sweep), "--n-trials", "3", "--out", str(out), "--track", "mlflow"]
    args += ["--set", f"out_dir={root}"]
    assert main([*args, "--set", "epochs=1", *TINY]) == 0
    study = load(str(out / JOURNAL_NAME), "acc-bytes")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert all(len(t.values) == 2 and not t.intermediate_values for t in study.trials)
    summary = json.loads((out / "study_summary.json").read_text())
    front = {r["number"] for r in summary["pareto_front"]}
    assert front == {t.number for t in study.best_trials} and front

    # MLflow: one parent run for the study, the trials nested under it, the summary on it
    from mlflow.tracking import MlflowClient

    # the store of the output root (out_dir), not one of the study's own
    assert not (out / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("study") == "acc-bytes"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    assert parent.data.metrics["study/pareto_size"] == len(front)
    # the parent's params: the settings every trial shares, how the study samples
    params = parent.data.params
    assert params["preset"] == "tiny" and params["epochs"] == "1" and params["n_train"] == "256"
    assert params["study/method"] == "random" and params["study/sampler"] == "NSGAIISampler"
    assert json.loads(params["study/swept"]) == ["method", "p"] and "method" not in params
    assert not [k for k in params if k.startswith("best/")]  # a Pareto front, no single best
    # each trial links to its MLflow run
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {
        r.info.run_id for r in children
    }

    # the same command with a larger cap continues the study under the same parent run
    assert main([*args[:3], "4", *args[4:], "--set", "epochs=1", *TINY]) == 0
    assert "warning" not in capsys.readouterr().err  # its params were kept as they were
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs if r.data.tags.get("study") == "acc-bytes"] == [
        parent.info.run_id
    ]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert main(["study-report", "--out", str(out)]) == 0
    assert (out / "pareto_front.png").stat().st_size > 10_000


@pytest.mark.slow
def test_study_trials_under_torchrun_report_every_epoch(tmp_path, monkeypatch):
    """`--nproc-per-trial 2`: each trial is a 2-process torchrun job; its per-epoch values
    reach the study (so it can be pruned) and its MLflow run nests under the study's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep = sweep_file(
        tmp_path,
        """
        name: dist
        preset: tiny
        method: grid
        metric: {name: val/acc_avg, goal: maximize}
        parameters:
          method: {values: [wash, papa]}
          n_members: {value: 2}
          dataset: {value: synthetic}
        """,
    )
    out = tmp_path / "study"
    args = ["study", str(sweep), "--n-trials", "2", "--out", str(out), "--nproc-per-trial", "2"]
    args += ["--set", f"out_dir={tmp_path}"]
    assert main([*args, "--track", "mlflow", "--set", "epochs=3", *TINY]) == 0
    study = load(str(out / JOURNAL_NAME), "dist")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert {t.params["method"] for t in study.trials} == {"wash", "papa"}
    for t in study.trials:
        assert sorted(t.intermediate_values) == [1, 2, 3]
        summary = json.loads((out / "trials" / f"trial-{t.number}" / "summary.json").read_text())
        assert summary["dist/world_size"] == 2
        assert t.value == summary["val/acc_avg"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # the output root's store
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [parent] = [r for r in runs if r.data.tags.get("study") == "dist"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
    # a job's rank 0 opened the trial's MLflow run; the trial still links to it
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {
        r.info.run_id for r in children
    }


def test_gpus_are_dealt_to_the_worker_processes(tmp_path, monkeypatch, capsys):
    """`--gpus` gives each worker process its own CUDA_VISIBLE_DEVICES (indices into the devices
    this process sees, round-robin). The workers are stand-ins that record their environment."""
    from wash_sweeps.study import workers as study

    started: list[dict] = []

    class Worker:
        def __init__(self, cmd, env):
            started.append({"cmd": cmd, "env": env})

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(study.subprocess, "Popen", Worker)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")  # what this process may use
    sweep, out = sweep_file(tmp_path, RANDOM), tmp_path / "study"
    rc = main(["study", str(sweep), "--out", str(out), "--n-trials", "2", "--workers", "3",
               "--gpus", "0,1", *TINY])  # fmt: skip
    assert rc == 0
    assert [w["env"]["CUDA_VISIBLE_DEVICES"] for w in started] == ["3", "7", "3"]
    assert all("--gpus" not in w["cmd"] for w in started)
    assert "worker 2 on CUDA device(s) 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "gpus,message",
    [
        ("0,x", "expected auto or comma-separated device indices"),
        ("0,0", "device 0 is listed twice"),
        ("2", "there is no device 2 (2 CUDA device(s) visible here)"),
    ],
)
def test_a_bad_gpus_value_is_one_line(tmp_path, monkeypatch, capsys, gpus, message):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    sweep, out = sweep_file(tmp_path, RANDOM), tmp_path / "study"
    assert main(["study", str(sweep), "--out", str(out), "--gpus", gpus, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("wash-sweeps: error: --gpus")
    assert not out.exists()  # refused before any storage was created


CATEGORICAL = """
name: cat
preset: tiny
method: bayes
metric: {name: val/acc_avg, goal: maximize}
parameters:
  method: {value: wash}
  layer_schedule: {values: [uniform, linear]}
  p: {values: [0.01, 0.03]}
"""


@pytest.mark.slow
def test_a_tracked_study_records_its_best_params_and_links_each_trial(tmp_path, monkeypatch):
    """The parent run's params hold the best trial's parameters, categorical ones included;
    each trial's user attrs name its MLflow run and its W&B run; the default --out is under
    out_dir, and the one MLflow store is out_dir's."""
    from mlflow.tracking import MlflowClient

    from wash_sweeps.wandb_reader import find_runs, read_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "runs"
    sweep = sweep_file(tmp_path, CATEGORICAL)
    flags = ["--track", "mlflow,wandb", "--set", f"out_dir={root}", "--set", "epochs=1"]
    assert main(["study", str(sweep), "--n-trials", "2", *flags, *TINY]) == 0
    out = root / "studies" / "cat"
    study = load(str(out / JOURNAL_NAME), "cat")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert sorted(root.glob("**/mlflow.db")) == [root / "mlflow.db"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [parent] = [r for r in runs if r.data.tags.get("study") == "cat"]
    best, params = study.best_trial, parent.data.params
    assert params["best/trial"] == str(best.number)
    assert params["best/layer_schedule"] == best.params["layer_schedule"]  # categorical
    assert params["best/p"] == json.dumps(best.params["p"])
    assert params["method"] == "wash" and params["study/sampler"] == "TPESampler"
    assert not [k for k in parent.data.metrics if k.startswith("study/best_params")]
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["layer_schedule"] == t.params["layer_schedule"]
        [wb] = find_runs(Path(t.user_attrs["run_dir"]) / "wandb")
        assert t.user_attrs["wandb_run_path"] == f"wash-sweeps/{read_run(wb).run_id}"


def test_tpe_lies_about_running_trials_when_workers_share_the_study(tmp_path):
    from types import SimpleNamespace

    from wash_sweeps.study import make_sampler, shared_study
    from wash_sweeps.sweep_spec import load_spec

    spec = load_spec(sweep_file(tmp_path, CATEGORICAL))
    journal = open_storage(str(tmp_path / JOURNAL_NAME))
    assert not shared_study(journal, SimpleNamespace(workers=1))
    assert shared_study(journal, SimpleNamespace(workers=2))
    assert make_sampler(spec, 0, shared=True)._constant_liar
    assert not make_sampler(spec, 0)._constant_liar
