"""End-to-end runs of every method, exact resume, divergence and pruning hooks."""

import json
import math

import pytest
import torch

from wash_sweeps import DivergedError, train_and_evaluate
from wash_sweeps.results import RunDir, iter_jsonl

FINAL_KEYS = [
    "val/acc_avg",
    "val/acc_ens",
    "val/acc_member_mean",
    "val/acc_greedy",
    "val/gap_ens_avg",
    "div/consensus",
    "div/pairwise_l2",
    "div/disagreement",
    "div/kl",
    "barrier/mean",
    "barrier/member_avg_mean",
    "comm/bytes_total",
    "train/loss",
    "train/lr",
    "time/samples_per_s",
    "member/0/val_acc",
]


@pytest.mark.parametrize("method", ["independent", "wash", "papa", "papa_all"])
@pytest.mark.parametrize("dataset,model", [("mnist1d", "cnn1d"), ("digits", "cnn_digits")])
def test_every_method_end_to_end(tmp_path, tiny_cfg, method, dataset, model):
    cfg = tiny_cfg(
        method=method, dataset=dataset, model=model, papa_every=2, papa_all_every=1, p=0.05
    )
    s = train_and_evaluate(cfg, tmp_path / "run")
    for k in FINAL_KEYS:
        assert k in s and math.isfinite(s[k]), k
    assert 0 <= s["val/acc_avg"] <= 1
    assert (s["comm/bytes_total"] > 0) == (method != "independent")
    run = RunDir(tmp_path / "run")
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["final"]
    assert json.loads(run.summary_path.read_text())["val/acc_avg"] == s["val/acc_avg"]
    assert run.checkpoint_path.exists() and run.averaged_path.exists()
    prov = s["provenance"]
    assert {"git_commit", "git_dirty", "versions", "device", "seeds"} <= set(prov)
    assert s["curves"]["pair/0-1"] and len(s["curves"]["avg/0"]) == cfg.barrier_points


def test_training_learns(tmp_path, tiny_cfg):
    cfg = tiny_cfg(
        method="papa", dataset="digits", model="cnn_digits", epochs=6, n_train=0, papa_rate=0.2
    )
    s = train_and_evaluate(cfg, tmp_path / "run")
    assert s["val/acc_member_mean"] > 0.8 and s["val/acc_avg"] > 0.8


class _Stop(Exception):
    pass


def _final_params(path):
    return RunDir(path).load_checkpoint()["population"]


@pytest.mark.parametrize("method", ["wash", "papa"])
def test_resume_is_bit_identical(tmp_path, tiny_cfg, method):
    cfg = tiny_cfg(method=method, epochs=4, p=0.05, papa_every=3, shuffle_optimizer_state=True)
    train_and_evaluate(cfg, tmp_path / "full")

    def stop_after_two(epoch, metrics):
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train_and_evaluate(cfg, tmp_path / "cut", on_epoch=stop_after_two)
    assert RunDir(tmp_path / "cut").load_checkpoint()["state"]["epoch"] == 2
    resumed = train_and_evaluate(cfg, tmp_path / "cut", resume=True)
    a, b = _final_params(tmp_path / "full"), _final_params(tmp_path / "cut")
    assert torch.equal(a["params"], b["params"])
    assert torch.equal(a["opt_state"]["momentum_buffer"], b["opt_state"]["momentum_buffer"])
    full = RunDir(tmp_path / "full").read_metrics()
    cut = RunDir(tmp_path / "cut").read_metrics()
    assert [r["step"] for r in cut] == [r["step"] for r in full]  # no duplicated records
    assert resumed["comm/bytes_total"] == full[-1]["metrics"]["comm/bytes_total"]
    # resuming a finished run returns its summary and changes nothing
    again = train_and_evaluate(cfg, tmp_path / "cut", resume=True)
    assert again["val/acc_avg"] == resumed["val/acc_avg"]
    assert len(RunDir(tmp_path / "cut").read_metrics()) == len(cut)


