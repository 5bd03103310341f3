"""Aggregation, figures and report on small synthetic run directories written here.

Each run gets known accuracies, bytes, curves and histories, so every figure's returned arrays
can be checked against the numbers put in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wash_sweeps.analysis import aggregate, figures, report, selection, stats
from wash_sweeps.config import TrainConfig

SEEDS = (0, 1, 2)
BASE_ACC = {"independent": 0.10, "papa": 0.80, "papa_all": 0.80, "wash": 0.70}
# per-seed test-only noise, so that paired differences are not constant
JITTER = {"papa_all": (-0.002, 0.0, 0.0), "wash": (-0.02, 0.0, 0.0)}
EPOCHS = (1, 2)


def clean(method: str, p: float, n: int, seed: int, schedule: str, opt: bool, rate: float):
    bonus = p if method == "wash" else 0.0
    bonus += 0.01 * (n - 5) + (0.03 if schedule == "linear" else 0.0) + (0.0 if opt else -0.04)
    bonus += 0.05 if method == "papa" and rate != 0.1 else 0.0
    return BASE_ACC[method] + bonus + 0.01 * seed


def acc(method: str, p: float, n: int, seed: int, schedule: str = "uniform", opt: bool = True,
        rate: float = 0.1) -> float:  # fmt: skip
    """The synthetic TEST accuracy of a run's averaged model (ensemble = +0.05, mean member =
    -0.02): WASH is best at p=0.1 and PAPA at rate 0.3 on test..."""
    jitter = JITTER.get(method, (0.0,) * 3)[seed] if seed < 3 else 0.0
    return clean(method, p, n, seed, schedule, opt, rate) + jitter


def val_acc(method: str, p: float, n: int, seed: int, schedule: str = "uniform",
            opt: bool = True, rate: float = 0.1) -> float:  # fmt: skip
    """...but on VALIDATION, WASH is best at p=0.01 (uniform, opt-state on) and PAPA at rate
    0.1: a choice made on the wrong split picks another setting."""
    a = clean(method, p, n, seed, schedule, opt, rate)
    if method == "wash" and p == 0.01 and schedule == "uniform" and opt:
        return a + 0.15
    if method == "papa" and rate != 0.1:
        return a - 0.10
    return a + 0.02


def mb(method: str, p: float) -> float:
    return {"independent": 0.0, "papa": 30.0, "papa_all": 3.0, "wash": 100 * p}[method] * 1e6


def write_run(root: Path, method: str, seed: int, n: int = 5, p: float = 0.01, legacy: bool = False,
              **extra) -> Path:  # fmt: skip
    """A finished run directory with known metrics; `legacy`: the keys of runs recorded before
    the validation split existed (`val/` only, computed on the test split)."""
    cfg = TrainConfig.from_preset(
        "mnist1d-fast", method=method, n_members=n, p=p, seed=seed, **extra
    )
    knobs = (cfg.layer_schedule, cfg.shuffle_optimizer_state, cfg.papa_rate)
    a, v = acc(method, p, n, seed, *knobs), val_acc(method, p, n, seed, *knobs)
    if legacy:
        evals = {"val/acc_avg": a, "val/acc_ens": a + 0.05, "val/acc_member_mean": a - 0.02,
                 "member/0/val_acc": a}  # fmt: skip
        greedy = {"val/acc_greedy": a}
    else:
        evals = {}
        for split, x in (("val", v), ("test", a)):
            evals |= {
                f"{split}/acc_avg": x,
                f"{split}/acc_ens": x + 0.05,
                f"{split}/acc_member_mean": x - 0.02,
                f"{split}/loss_avg": 1.0 - x,
                f"member/0/{split}_acc": x,
            }
        greedy = {"val/acc_greedy": v, "test/acc_greedy": a - 0.01, "val/greedy_size": 2}
    evals |= {"comm/bytes_total": mb(method, p), "div/disagreement": 0.1 + seed / 100}
    history = []
    for epoch in EPOCHS:
        m = {
            **evals,
            **(greedy if epoch == EPOCHS[-1] else {}),
            "train/epoch": epoch,
            "div/consensus": 10.0 * epoch + seed,
            "div/disagreement": 0.1 * epoch,
            "barrier/mean": 0.5 * epoch + seed,
        }
        history.append({"step": 10 * epoch, "epoch": epoch, "final": epoch == 2, "metrics": m})
    curves = {"pair/0-1": [0.0, 1.0 + seed, 0.0], "avg/0": [0.0, 0.5, 0.0]}
    run = root / f"{method}-N{n}-p{p}-{extra}-s{seed}{'-old' * legacy}".replace(" ", "")
    run.mkdir(parents=True)
    summary = {"config": cfg.to_dict(), "derived": {}, **evals, **greedy, "curves": curves}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return run


@pytest.fixture
def tables(tmp_path: Path) -> Path:
    """A grid like dvc.yaml's: baselines (two PAPA rates), a WASH p grid, an N grid, an
    ablation."""
    runs = tmp_path / "runs"
    for seed in SEEDS:
        for method in ("independent", "papa", "papa_all"):
            write_run(runs, method, seed)
        write_run(runs, "papa", seed, papa_rate=0.3)
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


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1))


# --- statistics ----------------------------------------------------------------------------------


def test_paired_difference_by_hand() -> None:
    # differences [-0.2, 0, 0]: mean -0.0667, sd 0.11547, t(0.975, 2) = 4.3027
    a = {0: 10.0, 1: 20.0, 2: 30.0, 9: 99.0}  # seed 9 has no partner: left out
    b = {0: 10.2, 1: 20.0, 2: 30.0, 5: 1.0}
    d = stats.paired_difference(a, b)
    assert d.n == 3
    assert d.mean == pytest.approx(-0.2 / 3)
    half = 4.302653 * 0.1154701 / np.sqrt(3)
    assert half == pytest.approx(0.2868, abs=1e-4)
    assert (d.lo, d.hi) == pytest.approx((-0.2 / 3 - half, -0.2 / 3 + half), abs=1e-6)
    assert stats.verdict(d, scale=1.0) == "about equal"
    assert stats.describe(d, scale=1.0) == ("-0.1 [-0.4, +0.2] points, n = 3: about equal")


def test_paired_difference_higher_lower_and_too_few() -> None:
    # differences [1, 2, 3]: mean 2, sd 1, half-width 4.3027 / sqrt(3) = 2.484 -> [-0.48, 4.48]
    d = stats.paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert (d.mean, d.lo, d.hi) == pytest.approx((2.0, 2 - 2.48414, 2 + 2.48414), abs=1e-4)
    assert stats.verdict(d, scale=1.0) == "about equal"
    # differences [0.02, 0.03, 0.025, 0.03] in accuracy: the interval excludes 0
    up = stats.paired_difference({s: 0.5 + x for s, x in enumerate((0.02, 0.03, 0.025, 0.03))},
                                 {s: 0.5 for s in range(4)})  # fmt: skip
    assert up.n == 4 and up.lo > 0
    assert stats.verdict(up) == "higher by 2.6 points"
    down = stats.paired_difference({s: 0.5 for s in range(4)}, {s: 0.5 + 0.02 for s in range(4)})
    assert stats.verdict(down) == "lower by 2.0 points"  # no spread: a zero-width interval
    one = stats.paired_difference({0: 0.9, 1: math.nan}, {0: 0.8, 1: 0.7})
    assert one.n == 1 and math.isnan(one.lo)
    assert stats.verdict(one) == "n too small"
    assert stats.describe(one) == "+10.0 points, n = 1: n too small"
    assert stats.paired_difference({0: 1.0}, {1: 1.0}).n == 0


# --- aggregation ---------------------------------------------------------------------------------


def test_aggregate_one_row_per_distinct_run(tables: Path) -> None:
    t = aggregate.read_tables(tables)
    runs = t["runs"]
    # 4 baselines + 3 p + 2 N=3 + 3 ablation variants (uniform/opt-on repeats wash p=0.01)
    assert len(runs) == 3 * (4 + 3 + 2 + 3)
    assert runs["run"].is_unique
    assert "member/0/val_acc" not in runs.columns and "member/0/test_acc" not in runs.columns
    wash = runs[(runs["method"] == "wash") & (runs["p"] == 0.1) & (runs["seed"] == 2)]
    assert wash["test/acc_avg"].item() == pytest.approx(acc("wash", 0.1, 5, 2))
    assert wash["val/acc_avg"].item() == pytest.approx(val_acc("wash", 0.1, 5, 2))
    assert len(t["history"]) == len(runs) * len(EPOCHS)
    assert len(t["curves"]) == len(runs)
    summary = json.loads((tables / "summary.json").read_text())
    assert summary["N5 papa rate=0.1"]["n"] == 3
    assert summary["N5 independent"]["test/acc_avg"] == pytest.approx(0.11)
    assert summary["N5 independent"]["val/acc_avg"] == pytest.approx(0.13)


def test_aggregate_where_keeps_matching_runs(tables: Path, tmp_path: Path) -> None:
    stale = write_run(tmp_path / "runs", "papa", 7, epochs=3)  # an earlier grid's run
    assert len(aggregate.load_runs(tmp_path / "runs")) == 3 * 12 + 1
    kept = aggregate.load_runs(tmp_path / "runs", {"epochs": "40", "method": "papa"})
    assert len(kept) == 3 * 3 and stale.name not in {r["run"] for r in kept}


# --- selection: on validation, never on test -----------------------------------------------------


def test_settings_are_chosen_on_validation(tables: Path) -> None:
    runs = aggregate.read_tables(tables)["runs"]
    # on test, WASH p=0.1 and PAPA rate=0.3 would win; on validation p=0.01 and rate=0.1 do
    assert selection.chosen_settings(runs) == {
        "independent": "independent",
        "papa": "papa rate=0.1",
        "papa_all": "papa_all",
        "wash": "wash p=0.01 uniform opt-state-on",
    }
    on_test = selection.chosen_settings(runs, key="test/acc_avg")
    assert on_test["wash"] == "wash p=0.1 uniform opt-state-on"
    assert on_test["papa"] == "papa rate=0.3"
    assert selection.chosen_settings(runs, n=3)["wash"] == "wash p=0.01 uniform opt-state-on"
    got = selection.per_seed(runs, "papa rate=0.1", "test/acc_avg")
    assert got == pytest.approx({s: acc("papa", 0.01, 5, s) for s in SEEDS})


# --- figures -------------------------------------------------------------------------------------


def test_fig1_accuracy_vs_p(tables: Path, tmp_path: Path) -> None:
    runs = aggregate.read_tables(tables)["runs"]
    d = figures.fig_accuracy_vs_p(runs, tmp_path / "f")
    assert all(f.exists() and f.stat().st_size > 1000 for f in d["files"])
    np.testing.assert_allclose(d["p"], [0.001, 0.01, 0.1])
    by_p = [[acc("wash", p, 5, s) * 100 for s in SEEDS] for p in d["p"]]
    np.testing.assert_allclose(d["test/acc_avg"][0], [np.mean(v) for v in by_p])
    np.testing.assert_allclose(d["test/acc_avg"][1], [np.std(v, ddof=1) for v in by_p])
    np.testing.assert_allclose(d["test/acc_ens"][0], np.mean(by_p, axis=1) + 5)
    assert d["independent"][0] == pytest.approx(11.0)
    assert d["papa"][0] == pytest.approx(81.0)  # rate 0.1, chosen on validation (0.3: 86 on test)
    assert d["chosen_p"] == 0.01
    assert d["n"] == [3, 3, 3]


def test_fig2_accuracy_vs_n(tables: Path, tmp_path: Path) -> None:
    runs = aggregate.read_tables(tables)["runs"]
    d = figures.fig_accuracy_vs_n(runs, tmp_path / "f")
    assert set(d) - {"files"} == {"papa rate=0.1", "wash p=0.01 uniform opt-state-on"}
    papa = d["papa rate=0.1"]
    np.testing.assert_allclose(papa["N"], [3, 5])
    np.testing.assert_allclose(papa["test/acc_avg"][0], [79.0, 81.0])
    assert all(f.exists() for f in d["files"])


def test_fig3_diversity_over_training(tables: Path, tmp_path: Path) -> None:
    t = aggregate.read_tables(tables)
    d = figures.fig_diversity(t["history"], t["runs"], tmp_path / "f")
    cons = d["div/consensus"]
    # baselines and the main WASH p grid at N=5; no N=3 run, no ablation-only variant
    assert set(cons) == {
        "independent",
        "papa rate=0.1",
        "papa rate=0.3",
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


def test_fig5_accuracy_vs_bytes_front_on_validation(tables: Path, tmp_path: Path) -> None:
    runs = aggregate.read_tables(tables)["runs"]
    d = figures.fig_accuracy_vs_bytes(runs, tmp_path / "f")
    got = dict(zip(d["label"], zip(d["mb"], d["acc"], strict=True), strict=True))
    assert got["independent"] == pytest.approx((0.0, 11.0))
    assert got["papa rate=0.1"] == pytest.approx((30.0, 81.0))
    wash01 = np.mean([acc("wash", 0.1, 5, s) for s in SEEDS]) * 100
    assert got["wash p=0.1 uniform opt-state-on"] == pytest.approx((10.0, wash01))
    # the front is chosen on validation accuracy, where WASH p=0.01 (uniform, opt-state on) at
    # 1 MB beats everything that costs more; on test it would run on to papa_all and PAPA 0.3
    assert d["front"] == [
        "independent",
        "wash p=0.001 uniform opt-state-on",
        "wash p=0.01 uniform opt-state-on",
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
    by_name = dict(zip(d["variant"], d["test/acc_avg"][0], strict=True))
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


# --- report --------------------------------------------------------------------------------------


def test_report_and_cli(tables: Path, tmp_path: Path) -> None:
    from wash_sweeps.cli import main

    out = tmp_path / "out"
    assert main(["figures", "--runs", str(tables.parent / "runs"), "--out", str(out)]) == 0
    assert (out / "tables" / "runs.csv").read_text() == (tables / "runs.csv").read_text()
    text = (out / "report.md").read_text()
    # test numbers in the columns: PAPA rate 0.1 is 81.0 on test, 83.0 on validation
    assert "| papa rate=0.1 | 81.0 ± 1.0 | 86.0 ± 1.0 | 79.0 ± 1.0 | 80.0 ± 1.0 |" in text
    for stem in report.CAPTIONS:
        assert (out / "figures" / f"{stem}.png").exists()
        assert f"figures/{stem}.png" in text
    assert "selected on the test split" not in text  # that note belongs to old reports only


def test_report_chooses_on_validation_and_shows_test(tables: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report.write_report(tables, out)
    text = (out / "report.md").read_text()
    wash_test = _mean_std([acc("wash", 0.01, 5, s) * 100 for s in SEEDS])  # 71.3 ± 2.1
    chosen = (
        "| WASH | wash p=0.01 uniform opt-state-on | 87.0 ± 1.0 | "
        f"{wash_test[0]:.1f} ± {wash_test[1]:.1f} |"
    )
    assert chosen in text
    assert "| PAPA | papa rate=0.1 | 83.0 ± 1.0 | 81.0 ± 1.0 |" in text
    assert "| PAPA | papa rate=0.3" not in text and "| WASH | wash p=0.1 " not in text
    # WASH vs PAPA, averaged model: per-seed differences [-11, -9, -9] points
    # mean -9.667, sd 1.1547, half-width 4.3027 * 1.1547 / sqrt(3) = 2.868
    row = (
        "| WASH (wash p=0.01 uniform opt-state-on) vs PAPA (papa rate=0.1), averaged model | "
        "71.3 ± 2.1 | 81.0 ± 1.0 | -9.7 [-12.5, -6.8] points, n = 3: lower by 9.7 points |"
    )
    assert row in text
    # PAPA-all vs PAPA: differences [-0.2, 0, 0] points -> about equal
    assert (
        "| PAPA-all (papa_all) vs PAPA (papa rate=0.1), averaged model | 80.9 ± 1.1 | 81.0 ± 1.0 "
        "| -0.1 [-0.4, +0.2] points, n = 3: about equal |"
    ) in text
    # WASH vs the naive average of independent members: [59, 61, 61] points
    assert "vs independent, naive average | 71.3 ± 2.1 | 11.0 ± 1.0 | +60.3 [" in text
    # averaged vs its own ensemble: exactly -5 points on every seed
    assert "PAPA (papa rate=0.1): averaged model vs its ensemble | 81.0 ± 1.0 | 86.0 ± 1.0 |" \
        " -5.0 [-5.0, -5.0] points, n = 3: lower by 5.0 points |" in text  # fmt: skip


def test_headline_is_written_from_the_numbers(tables: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report.write_report(tables, out)
    headline = (out / report.HEADLINE_FILE).read_text().strip()
    assert headline == (
        "On mnist1d, N=5, with settings chosen on validation (wash p=0.01 uniform opt-state-on; "
        "PAPA rate=0.1), WASH's averaged model reaches 71.3 ± 2.1 % test accuracy vs PAPA's "
        "81.0 ± 1.0 % (paired difference -9.7 [-12.5, -6.8] points, n = 3: lower by 9.7 points) "
        "while sending 3.3 % of PAPA's bytes."
    )
    assert headline in (out / "report.md").read_text()


def test_report_one_seed_says_n_too_small(tmp_path: Path) -> None:
    for method, p in (("papa", 0.01), ("wash", 0.01), ("wash", 0.1)):
        write_run(tmp_path / "runs", method, 0, p=p)
    aggregate.write_tables(tmp_path / "runs", tmp_path / "tables")
    report.write_report(tmp_path / "tables", tmp_path / "out")
    headline = (tmp_path / "out" / report.HEADLINE_FILE).read_text()
    # seed 0: WASH 71 - 2 (jitter) vs PAPA 80
    assert "(paired difference -11.0 points, n = 1: n too small)" in headline
    assert "reaches 69.0 ± – % test accuracy" in headline  # no std from one seed


def test_old_run_directories_show_dashes(tmp_path: Path) -> None:
    """Runs recorded before the validation split (no test/ keys) neither crash the analysis
    nor take part in a choice; mixed with new runs, only the new ones count."""
    old = tmp_path / "old"
    for seed in SEEDS[:2]:
        for method in ("independent", "papa", "wash"):
            write_run(old / "runs", method, seed, legacy=True)
        write_run(old / "runs", "wash", seed, p=0.1, legacy=True)
    aggregate.write_tables(old / "runs", old / "tables")
    drawn = figures.draw_all(old / "tables", old / "out" / "figures")
    assert drawn["fig1"] is None and drawn["fig5"] is None  # test accuracy figures: skipped
    assert drawn["fig3"]["files"] and drawn["fig4"]["files"]
    report.write_report(old / "tables", old / "out")
    text = (old / "out" / "report.md").read_text()
    assert "8 of 8 runs have no test metrics" in text
    assert "No setting can be chosen" in text
    assert (old / "out" / report.HEADLINE_FILE).read_text().startswith("No headline on mnist1d")

    # the same directory with new runs beside the old: the old rows are left out of every mean
    for seed in SEEDS[:2]:
        for method in ("independent", "papa", "wash"):
            write_run(old / "runs", method, seed + 10)
    aggregate.write_tables(old / "runs", old / "mixed")
    report.write_report(old / "mixed", old / "mixed-out")
    text = (old / "mixed-out" / "report.md").read_text()
    assert "8 of 14 runs have no test metrics" in text
    papa = _mean_std([acc("papa", 0.01, 5, s) * 100 for s in (10, 11)])
    assert f"| papa rate=0.1 | {papa[0]:.1f} ± {papa[1]:.1f} (n = 2) |" in text
    assert "| wash p=0.1 uniform opt-state-on | – |" in text


# --- DVC's tabular plots -------------------------------------------------------------------------


def test_plot_tables_have_fixed_columns_and_the_chosen_settings(tables: Path) -> None:
    from wash_sweeps.analysis import plot_tables

    paths = plot_tables.write_plot_tables(tables)
    assert [p.name for p in paths] == list(plot_tables.FILES)
    epochs = pd.read_csv(paths[0])
    assert list(epochs.columns) == ["epoch", *selection.METHOD_ORDER]
    assert selection.METHOD_ORDER == ["independent", "papa", "papa_all", "papa2", "dart", "wash"]
    assert list(epochs["epoch"]) == list(EPOCHS)
    # each method's curve is its setting chosen on validation (PAPA rate 0.1, WASH p=0.01), test
    papa = np.mean([acc("papa", 0.01, 5, s) for s in SEEDS])
    wash = np.mean([acc("wash", 0.01, 5, s) for s in SEEDS])
    assert epochs["papa"].tolist() == pytest.approx([papa, papa], abs=1e-6)
    assert epochs["wash"].tolist() == pytest.approx([wash, wash], abs=1e-6)
    by_p = pd.read_csv(paths[1])
    assert by_p["p"].tolist() == [0.001, 0.01, 0.1]
    expected = [np.mean([acc("wash", p, 5, s) for s in SEEDS]) for p in (0.001, 0.01, 0.1)]
    assert by_p["averaged"].tolist() == pytest.approx(expected, abs=1e-6)
    assert by_p["ensemble"].tolist() == pytest.approx([e + 0.05 for e in expected], abs=1e-6)
    by_bytes = pd.read_csv(paths[2]).set_index("setting")
    assert by_bytes.loc["papa rate=0.1", "mb_sent"] == pytest.approx(30.0)
    assert by_bytes.loc["wash p=0.1 uniform opt-state-on", "mb_sent"] == pytest.approx(10.0)


def test_plot_tables_of_old_runs_keep_their_shape(tmp_path: Path) -> None:
    from wash_sweeps.analysis import plot_tables

    for seed in (0, 1):
        for method in ("independent", "papa", "wash"):
            write_run(tmp_path / "runs", method, seed, legacy=True)
    aggregate.write_tables(tmp_path / "runs", tmp_path / "tables")
    paths = plot_tables.write_plot_tables(tmp_path / "tables")
    epochs = pd.read_csv(paths[0])
    assert list(epochs.columns) == ["epoch", *selection.METHOD_ORDER]
    assert epochs[["papa", "wash"]].isna().all().all()  # no test keys: nothing to plot


def test_labels_of_papa2_and_dart_name_their_merge_period() -> None:
    for method, name in (("papa2", "PAPA-2"), ("dart", "DART")):
        cfg = TrainConfig(method=method, papa_all_every=3).to_dict()
        assert aggregate.label(cfg) == f"{method} K=3"
        assert figures._short(aggregate.label(cfg), method, 0.0) == f"{name} K=3"
        assert method in selection.BASELINES and report.METHOD_NAMES[method] == name
