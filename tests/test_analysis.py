"""Aggregation, figures and report on small synthetic run directories written here.

Each run gets known accuracies, bytes, curves and histories, so every figure's returned arrays
can be checked against the numbers put in.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis import aggregate, figures, report
from wash_sweeps.config import TrainConfig

SEEDS = (0, 1, 2)
BASE_ACC = {"independent": 0.10, "papa": 0.80, "papa_all": 0.75, "wash": 0.70}
EPOCHS = (1, 2)


def acc(method: str, p: float, n: int, seed: int, schedule: str = "uniform", opt: bool = True):
    """The synthetic averaged accuracy of a run (ensemble = +0.05, mean member = -0.02)."""
    bonus = p if method == "wash" else 0.0
    bonus += 0.01 * (n - 5) + (0.03 if schedule == "linear" else 0.0) + (0.0 if opt else -0.04)
    return BASE_ACC[method] + bonus + 0.01 * seed


def mb(method: str, p: float) -> float:
    return {"independent": 0.0, "papa": 30.0, "papa_all": 3.0, "wash": 100 * p}[method] * 1e6


def write_run(root: Path, method: str, seed: int, n: int = 5, p: float = 0.01, **extra) -> Path:
    cfg = TrainConfig.from_preset(
        "mnist1d-fast", method=method, n_members=n, p=p, seed=seed, **extra
    )
    a = acc(method, p, n, seed, cfg.layer_schedule, cfg.shuffle_optimizer_state)
    final = {
        "val/acc_avg": a,
        "val/acc_ens": a + 0.05,
        "val/acc_member_mean": a - 0.02,
        "val/acc_greedy": a,
        "comm/bytes_total": mb(method, p),
        "div/disagreement": 0.1 + seed / 100,
        "member/0/val_acc": a,
    }
    history = []
    for epoch in EPOCHS:
        m = {
            **final,
            "train/epoch": epoch,
            "div/consensus": 10.0 * epoch + seed,
            "div/disagreement": 0.1 * epoch,
            "barrier/mean": 0.5 * epoch + seed,
        }
        history.append({"step": 10 * epoch, "epoch": epoch, "final": epoch == 2, "metrics": m})
    curves = {"pair/0-1": [0.0, 1.0 + seed, 0.0], "avg/0": [0.0, 0.5, 0.0]}
    run = root / f"{method}-N{n}-p{p}-{extra}-s{seed}".replace(" ", "")
    run.mkdir(parents=True)
    summary = {"config": cfg.to_dict(), "derived": {}, **final, "curves": curves}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return run


@pytest.fixture
def tables(tmp_path: Path) -> Path:
    """A grid like dvc.yaml's: baselines, a WASH p grid, an N grid, an ablation."""
    runs = tmp_path / "runs"
    for seed in SEEDS:
        for method in ("independent", "papa", "papa_all"):
            write_run(runs, method, seed)
        for p in (0.001, 0.01, 0.1):
            write_run(runs, "wash", seed, p=p)
        for method in ("papa", "wash"):
            write_run(runs, method, seed, n=3)
        for schedule in ("uniform", "linear"):
            for opt in (True, False):
                write_run(runs, "wash", seed, p=0.01, layer_schedule=schedule,
                          shuffle_optimizer_state=opt, run_name=f"abl{schedule}{opt}")  # fmt: skip
    aggregate.write_tables(runs, tmp_path / "tables")
    return tmp_path / "tables"


def test_aggregate_one_row_per_distinct_run(tables: Path) -> None:
    t = aggregate.read_tables(tables)
    runs = t["runs"]
    # 3 baselines + 3 p + 2 N=3 + 3 ablation variants (uniform/opt-on repeats wash p=0.01)
    assert len(runs) == 3 * (3 + 3 + 2 + 3)
    assert runs["run"].is_unique
    assert "member/0/val_acc" not in runs.columns
    wash = runs[(runs["method"] == "wash") & (runs["p"] == 0.1) & (runs["seed"] == 2)]
    assert wash["val/acc_avg"].item() == pytest.approx(acc("wash", 0.1, 5, 2))
    assert len(t["history"]) == len(runs) * len(EPOCHS)
    assert len(t["curves"]) == len(runs)
    summary = json.loads((tables / "summary.json").read_text())
    assert summary["N5 papa rate=0.1"]["n"] == 3
    assert summary["N5 independent"]["val/acc_avg"] == pytest.approx(0.11)


def test_aggregate_where_keeps_matching_runs(tables: Path, tmp_path: Path) -> None:
    stale = write_run(tmp_path / "runs", "papa", 7, epochs=3)  # an earlier grid's run
    assert len(aggregate.load_runs(tmp_path / "runs")) == 3 * 11 + 1
    kept = aggregate.load_runs(tmp_path / "runs", {"epochs": "40", "method": "papa"})
    assert len(kept) == 3 * 2 and stale.name not in {r["run"] for r in kept}


def test_fig1_accuracy_vs_p(tables: Path, tmp_path: Path) -> None:
    runs = aggregate.read_tables(tables)["runs"]
    d = figures.fig_accuracy_vs_p(runs, tmp_path / "f")
    assert all(f.exists() and f.stat().st_size > 1000 for f in d["files"])
    np.testing.assert_allclose(d["p"], [0.001, 0.01, 0.1])
    expected = [np.mean([acc("wash", p, 5, s) for s in SEEDS]) * 100 for p in d["p"]]
    np.testing.assert_allclose(d["val/acc_avg"][0], expected)
    np.testing.assert_allclose(d["val/acc_ens"][0], np.array(expected) + 5)
    np.testing.assert_allclose(d["val/acc_avg"][1], 1.0)  # std of 0.01 steps over 3 seeds, in %
    assert d["independent"][0] == pytest.approx(11.0)
    assert d["papa"][0] == pytest.approx(81.0)
    assert d["n"] == [3, 3, 3]


