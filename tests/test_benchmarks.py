"""The benchmark runs end to end in --tiny mode and its JSON holds every section with positive
numbers. Its timings are not checked: benchmarks are not unit tests (issue 7)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wash_sweeps.benchmarks import report
from wash_sweeps.benchmarks.timing import interleaved, paired_ratio
from wash_sweeps.cli import main


def _numbers(node, path=""):
    """Every numeric leaf of a JSON tree with its path (booleans are not numbers here)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _numbers(v, f"{path}/{i}")
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield path, node


def test_interleaved_times_every_function_each_repeat():
    calls = {"a": 0, "b": 0}

    def count(k):
        def f():
            calls[k] += 1

        return f

    s = interleaved({"a": count("a"), "b": count("b")}, repeats=4, block_s=0.0, calls={"b": 3})
    assert [len(v) for v in s.values()] == [4, 4]
    assert calls["b"] == 2 + 4 * 3  # warm-up, then blocks of 3
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0


@pytest.mark.slow
def test_bench_tiny_writes_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--tiny", "--out", str(out), "--workdir", str(tmp_path / "runs")])
    assert rc == 0
    res = json.loads(out.read_text())
    for section in ("meta", "step", "comm", "e2e", "distributed", "targets"):
        assert res[section], section
    assert res["distributed"]["status"] == "measured"
    numbers = dict(_numbers({k: v for k, v in res.items() if k != "meta"}))
    # the demo's fixed cost is the intercept of a two-point fit: noise can make it negative
    numbers = {k: v for k, v in numbers.items() if not k.endswith("/fixed_s")}
    assert numbers
    bad = {k: v for k, v in numbers.items() if not (math.isfinite(v) and v > 0)}
    assert not bad
    for c in res["comm"]:
        assert [w["p"] for w in c["wash"]] == [1e-4, 1e-3, 1e-2, 1e-1]
    names = {t["target"] for t in res["targets"]}
    assert any("shuffle p<=1e-2" in n for n in names)
    assert any("speedup over naive" in n for n in names)
    table = capsys.readouterr().out
    assert report.format_table(res) in table and ("PASS" in table or "MISS" in table)


@pytest.mark.slow
def test_gpu_smoke_quick_runs_end_to_end_on_the_cpu(tmp_path):
    """gpu/smoke.sh --quick: the GPU benchmark and the short CIFAR-shaped training run go
    through on a CPU (tiny sizes) and leave their numbers in files."""
    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "smoke"
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["bash", str(repo / "gpu" / "smoke.sh"), "--quick", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((out / "gpu.json").read_text())
    g = res["gpu"]
    assert g["device"] == "cpu" and set(g) >= {"throughput", "overheads", "train_run"}
    assert all(r["images_per_s"] > 0 for r in g["throughput"]["rows"].values())
    assert "papa_style" in g["throughput"]["rows"]
    assert set(g["overheads"]["pct_of_step"]) == {"wash_prefetched", "wash_inline", "papa"}
    assert g["train_run"]["train_images_per_s"] > 0 and g["train_run"]["precision"] == "bf16"
    assert "gpu on cpu" in (out / "gpu.txt").read_text()
    assert (out / "times.txt").read_text().splitlines()[-1].startswith("total ")