def test_resume_at_the_end_redoes_only_the_final_evaluation(tmp_path, tiny_cfg):
    """A run that stopped after its last checkpoint but before its summary: resuming evaluates
    the end again and replaces the final record by an equal one (training loss included)."""
    cfg = tiny_cfg(epochs=2)
    first = train_and_evaluate(cfg, tmp_path / "run")
    records = list(iter_jsonl(tmp_path / "run" / "metrics.jsonl"))
    (tmp_path / "run" / "summary.json").unlink()
    again = train_and_evaluate(cfg, tmp_path / "run", resume=True)
    redone = list(iter_jsonl(tmp_path / "run" / "metrics.jsonl"))
    assert [r["epoch"] for r in redone] == [1, 2]
    assert redone[0] == records[0]
    final = {k: v for k, v in redone[1]["metrics"].items() if not k.startswith("time/")}
    assert final == {k: v for k, v in records[1]["metrics"].items() if not k.startswith("time/")}
    assert math.isfinite(again["train/loss"]) and again["train/loss"] == first["train/loss"]


def test_a_fresh_run_starts_an_empty_history(tmp_path, tiny_cfg):
    train_and_evaluate(tiny_cfg(epochs=2), tmp_path / "run")
    train_and_evaluate(tiny_cfg(epochs=1), tmp_path / "run")  # not a resume: the same directory
    assert [r["epoch"] for r in iter_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]


def test_a_run_directory_has_one_writer_at_a_time(tmp_path, tiny_cfg):
    from wash_sweeps.errors import RunFailure
    from wash_sweeps.results import exclusive

    busy = r"run directory .*run is in use by another run"
    with exclusive(tmp_path / "run"), pytest.raises(RunFailure, match=busy):  # another holds it
        train_and_evaluate(tiny_cfg(epochs=1), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # the refused run wrote nothing
    train_and_evaluate(tiny_cfg(epochs=1), tmp_path / "run")  # released: the next run goes
    train_and_evaluate(tiny_cfg(epochs=1), tmp_path / "run2")  # a run releases it at its end
    train_and_evaluate(tiny_cfg(epochs=1), tmp_path / "run2")


def test_resume_refuses_a_different_config(tmp_path, tiny_cfg):
    train_and_evaluate(tiny_cfg(epochs=1), tmp_path / "run")
    with pytest.raises(ValueError, match="differs from this run's in fields: p"):
        train_and_evaluate(tiny_cfg(epochs=1, p=0.5), tmp_path / "run", resume=True)


def test_nan_loss_fails_the_run_with_a_clear_error(tmp_path, tiny_cfg):
    cfg = tiny_cfg(method="independent", lr=1e6, momentum=0.99)
    with pytest.raises(DivergedError, match=r"training loss is (nan|inf)"):
        train_and_evaluate(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "config.json").exists()


def test_on_epoch_receives_every_evaluation(tmp_path, tiny_cfg):
    seen = []
    train_and_evaluate(
        tiny_cfg(epochs=3),
        tmp_path / "run",
        on_epoch=lambda e, m: seen.append((e, m["val/acc_avg"])),
    )
    assert [e for e, _ in seen] == [1, 2, 3]
    recorded = [r["metrics"]["val/acc_avg"] for r in iter_jsonl(tmp_path / "run/metrics.jsonl")]
    assert [a for _, a in seen] == recorded


def test_bn_model_reports_reestimated_soup(tmp_path, tiny_cfg):
    cfg = tiny_cfg(
        dataset="synthetic",
        model="resnet20",
        synthetic_shape="3x8x8",
        n_train=128,
        batch_size=32,
        epochs=1,
        barrier_points=3,
        augment=True,
    )
    s = train_and_evaluate(cfg, tmp_path / "run")
    assert 0 <= s["val/acc_avg_bn"] <= 1