def test_fig2_accuracy_vs_n(tables: Path, tmp_path: Path) -> None:
    runs = aggregate.read_tables(tables)["runs"]
    d = figures.fig_accuracy_vs_n(runs, tmp_path / "f")
    assert set(d) - {"files"} == {"papa rate=0.1", "wash p=0.01 uniform opt-state-on"}
    papa = d["papa rate=0.1"]
    np.testing.assert_allclose(papa["N"], [3, 5])
    np.testing.assert_allclose(papa["val/acc_avg"][0], [79.0, 81.0])
    assert all(f.exists() for f in d["files"])


def test_fig3_diversity_over_training(tables: Path, tmp_path: Path) -> None:
    t = aggregate.read_tables(tables)
    d = figures.fig_diversity(t["history"], t["runs"], tmp_path / "f")
    cons = d["div/consensus"]
    # baselines and the main WASH p grid at N=5; no N=3 run, no ablation-only variant
    assert set(cons) == {
        "independent",
        "papa rate=0.1",
        "papa_all",
        *(f"wash p={p:g} uniform opt-state-on" for p in (0.001, 0.01, 0.1)),
    }
    np.testing.assert_allclose(cons["papa_all"]["epoch"], EPOCHS)
    np.testing.assert_allclose(cons["papa_all"]["mean"], [11.0, 21.0])  # 10*epoch + mean seed
    np.testing.assert_allclose(d["div/disagreement"]["papa_all"]["mean"], [0.1, 0.2])
    assert all(f.exists() for f in d["files"])


def test_fig4_barriers(tables: Path, tmp_path: Path) -> None:
    t = aggregate.read_tables(tables)
    d = figures.fig_barriers(t["curves"], t["history"], t["runs"], tmp_path / "f")
    ind = d["interpolation"]["independent"]
    np.testing.assert_allclose(ind["pair"], [0.0, 2.0, 0.0])  # mean of 1 + seed
    np.testing.assert_allclose(ind["avg"], [0.0, 0.5, 0.0])
    assert ind["n"] == 3
    np.testing.assert_allclose(d["barrier/mean"]["independent"]["mean"], [1.5, 2.0])
    assert all(f.exists() for f in d["files"])


def test_fig5_accuracy_vs_bytes_and_pareto_front(tables: Path, tmp_path: Path) -> None:
    runs = aggregate.read_tables(tables)["runs"]
    d = figures.fig_accuracy_vs_bytes(runs, tmp_path / "f")
    got = dict(zip(d["label"], zip(d["mb"], d["acc"], strict=True), strict=True))
    assert got["independent"] == pytest.approx((0.0, 11.0))
    assert got["papa rate=0.1"] == pytest.approx((30.0, 81.0))
    assert got["wash p=0.1 uniform opt-state-on"] == pytest.approx((10.0, 81.0))
    # PAPA ties WASH p=0.1 on accuracy with 3x the bytes: dominated; so is every variant that
    # a cheaper one beats (uniform p=0.01 at 1 MB loses to linear p=0.01 at 1 MB)
    assert d["front"] == [
        "independent",
        "wash p=0.001 uniform opt-state-on",
        "wash p=0.01 linear opt-state-on",
        "papa_all",
        "wash p=0.1 uniform opt-state-on",
    ]
    assert all(f.exists() for f in d["files"])


def test_pareto_front() -> None:
    bytes_ = np.array([0.0, 1.0, 2.0, 3.0, 3.0])
    accs = np.array([10.0, 50.0, 40.0, 60.0, 70.0])
    assert figures.pareto_front(bytes_, accs).tolist() == [0, 1, 4]


def test_fig6_ablation(tables: Path, tmp_path: Path) -> None:
    runs = aggregate.read_tables(tables)["runs"]
    d = figures.fig_ablation(runs, tmp_path / "f")
    assert len(d["variant"]) == 4 and d["n"] == [3, 3, 3, 3]
    by_name = dict(zip(d["variant"], d["val/acc_avg"][0], strict=True))
    mean = np.mean([acc("wash", 0.01, 5, s) for s in SEEDS]) * 100
    assert by_name["uniform p\nopt. state on"] == pytest.approx(mean)
    assert by_name["linear p\nopt. state off"] == pytest.approx(mean + 3 - 4)
    assert all(f.exists() for f in d["files"])


def test_fig7_collects_study_pngs(tables: Path, tmp_path: Path) -> None:
    studies = tmp_path / "studies" / "wash-p"
    studies.mkdir(parents=True)
    (studies / "history.png").write_bytes(b"\x89PNG fake")
    copied = figures.fig_studies(tmp_path / "studies", tmp_path / "f")
    assert [c.name for c in copied] == ["fig7_wash-p_history.png"]
    assert figures.fig_studies(tmp_path / "missing", tmp_path / "f") == []


def test_report_and_cli(tables: Path, tmp_path: Path) -> None:
    from wash_sweeps.cli import main

    out = tmp_path / "out"
    assert main(["figures", "--runs", str(tables.parent / "runs"), "--out", str(out)]) == 0
    assert (out / "tables" / "runs.csv").read_text() == (tables / "runs.csv").read_text()
    text = (out / "report.md").read_text()
    assert "| papa rate=0.1 | 81.0 ± 1.0 |" in text
    for stem in report.CAPTIONS:
        assert (out / "figures" / f"{stem}.png").exists()
        assert f"figures/{stem}.png" in text
