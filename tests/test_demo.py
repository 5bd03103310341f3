"""`wash-sweeps demo`: three runs side by side, one table in percent read from the runs' own
summaries, one sentence per claim, one figure whose path it prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wash_sweeps.cli import main
from wash_sweeps.config import TrainConfig
from wash_sweeps.demo import SETTINGS, meaning


@pytest.mark.slow
def test_demo_prints_the_table_the_sentence_and_the_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "1", "--out-dir", str(out), "--seed", "3"]) == 0
    text = capsys.readouterr().out
    runs = {}
    for summary in out.glob("*/summary.json"):
        s = json.loads(summary.read_text())
        runs[s["config"]["method"]] = s
    assert set(runs) == {"independent", "papa", "wash"}
    for method, s in runs.items():  # the demo's settings and the preset, on the asked seed
        cfg = s["config"]
        assert cfg["dataset"] == "digits" and cfg["epochs"] == 1 and cfg["seed"] == 3
        assert all(cfg[k] == v for k, v in SETTINGS[method].items())
        row = next(line for line in text.splitlines() if line.startswith(method + " "))
        cells = row.split()
        assert float(cells[2]) == pytest.approx(100 * s["test/acc_ens"], abs=0.051)
        assert float(cells[3]) == pytest.approx(100 * s["test/acc_avg"], abs=0.051)
        assert float(cells[5]) == pytest.approx(s["comm/bytes_total"] / 1e6, abs=0.0051)
    assert "test accuracy in %" in text and "Naive averaging" in text
    figure = next(line for line in text.splitlines() if line.startswith("figure: "))
    png = Path(figure.split(": ", 1)[1])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    # a second demo reuses the finished runs: nothing is trained again
    assert main(["demo", "--epochs", "1", "--out-dir", str(out), "--seed", "3"]) == 0
    assert "3 run(s) already finished, kept" in capsys.readouterr().out


def _summary(avg: float, ens: float, mb: float) -> dict[str, float]:
    return {"test/acc_avg": avg, "test/acc_ens": ens, "comm/bytes_total": mb * 1e6}


def test_the_sentence_follows_the_numbers():
    rows = {
        "independent": _summary(0.10, 0.98, 0),
        "papa": _summary(0.97, 0.975, 100),
        "wash": _summary(0.975, 0.978, 10),
    }
    text = meaning(rows)
    assert "Naive averaging fails" in text and "10.0 %" in text and "98.0 %" in text
    assert "within a point of its ensemble and within a point of PAPA's average" in text
    assert "10% of PAPA's bytes" in text
    rows["wash"] = _summary(0.70, 0.90, 10)  # WASH loses: the sentence says so
    rows["independent"] = _summary(0.97, 0.975, 0)  # naive averaging works: said too
    text = meaning(rows)
    assert "20.0 points below its ensemble" in text and "27.0 points below PAPA's" in text
    assert "does not fail here" in text


def test_demo_preset_is_a_valid_short_schedule():
    cfg = TrainConfig.from_preset("demo")
    assert cfg.dataset == "digits" and cfg.n_members == 5 and cfg.eval_every == cfg.epochs
