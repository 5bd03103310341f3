"""End-to-end runs of every method, exact resume, divergence and pruning hooks."""

import json
import math

import pytest
import torch

from wash_sweeps import DivergedError, train_and_evaluate
from wash_sweeps.results import RunDir, iter_jsonl

SPLIT_KEYS = [
    "acc_avg",
    "loss_avg",
    "acc_ens",
    "loss_ens",
    "acc_member_mean",
    "acc_member_min",
    "acc_member_max",
    "loss_member_mean",
    "acc_greedy",
    "loss_greedy",
    "gap_ens_avg",
]
FINAL_KEYS = [
    *(f"{split}/{k}" for split in ("val", "test") for k in SPLIT_KEYS),
    "val/greedy_size",
    "div/consensus",
    "div/pairwise_l2",
    "div/disagreement",
    "div/kl",
    "barrier/mean",
    "barrier/member_avg_mean",
    "val/acc_aligned",
    "test/acc_aligned",
    "test/loss_aligned",
    "barrier/aligned_mean",
    "comm/bytes_total",
    "train/loss",
    "train/lr",
    "time/samples_per_s",
    "member/0/val_acc",
    "member/0/test_acc",
]


@pytest.mark.parametrize("method", ["independent", "wash", "papa", "papa_all", "papa2", "dart"])
@pytest.mark.parametrize("dataset,model", [("mnist1d", "cnn1d"), ("digits", "cnn_digits")])
def test_every_method_end_to_end(tmp_path, tiny_cfg, method, dataset, model):
    cfg = tiny_cfg(
        method=method, dataset=dataset, model=model, papa_every=2, papa_all_every=1, p=0.05
    )
    s = train_and_evaluate(cfg, tmp_path / "run")
    for k in FINAL_KEYS:
        assert k in s and math.isfinite(s[k]), k
    assert not any(k.startswith("held/") for k in s)
    # a broken learner stays at chance (10 classes): every method's members learn in 2 epochs
    assert s["val/acc_member_mean"] > 0.2 and s["test/acc_member_mean"] > 0.2
    assert s["test/acc_ens"] > 0.2
    if method in ("papa_all", "dart"):  # merged after epoch 0: one basin, the average works
        assert s["test/acc_avg"] > 0.2
    assert (s["comm/bytes_total"] > 0) == (method != "independent")
    run = RunDir(tmp_path / "run")
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["final"]
    assert json.loads(run.summary_path.read_text())["test/acc_avg"] == s["test/acc_avg"]
    assert run.checkpoint_path.exists() and run.averaged_path.exists()
    prov = s["provenance"]
    assert {"git_commit", "git_dirty", "versions", "device", "seeds"} <= set(prov)
    assert s["curves"]["pair/0-1"] and len(s["curves"]["avg/0"]) == cfg.barrier_points


def test_val_and_test_metrics_come_from_their_own_splits(tmp_path, tiny_cfg):
    """`val/` is measured on the validation split, `test/` on the test split: recompute both
    from the saved averaged model."""
    from wash_sweeps.config import TrainConfig
    from wash_sweeps.data import load_data
    from wash_sweeps.metrics import accuracy, logits_of
    from wash_sweeps.population import Population

    cfg = tiny_cfg(method="papa_all", papa_all_every=1)
    s = train_and_evaluate(cfg, tmp_path / "run")
    data = load_data(TrainConfig.from_dict(s["config"]))
    assert len(data.y_val) == round(0.1 * 4000)  # 10% of MNIST-1D's training set
    model = Population(cfg, data.in_shape, data.n_classes).new_model()[0]
    model.load_state_dict(torch.load(tmp_path / "run" / "averaged.pt", weights_only=True))
    for split, (x, y) in {
        "val": (data.x_val, data.y_val),
        "test": (data.x_test, data.y_test),
    }.items():
        assert s[f"{split}/acc_avg"] == pytest.approx(accuracy(logits_of(model, x, 1000), y))
    assert s["val/acc_avg"] != s["test/acc_avg"]


def test_greedy_soup_is_chosen_on_validation(tmp_path, tiny_cfg):
    s = train_and_evaluate(tiny_cfg(method="independent"), tmp_path / "run")
    # independent members sit in different basins: adding one to the best lowers validation
    # accuracy, so the greedy soup keeps only the best member on validation
    assert s["val/greedy_size"] == 1
    assert s["val/acc_greedy"] == s["val/acc_member_max"]
    best = max(range(3), key=lambda i: (s[f"member/{i}/val_acc"], -i))
    assert s["test/acc_greedy"] == s[f"member/{best}/test_acc"]


def test_training_learns(tmp_path, tiny_cfg):
    cfg = tiny_cfg(
        method="papa", dataset="digits", model="cnn_digits", epochs=6, n_train=0, papa_rate=0.2
    )
    s = train_and_evaluate(cfg, tmp_path / "run")
    assert s["test/acc_member_mean"] > 0.8 and s["test/acc_avg"] > 0.8


