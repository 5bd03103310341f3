"""The thread policy: fixed counts stay, `auto` follows the load other processes put on the
machine (with a fake clock and CPU-time probe: no timing here), and a run ticks it every step."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from wash_sweeps import runtime
from wash_sweeps.runtime import ThreadPolicy, auto_threads, choose_threads


@pytest.fixture(autouse=True)
def one_thread_after():
    yield
    torch.set_num_threads(1)  # conftest's setting, for the tests that follow


@pytest.fixture
def no_omp(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)


class FakeMachine:
    """A clock and a probe: `advance(dt, others, own)` lets dt seconds pass during which other
    processes keep `others` cores busy and this one `own`."""

    def __init__(self):
        self.t, self.busy, self.own = 100.0, 5000.0, 10.0

    def clock(self) -> float:
        return self.t

    def probe(self) -> tuple[float, float]:
        return self.busy, self.own

    def advance(self, dt: float, others: float, own: float) -> None:
        self.t += dt
        self.busy += (others + own) * dt
        self.own += own * dt


def test_choose_threads_leaves_busy_cores_alone():
    assert choose_threads(cap=2, total_cores=2, others_busy=0.0) == 2
    assert choose_threads(cap=2, total_cores=2, others_busy=0.4) == 2
    assert choose_threads(cap=2, total_cores=2, others_busy=0.7) == 1
    assert choose_threads(cap=2, total_cores=2, others_busy=5.0) == 1  # never below one
    assert choose_threads(cap=2, total_cores=16, others_busy=3.0) == 2  # never above the cap


def test_auto_starts_at_the_cap_or_omp_num_threads(no_omp, monkeypatch):
    assert auto_threads() == 2
    monkeypatch.setattr(runtime, "available_cores", lambda: 1)
    assert auto_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert auto_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "garbage")
    assert auto_threads() == 1


def test_auto_drops_to_one_thread_while_others_run_and_comes_back(no_omp):
    m = FakeMachine()
    policy = ThreadPolicy(0, interval_s=1.0, clock=m.clock, probe=m.probe, total_cores=2)
    assert policy.adaptive and policy.current == 2 == torch.get_num_threads()
    m.advance(0.5, others=2.0, own=1.0)
    assert policy.tick() == 2  # within the interval: no decision yet
    m.advance(0.6, others=2.0, own=1.0)
    assert policy.tick() == 1 == torch.get_num_threads()
    m.advance(1.0, others=1.2, own=0.8)  # still busy: stays at one
    assert policy.tick() == 1
    m.advance(1.0, others=0.1, own=1.0)  # the others have gone
    assert policy.tick() == 2 == torch.get_num_threads()
    assert policy.changes == 2


@pytest.mark.parametrize("threads,env", [(1, None), (2, None), (0, "1")])
def test_a_fixed_count_never_changes(no_omp, monkeypatch, threads, env):
    if env:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    m = FakeMachine()
    policy = ThreadPolicy(threads, clock=m.clock, probe=m.probe, total_cores=2)
    want = threads or int(env)
    assert not policy.adaptive and policy.current == want == torch.get_num_threads()
    for others in (2.0, 0.0, 2.0):
        m.advance(2.0, others=others, own=1.0)
        assert policy.tick() == want


def test_the_real_probe_counts_this_process():
    busy0, own0 = runtime.cpu_seconds()
    x = torch.randn(300, 300)
    for _ in range(200):
        x = torch.tanh(x @ x)
    busy1, own1 = runtime.cpu_seconds()
    assert own1 > own0 and busy1 >= busy0


@pytest.mark.slow
def test_a_run_ticks_the_policy_every_step(tiny_cfg, monkeypatch, no_omp):
    from wash_sweeps import train

    ticks = []

    class Counting(ThreadPolicy):
        def tick(self) -> int:
            ticks.append(self.current)
            return super().tick()

    monkeypatch.setattr(train, "ThreadPolicy", Counting)
    summary = train.train_and_evaluate(tiny_cfg(epochs=1, threads=0))
    assert len(ticks) == summary["derived"]["total_steps"]
    assert set(ticks) <= {1, 2}


@pytest.mark.slow
def test_a_bf16_tiny_run_learns_and_says_its_precision(tiny_cfg):
    from wash_sweeps.train import train_and_evaluate

    s = train_and_evaluate(tiny_cfg(precision="bf16", method="wash"))
    assert s["config"]["precision"] == "bf16"
    assert s["test/acc_member_mean"] > 0.2 and s["test/acc_ens"] > 0.2


_FAULTS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from wash_sweeps.runtime import keep_freed_memory
    assert keep_freed_memory()
faults = []
for _ in range(8):  # a 20 MB tensor, made and freed: an activation of an evaluation pass
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(5_000_000)
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(sum(faults[3:]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_freed_memory_is_reused_without_page_faults():
    """glibc maps large blocks fresh (4883 page faults for 20 MB) on every allocation until its
    dynamic threshold catches up; after keep_freed_memory() the block is reused. Fresh processes:
    the allocation history is what decides."""

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    assert faults("keep") < 500  # 0 measured: the last 5 passes reuse the block
    assert faults("default") > 4000  # without it, some of the same passes fault it all in again


def test_prefetcher_returns_what_make_returns_and_drops_stale_keys():
    from wash_sweeps.runtime import Prefetcher

    calls: list[int] = []

    def make(k: int) -> int:
        calls.append(k)
        if k == 13:
            raise ValueError("thirteen")
        return k * k

    pre = Prefetcher(make)
    assert pre.get(2, [3, 4]) == 4 and pre.misses == 1
    assert pre.get(3, [4, 5]) == 9 and pre.hits == 1
    assert pre.get(10, [11]) == 100  # a jump: 4 and 5 are dropped, 10 computed now
    assert pre.get(11, [13]) == 121 and pre.hits == 2
    with pytest.raises(ValueError, match="thirteen"):  # the thread's error, raised here
        pre.get(13)
    assert calls.count(4) <= 1 and calls.count(11) == 1
    pre.close()


def test_visible_gpus_follow_cuda_visible_devices():
    from wash_sweeps.runtime import visible_gpus

    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "4, 6,GPU-ab12"}) == ["4", "6", "GPU-ab12"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_parse_gpus_maps_indices_through_the_visible_devices():
    from wash_sweeps.config import ConfigError
    from wash_sweeps.runtime import parse_gpus

    visible = ["4", "5", "6", "7"]
    assert parse_gpus("auto", visible) == visible
    assert parse_gpus("0,2", visible) == ["4", "6"]
    assert parse_gpus(" 3 ", visible) == ["7"]
    for bad, why in [
        ("", "expected auto"),
        ("0,,1", "expected auto"),
        ("-1", "expected auto"),
        ("1,1", "listed twice"),
        ("4", "no device 4"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_gpus(bad, visible)
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        parse_gpus("auto", [])


def test_assign_gpus_deals_groups_round_robin():
    from wash_sweeps.config import ConfigError
    from wash_sweeps.runtime import assign_gpus

    four = ["0", "1", "2", "3"]
    assert assign_gpus(four, 6) == ["0", "1", "2", "3", "0", "1"]  # two workers share 0 and 1
    assert assign_gpus(four, 2) == ["0", "1"]
    assert assign_gpus(four, 3, per_trial=2) == ["0,1", "2,3", "0,1"]
    assert assign_gpus(["0", "1", "2"], 2, per_trial=2) == ["0,1", "0,1"]  # device 2 left over
    with pytest.raises(ConfigError, match="at least as many devices"):
        assign_gpus(["0"], 1, per_trial=2)
