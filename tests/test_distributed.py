"""torch.distributed WASH/PAPA (gloo, CPU) against the single-process population.

    .venv/bin/pytest tests/test_distributed.py          # about a minute on 2 cores

Processes start with `torch.multiprocessing.spawn` and a file:// rendezvous in tmp_path (no port),
plus one real `torchrun` subprocess through the CLI.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wash_sweeps.config import ConfigError, TrainConfig
from wash_sweeps.distributed import (
    DistributedExchange,
    member_slices,
    process_placement,
    run_torchrun,
)
from wash_sweeps.methods import LocalExchange
from wash_sweeps.shuffle import Segment, draw_plan
from wash_sweeps.train import train_and_evaluate

N_MEMBERS = 4


def _cfg(tmp: Path, method: str, **kw) -> TrainConfig:
    # threads=1 everywhere: the same kernels in every process, so WASH can be bit-identical;
    # synthetic data: generated in milliseconds by each process (MNIST-1D takes seconds)
    base = dict(
        method=method,
        dataset="synthetic",
        n_members=N_MEMBERS,
        epochs=2,
        n_train=256,
        threads=1,
    )
    base.update(p=0.05, shuffle_optimizer_state=True) if method == "wash" else None
    base.update(papa_every=2, papa_rate=0.3) if method == "papa" else None
    return TrainConfig.from_preset("tiny", out_dir=str(tmp / "runs"), **{**base, **kw})


def _join(rank: int, world: int, init_file: str, timeout_s: float = 60) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def _check_operations(world: int) -> None:
    """permute_/mean/gather of every rank's slice equal LocalExchange on the whole population,
    with one member per process and with N not divisible by W (uneven slices and uneven
    all_to_all splits); routes worked out ahead (`prepare`, as Wash's prefetch thread does) or
    in permute_ itself."""
    for n in (world, 2 * world + 1):
        _check_permute(n)
    n, d = 2 * world + 1, 60
    full = [torch.randn(n, d, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    ex = DistributedExchange(n)
    lo, hi = ex.slices[ex.rank].start, ex.slices[ex.rank].stop
    torch.testing.assert_close(ex.mean(full[0][lo:hi]), full[0].mean(0))
    gathered = ex.gather(full[1][lo:hi])
    assert torch.equal(gathered, full[1]) if ex.rank == 0 else gathered is None


def _check_permute(n: int) -> None:
    d = 60
    full = [torch.randn(n, d, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    ex = DistributedExchange(n)
    lo, hi = ex.slices[ex.rank].start, ex.slices[ex.rank].stop
    for k, p in enumerate((0.0, 0.2, 1.0, 0.5)):
        plan = draw_plan([Segment(0, d, p)], n, np.random.default_rng(k))
        if k % 2:
            ex.prepare(plan)  # the route is kept on the plan and used by permute_
            assert plan.__dict__["_routes"]
        want = [t.clone() for t in full]
        want_values = LocalExchange(n).permute_(want, plan)
        mine = [t[lo:hi].clone() for t in full]
        sent_before = ex.stats.sent_values
        assert ex.permute_(mine, plan) == want_values
        for got, expected in zip(mine, want, strict=True):
            assert torch.equal(got, expected[lo:hi])  # copies only: exact
        # what crossed the network, summed over ranks, is what moves between different ranks
        sent = torch.tensor([ex.stats.sent_values - sent_before])
        dist.all_reduce(sent)
        owner = ex.owner
        cross = (plan.moved_mask() & (owner[plan.perm] != owner[torch.arange(n)])).sum()
        assert int(sent) == int(cross) * len(mine)


def _equal_worker(rank: int, world: int, init_file: str, jobs: list) -> None:
    from wash_sweeps.distributed import train_distributed

    _join(rank, world, init_file)
    try:
        _check_operations(world)
        for cfg, workdir in jobs:
            summary = train_distributed(cfg, workdir)
            assert (summary is None) == (rank != 0)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, tuple[TrainConfig, dict, dict]]:
    """The single-process runs every distributed run must reproduce."""
    tmp = tmp_path_factory.mktemp("single")
    out = {}
    for method in ("wash", "papa"):
        cfg = _cfg(tmp, method)
        summary = train_and_evaluate(cfg, tmp / method)
        out[method] = (cfg, summary, _checkpoint(tmp / method))
    return out


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def test_member_slices_are_contiguous_and_balanced():
    for n in range(1, 12):
        for w in range(1, n + 1):
            slices = member_slices(n, w)
            assert [m for s in slices for m in s] == list(range(n))
            assert max(map(len, slices)) - min(map(len, slices)) <= 1
    with pytest.raises(ConfigError, match="smaller than the world size"):
        member_slices(3, 4)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_distributed_equals_single_process(world, reference, tmp_path):
    jobs = [(cfg, tmp_path / method) for method, (cfg, _, _) in reference.items()]
    mp.spawn(_equal_worker, args=(world, str(tmp_path / "rdzv"), jobs), nprocs=world)
    for method, (_, single, single_ckpt) in reference.items():
        ckpt = _checkpoint(tmp_path / method)  # rank 0 gathered every member into it
        pop, ref = ckpt["population"], single_ckpt["population"]
        assert pop["members"] == list(range(N_MEMBERS))
        summary = _read_summary(tmp_path / method)
        # the same byte count as the single-process run, from the same plans / all-reduces
        assert summary["comm/bytes_total"] == single["comm/bytes_total"] > 0
        assert summary["dist/world_size"] == world
        if method == "wash":
            # WASH only copies values between members: every member's arithmetic is the same
            # sequence of float ops on the same inputs as in one process, so the bits agree
            for key in ("params", "buffers"):
                assert torch.equal(pop[key], ref[key])
            assert torch.equal(
                pop["opt_state"]["momentum_buffer"], ref["opt_state"]["momentum_buffer"]
            )
            assert summary["val/acc_avg"] == single["val/acc_avg"]
            # one member per process: every changed value crossed the network, none twice
            wire = summary["dist/all_to_all_bytes_total"]
            if world == N_MEMBERS:
                assert wire == summary["comm/bytes_total"]
            else:  # members sharing a process swap in memory, off the wire
                assert 0 < wire < summary["comm/bytes_total"]
        else:
            # PAPA: gloo's all-reduce adds the per-rank sums in its own order, not torch's
            # mean(0) order, so the mean differs in the last bits and the runs drift apart
            # a little through training; float32 rounding, not a different algorithm
            torch.testing.assert_close(pop["params"], ref["params"], rtol=1e-4, atol=1e-5)
            if world == N_MEMBERS:  # ring all-reduce on the wire == the method's 2 (N-1) d
                assert summary["dist/allreduce_wire_bytes_total"] == summary["comm/bytes_total"]
            else:  # members sharing a process are summed locally first: less on the wire
                assert 0 < summary["dist/allreduce_wire_bytes_total"] < summary["comm/bytes_total"]


def _read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _dying_worker(rank: int, world: int, init_file: str, cfg: TrainConfig, out: str) -> None:
    """Rank 0 dies after its first epoch (no cleanup, like a killed process); rank 1 must fail
    with a clear error instead of waiting forever in its next collective."""
    _join(rank, world, init_file, timeout_s=30)
    ex = DistributedExchange(cfg.n_members, timeout_s=30)

    def die(epoch: int, metrics: dict) -> None:
        os._exit(3)

    start = time.perf_counter()
    try:
        train_and_evaluate(
            cfg,
            Path(out) / "run",
            placement=process_placement(ex),
            on_epoch=die if rank == 0 else None,
        )
        Path(out, f"rank{rank}.txt").write_text("finished")
    except Exception as e:  # the error the user sees
        Path(out, f"rank{rank}.txt").write_text(
            f"{type(e).__name__}|{time.perf_counter() - start:.1f}|{e}"
        )


@pytest.mark.slow
def test_dead_rank_fails_fast_with_clear_error(tmp_path):
    cfg = _cfg(tmp_path, "wash", epochs=3, n_members=2)
    ctx = mp.get_context("spawn")
    # independent processes, not mp.spawn: spawn would kill the survivor itself
    procs = [
        ctx.Process(target=_dying_worker, args=(r, 2, str(tmp_path / "rdzv"), cfg, str(tmp_path)))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 150
    for p in procs:
        p.join(max(deadline - time.monotonic(), 1))
    alive = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not alive, "a rank hung after its peer died"
    assert procs[0].exitcode == 3
    kind, seconds, message = (tmp_path / "rank1.txt").read_text().split("|", 2)
    assert kind == "PeerFailure"
    assert "rank 1/2" in message and "another process died" in message
    assert "\n" not in message
    assert float(seconds) < 60


@pytest.mark.slow
def test_torchrun_resumes_a_single_process_checkpoint(reference, tmp_path):
    """The real launcher: `torchrun -m wash_sweeps train --distributed --resume RUN` continues a
    single-process run interrupted after epoch 1 and ends on the uninterrupted run's bits."""
    cfg, single, single_ckpt = reference["wash"]
    run_dir = tmp_path / "run"

    class Stop(Exception):
        pass

    def stop(epoch: int, metrics: dict) -> None:
        raise Stop

    with pytest.raises(Stop):
        train_and_evaluate(cfg, run_dir, on_epoch=stop)
    assert _checkpoint(run_dir)["state"]["epoch"] == 1

    summary = run_torchrun(cfg, 2, run_dir, resume=True, timeout_s=60)
    assert summary["dist/world_size"] == 2
    assert summary["comm/bytes_total"] == single["comm/bytes_total"]
    final = _checkpoint(run_dir)["population"]
    assert torch.equal(final["params"], single_ckpt["population"]["params"])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # one record per epoch


@pytest.mark.slow
def test_torchrun_job_is_followed_pruned_and_resumed(tmp_path, monkeypatch):
    """A sweep's distributed trial: each evaluation reaches the caller while the job runs; when
    the caller stops it (a pruned trial) the job's processes end and its MLflow run (nested
    under the study's) is KILLED; resuming it reports only the epochs not reported before."""
    from mlflow.tracking import MlflowClient

    from wash_sweeps.tracking import start_study_run

    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = start_study_run({"track": "mlflow", "out_dir": str(tmp_path)}, "st", kind="optuna")
    # epochs long enough (~0.2 s) that the job still runs when epoch 2 is read
    cfg = _cfg(
        tmp_path, "wash", n_members=2, epochs=8, n_train=4096, track="mlflow",
        mlflow_uri=study.mlflow_uri,
    )  # fmt: skip
    run_dir = tmp_path / "trial"
    reported: list[int] = []

    class Pruned(Exception):
        pass

    def prune_at_2(epoch: int, metrics: dict) -> None:
        reported.append(epoch)
        assert 0 <= metrics["val/acc_avg"] <= 1
        if epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        run_torchrun(
            cfg, 2, run_dir, on_epoch=prune_at_2, mlflow_parent_run_id=study.mlflow_run_id,
            poll_s=0.05,
        )  # fmt: skip
    assert reported == [1, 2]
    size = (run_dir / "metrics.jsonl").stat().st_size
    time.sleep(2)
    assert (run_dir / "metrics.jsonl").stat().st_size == size  # nothing runs on
    client = MlflowClient(study.mlflow_uri)
    ref = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    run = client.get_run(ref["run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["mlflow.parentRunId"] == study.mlflow_run_id

    # the job usually got no further than epoch 3 before it was stopped; the epochs it wrote
    # are not reported again by the resumed job (Optuna already holds them, or the caller
    # stopped before reading them), the others are, once each
    written = {json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").open()}
    resumed: list[int] = []
    summary = run_torchrun(
        cfg, 2, run_dir, resume=True, on_epoch=lambda e, m: resumed.append(e),
        mlflow_parent_run_id=study.mlflow_run_id,
    )  # fmt: skip
    assert resumed == sorted(set(range(1, 9)) - written)
    assert summary["dist/world_size"] == 2
    assert client.get_run(ref["run_id"]).info.status == "FINISHED"
    assert len(client.get_metric_history(ref["run_id"], "val/acc_avg")) == 8
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").open()]
    assert epochs == list(range(1, 9))
    # resuming the finished job evaluates the end again, without a second record of it
    run_torchrun(cfg, 2, run_dir, resume=True, on_epoch=lambda e, m: resumed.append(e))
    assert resumed == sorted(set(range(1, 9)) - written)  # nothing new
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").open()] == epochs
    assert len(client.get_metric_history(ref["run_id"], "val/acc_avg")) == 8
    study.finish()
    assert (run_dir / "torchrun.log").exists()  # the jobs' output


def test_metrics_tail_survives_a_resume_replacing_the_file(tmp_path):
    """A resumed job replaces metrics.jsonl by a truncated copy, then appends: the follower
    reports only epochs it has not seen, whatever the new file's size, and never a half line."""
    from wash_sweeps.distributed import MetricsTail
    from wash_sweeps.results import RunDir

    run = RunDir(tmp_path)
    for e in (1, 2, 3):
        run.append_metrics({"epoch": e, "step": 10 * e, "metrics": {"m": e}})
    tail = MetricsTail(run.metrics_path)  # a resumed job: epochs 1-3 were reported before
    assert tail.new() == []
    run.truncate_metrics(20)  # checkpoint at epoch 2: epoch 3 is redone
    run.append_metrics({"epoch": 3, "step": 30, "metrics": {"m": 3, "longer": "x" * 50}})
    assert tail.new() == []
    with run.metrics_path.open("a") as f:
        f.write('{"epoch": 4, "step": 40, "metrics": {"m"')  # being written
    assert tail.new() == []
    with run.metrics_path.open("a") as f:
        f.write(": 4}}\n")
    assert [r["epoch"] for r in tail.new()] == [4]
    assert tail.new() == []


def _papa2_worker(rank: int, world: int, init_file: str, cfg: TrainConfig, workdir: str) -> None:
    from wash_sweeps.distributed import train_distributed

    _join(rank, world, init_file)
    try:
        n, d = 2 * world + 1, 7  # uneven slices
        full = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
        ex = DistributedExchange(n)
        lo, hi = ex.slices[ex.rank].start, ex.slices[ex.rank].stop
        for seed in range(4):
            sources = np.random.default_rng(seed).integers(0, n, size=n).tolist()
            want = LocalExchange(n).rows_from(full, sources)
            assert torch.equal(ex.rows_from(full[lo:hi].clone(), sources), want[lo:hi])
        train_distributed(cfg, workdir)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_papa2_distributed_equals_single_process(world, tmp_path):
    """PAPA-2 through `rows_from`: the same members bit for bit (copies, then the same adds),
    the same byte count, and with one member per process exactly those bytes on the wire."""
    cfg = _cfg(tmp_path, "papa2", papa_all_every=1, epochs=3)
    single = train_and_evaluate(cfg, tmp_path / "single")
    args = (world, str(tmp_path / "rdzv"), cfg, str(tmp_path / "dist"))
    mp.spawn(_papa2_worker, args=args, nprocs=world)
    summary = _read_summary(tmp_path / "dist")
    pop = _checkpoint(tmp_path / "dist")["population"]
    ref = _checkpoint(tmp_path / "single")["population"]
    assert torch.equal(pop["params"], ref["params"]) and torch.equal(pop["buffers"], ref["buffers"])
    assert summary["comm/bytes_total"] == single["comm/bytes_total"] > 0
    # the final evaluation runs on rank 0's gathered population: alignment included
    assert summary["test/acc_aligned"] == single["test/acc_aligned"]
    wire = summary["dist/all_to_all_bytes_total"]
    if world == N_MEMBERS:  # one member per process: every received row crossed the network
        assert wire == summary["comm/bytes_total"]
    else:  # rows of members sharing a process are copied in memory
        assert 0 < wire < summary["comm/bytes_total"]


def _fp16_worker(rank: int, world: int, init_file: str, out: str) -> None:
    """Each rank one member with its own GradScaler (fp16 arithmetic is CUDA's; GradScaler runs
    on the CPU too). Rank 1 alone overflows at the first step."""
    from types import SimpleNamespace

    from wash_sweeps.population import Population
    from wash_sweeps.train import population_state

    _join(rank, world, init_file)
    try:
        cfg = TrainConfig.from_preset("tiny", n_members=world, precision="fp16", device="auto")
        ex = DistributedExchange(world)
        pop = Population(cfg, (1, 40), 10, "cpu", members=ex.members)
        pop.agree_max = ex.max_
        pop.scaler.scale(torch.ones(()))  # the scale starts at the first scaled loss
        history = []
        for step in range(3):
            before = pop.params.clone()
            pop.grads.fill_(pop.scaler.get_scale() * 1e-3)  # a scaled gradient of 1e-3
            if step == 0 and rank == 1:
                pop.grads[0, 0] = float("inf")
            pop.scaled_update(0.1)
            history.append([not torch.equal(pop.params, before), pop.scaler.get_scale()])
        state = population_state(
            SimpleNamespace(pop=pop, cfg=cfg, placement=SimpleNamespace(exchange=ex))
        )
        if rank == 0:
            Path(out).write_text(json.dumps({"history": history, "scaler": state["scaler"]}))
        else:
            Path(out + f".{rank}").write_text(json.dumps({"history": history}))
    finally:
        dist.destroy_process_group()


def test_fp16_overflow_on_one_rank_skips_the_step_everywhere(tmp_path):
    """As in one process (one scaler over the population): an inf in any member's gradient skips
    every member's step and halves the scale on every rank, so the ranks keep one scale, which
    the checkpoint (gathered to rank 0) records."""
    out = str(tmp_path / "fp16.json")
    mp.spawn(_fp16_worker, args=(2, str(tmp_path / "rdzv"), out), nprocs=2)
    rank0 = json.loads(Path(out).read_text())
    rank1 = json.loads(Path(out + ".1").read_text())
    assert rank0["history"] == rank1["history"]
    (stepped0, scale0), (stepped1, scale1), (stepped2, scale2) = rank0["history"]
    assert not stepped0 and stepped1 and stepped2  # rank 0's finite step was skipped too
    assert scale0 == 65536.0 / 2 and scale1 == scale2 == scale0
    assert rank0["scaler"]["scale"] == scale2