@pytest.mark.parametrize(
    ("epochs", "every", "merges"), [(4, 2, 2), (5, 2, 2), (6, 2, 3), (3, 1, 2)]
)
def test_papa_all_bytes_are_merges_times_bytes_per_merge(tmp_path, tiny_cfg, epochs, every, merges):
    """Official schedule: merges after epochs 0, K, 2K, ... but never after the last one, so
    the members end distinct (their ensemble and disagreement are real measurements)."""
    cfg = tiny_cfg(method="papa_all", papa_all_every=every, epochs=epochs, n_train=256)
    s = train_and_evaluate(cfg, tmp_path / "run")
    d = s["derived"]["n_params"] + s["derived"]["n_buffers"]
    assert s["comm/bytes_total"] == merges * 2 * (cfg.n_members - 1) * d * 4
    assert s["div/consensus"] > 0  # not merged after the last epoch: members differ


def test_papa2_bytes_recount_the_rows_each_new_member_receives(tmp_path, tiny_cfg):
    """After epochs 0 and 2 of 4 (K = 2), new member k receives the state of each member of
    its pair that is not itself; the pairs come from the (seed, epoch) generator."""
    from wash_sweeps import seeding
    from wash_sweeps.methods import draw_pairs

    cfg = tiny_cfg(method="papa2", papa_all_every=2, epochs=4, n_train=256, n_members=4)
    s = train_and_evaluate(cfg, tmp_path / "run")
    d = s["derived"]["n_params"] + s["derived"]["n_buffers"]
    rows = 0
    for epoch in (0, 2):
        pairs = draw_pairs(4, seeding.numpy_rng(cfg.seed, seeding.PAIRS, epoch))
        rows += sum(len({a, b} - {k}) for k, (a, b) in enumerate(pairs))
    assert s["comm/bytes_total"] == rows * d * 4 > 0


def test_papa_bytes_are_pulls_times_bytes_per_pull(tmp_path, tiny_cfg):
    cfg = tiny_cfg(method="papa", papa_every=3, epochs=2, n_train=256)  # 8 steps per epoch
    s = train_and_evaluate(cfg, tmp_path / "run")
    d = s["derived"]["n_params"] + s["derived"]["n_buffers"]
    pulls = 2 * len([i for i in range(8) if i % 3 == 0])  # iterations 0, 3, 6 of each epoch
    assert s["comm/bytes_total"] == pulls * 2 * (cfg.n_members - 1) * d * 4


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


@pytest.mark.parametrize(
    ("every", "epochs_written"), [(1, [1, 2, 3]), (2, [2, 3]), (0, [3])], ids=str
)
def test_the_final_checkpoint_is_written_once(
    tmp_path, tiny_cfg, monkeypatch, every, epochs_written
):
    """One write per checkpoint epoch, the last one included once (it is also the checkpoint
    the final evaluation is summarised from); a resume at the end writes it once more only."""
    writes: list[int] = []
    save = RunDir.save_checkpoint

    def counting(self, state):
        writes.append(state["state"]["epoch"])
        save(self, state)

    monkeypatch.setattr(RunDir, "save_checkpoint", counting)
    cfg = tiny_cfg(epochs=3, checkpoint_every=every)
    first = train_and_evaluate(cfg, tmp_path / "run")
    assert writes == epochs_written
    (tmp_path / "run" / "summary.json").unlink()  # stopped after the checkpoint, before the end
    writes.clear()
    again = train_and_evaluate(cfg, tmp_path / "run", resume=True)
    assert writes == [3]
    assert again["val/acc_avg"] == first["val/acc_avg"]
    assert _final_params(tmp_path / "run")["params"].shape[0] == cfg.n_members


def test_a_fresh_run_starts_an_empty_history(tmp_path, tiny_cfg):
    train_and_evaluate(tiny_cfg(epochs=2), tmp_path / "run")
    # not a resume: the same directory, replaced as asked
    train_and_evaluate(tiny_cfg(epochs=1), tmp_path / "run", overwrite=True)
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
    train_and_evaluate(tiny_cfg(epochs=1), tmp_path / "run2", overwrite=True)


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
    assert 0 <= s["val/acc_avg_bn"] <= 1 and 0 <= s["test/acc_avg_bn"] <= 1


def test_intermediate_barriers_use_fewer_points_and_times_are_reported(tmp_path, tiny_cfg):
    cfg = tiny_cfg(epochs=3, barrier_points=7, barrier_points_during=3, n_train=256)
    s = train_and_evaluate(cfg, tmp_path / "run")
    records = RunDir(tmp_path / "run").read_metrics()
    assert [len(r["curves"]["pair/0-1"]) for r in records] == [3, 3, 7]  # full curve at the end
    assert len(s["curves"]["avg/0"]) == 7
    # the end points of a curve are the members' (and the average's) own test losses
    first = records[0]["curves"]
    assert first["pair/0-1"][-1] == pytest.approx(first["pair/1-2"][0])
    t = {k: s[k] for k in ("time/train_s", "time/eval_s", "time/wall_s")}
    assert 0 < t["time/eval_s"] < t["time/wall_s"] and t["time/train_s"] < t["time/wall_s"]
    assert t["time/train_s"] + t["time/eval_s"] <= t["time/wall_s"]
