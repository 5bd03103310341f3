"""Studies that cannot crash-loop or repeat themselves: metric names checked against what the
trainer really emits, any trial error a FAIL with its reason, retries that ignore run-control
fields, new sampler seeds per invocation, a dead worker a non-zero exit, loopback torchrun."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from wash_sweeps.cli import main
from wash_sweeps.config import ConfigError, TrainConfig
from wash_sweeps.objectives import BN_METRICS, emitted_metrics, is_emitted
from wash_sweeps.study import JOURNAL_NAME, open_storage, sampler_seed
from wash_sweeps.sweep_spec import parse_spec

ONE = """
name: one
preset: tiny
method: grid
metric: {name: train/loss, goal: minimize}
parameters:
  method: {value: independent}
  lr: {values: [0.05]}
"""
RANDOM = """
name: rand
preset: tiny
method: random
metric: {name: val/acc_avg, goal: maximize}
parameters:
  method: {value: independent}
  lr: {distribution: log_uniform_values, min: 0.001, max: 0.5}
"""
CHEAP = ["--set", "epochs=1", "--set", "n_train=256", "--set", "threads=1"]


def sweep(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def trials(out: Path, name: str) -> list:
    storage = open_storage(str(out / JOURNAL_NAME))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_the_metric_list_is_what_a_real_run_emits(tmp_path):
    from wash_sweeps.train import train_and_evaluate

    summary = train_and_evaluate(TrainConfig.from_preset("tiny", epochs=1), tmp_path / "run")
    numeric = {
        k for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    assert {k for k in numeric if not is_emitted(k)} == set()
    assert set(emitted_metrics()) - set(BN_METRICS) - numeric == set()
    assert "member/2/val_acc" in numeric and "div/consensus/fc" in numeric


@pytest.mark.parametrize("name", ["val/nosuch", "val/acc_avgg", "member/x/val_acc", "val/"])
def test_a_metric_that_does_not_exist_is_refused(name):
    raw = {"method": "random", "metric": {"name": name, "goal": "maximize"}}
    raw["parameters"] = {"lr": {"min": 0.01, "max": 0.1}}
    with pytest.raises(ConfigError, match="is not a metric of train_and_evaluate"):
        parse_spec(raw)


def test_q_is_checked_per_field_type():
    raw = {"method": "random", "metric": {"name": "val/acc_avg", "goal": "maximize"}}
    raw["parameters"] = {"n_members": {"distribution": "q_uniform", "min": 2, "max": 6, "q": 1.5}}
    with pytest.raises(ConfigError, match="integer field; q must be a whole number"):
        parse_spec(raw)
    raw["parameters"] = {"lr": {"distribution": "q_uniform", "min": 0.1, "max": 0.5, "q": 0.1}}
    assert parse_spec(raw).params[0].q == 0.1


def test_any_trial_error_fails_the_trial_with_its_reason(tmp_path, monkeypatch, capsys):
    import wash_sweeps.train

    def broken(*args, **kwargs):
        raise RuntimeError("an unexpected bug")

    monkeypatch.setattr(wash_sweeps.train, "train_and_evaluate", broken)
    out = tmp_path / "study"
    assert main(["study", str(sweep(tmp_path, ONE)), "--out", str(out), *CHEAP]) == 0
    (trial,) = trials(out, "one")
    assert trial.state.name == "FAIL"
    assert trial.user_attrs["fail_reason"] == "RuntimeError: an unexpected bug"


def test_ctrl_c_turned_into_another_error_by_optunas_lock_is_still_ctrl_c(
    tmp_path, monkeypatch, capsys
):
    """Ctrl-C while Optuna's journal-file lock is awaited: the lock's cleanup releases a lock it
    does not hold and raises RuntimeError("did not possess lock") in place of the interrupt. It
    is still an interrupt: the trial fails as interrupted, its retry is queued, exit 130 (it was
    a failed trial and exit 0, and the study went on)."""
    from optuna.storages.journal import JournalFileOpenLock

    import wash_sweeps.train

    def interrupted_in_lock(*args, **kwargs):
        lock = JournalFileOpenLock(str(tmp_path / "other.log"))
        try:
            raise KeyboardInterrupt  # arrives while acquire() sleeps
        except BaseException:
            lock.release()  # what acquire() does on any exception: RuntimeError here
            raise

    monkeypatch.setattr(wash_sweeps.train, "train_and_evaluate", interrupted_in_lock)
    out = tmp_path / "study"
    assert main(["study", str(sweep(tmp_path, ONE)), "--out", str(out), *CHEAP]) == 130
    assert "interrupted" in capsys.readouterr().err
    first, retry = trials(out, "one")
    assert first.state.name == "FAIL" and first.user_attrs["fail_reason"] == "interrupted"
    assert retry.state.name == "WAITING" and retry.system_attrs["failed_trial"] == 0


def test_a_retry_ignores_run_control_fields(tmp_path, tiny_cfg):
    """What a changed --workers does to a retried trial: threads (and out_dir, progress...)
    differ from the checkpoint's config; the trial resumes instead of failing."""
    from wash_sweeps.train import train_and_evaluate

    cfg = tiny_cfg(epochs=2, threads=1)

    def stop(epoch, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(cfg, tmp_path / "trial", on_epoch=stop)
    again = cfg.replace(threads=2, progress=False, track="", out_dir=str(tmp_path / "elsewhere"))
    summary = train_and_evaluate(again, tmp_path / "trial", resume=True)
    assert summary["train/epoch"] == 2
    with pytest.raises(ConfigError, match="fields: lr"):  # a result-changing field still counts
        train_and_evaluate(cfg.replace(lr=0.3), tmp_path / "trial", resume=True)


def test_sampler_seeds_differ_per_invocation():
    assert sampler_seed(0, 0) == sampler_seed(0, 0)
    assert len({sampler_seed(s, n) for s in range(3) for n in range(5)}) == 15


@pytest.mark.slow
def test_a_continued_random_study_proposes_new_points(tmp_path):
    out, path = tmp_path / "study", sweep(tmp_path, RANDOM)
    assert main(["study", str(path), "--out", str(out), "--n-trials", "2", *CHEAP]) == 0
    assert main(["study", str(path), "--out", str(out), "--n-trials", "4", *CHEAP]) == 0
    lrs = [t.params["lr"] for t in trials(out, "rand")]
    assert len(lrs) == 4 and len(set(lrs)) == 4


@pytest.mark.slow
def test_a_dead_worker_is_a_non_zero_exit_in_one_line(tmp_path, monkeypatch, capfd):
    # every worker process dies at start-up (as if killed); the parent must say so
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys\nif '--worker' in sys.argv:\n    os._exit(9)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(hook))
    out = tmp_path / "study"
    args = ["study", str(sweep(tmp_path, ONE)), "--out", str(out), "--workers", "2", *CHEAP]
    assert main(args) == 1
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert err == [
        "wash-sweeps: error: study 'one': 2 worker(s) died (exit codes [9, 9]); run the same "
        "command again to continue (their trials are retried)"
    ]


def test_torchrun_jobs_rendezvous_on_loopback():
    from wash_sweeps.distributed import torchrun_command

    cmd = torchrun_command(2, ["train"])
    assert "--standalone" not in cmd
    assert "--local-addr=127.0.0.1" in cmd
    assert any(a.startswith("--rdzv-endpoint=127.0.0.1:") for a in cmd)
