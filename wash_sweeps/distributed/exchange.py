"""WASH and its baselines over torch.distributed: one member (or a contiguous slice) per process.

One machine, four processes (gloo on CPU, NCCL on GPUs, chosen from the config's device):

    torchrun --standalone --nproc-per-node=4 -m wash_sweeps train --distributed \\
        --preset mnist1d-fast --set n_members=4

Several machines: the same command on each, with torchrun's rendezvous flags
(`--nnodes=2 --node-rank=K --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT`). A sweep trial runs
one distributed training as a job, `run_torchrun(cfg, nproc, workdir, on_epoch=...)` (what
`wash-sweeps study --nproc-per-trial K` does): each evaluation reaches `on_epoch` as the job writes
it, and an `on_epoch` that raises (a pruned trial) stops the job.

The transport is `DistributedExchange`, the torch.distributed twin of `methods.LocalExchange`:
- WASH (`permute_`): every process draws the same plan from the shared (seed, step) generator, so
  only values travel: one `all_to_all_single` with uneven splits per call, all tensors of the
  call (weights, optimizer state) packed together; no indices, no permutations.
- PAPA (`mean`): an all-reduce (sum) of the local rows, divided by N.
- PAPA-2 (`rows_from`): each process receives the rows of the pair members it does not hold, in
  one `all_to_all_single` of whole rows (the pairs come from the shared (seed, epoch) generator).
- Evaluation and checkpoints (`gather`): the rows go to rank 0, the only process that writes.

A process that dies makes the others fail with `PeerFailure` (one line) instead of hanging: the
process group has a timeout (`WASH_SWEEPS_DIST_TIMEOUT_S`, default 1800 s; it must exceed rank 0's
longest evaluation, during which the other ranks wait).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from .config import ConfigError, TrainConfig
from .errors import RunFailure
from .results import RunDir, read_json
from .shuffle import ShufflePlan

TIMEOUT_ENV = "WASH_SWEEPS_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class PeerFailure(RunFailure):
    """A collective failed: another process died, or stopped answering within the timeout."""


def timeout_seconds(timeout_s: float | None = None) -> float:
    """The process-group timeout: the argument, else $WASH_SWEEPS_DIST_TIMEOUT_S, else 1800 s."""
    if timeout_s is not None:
        return float(timeout_s)
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def member_slices(n_members: int, world_size: int) -> list[range]:
    """Contiguous member ranges per rank; the first N mod W ranks hold one member more."""
    if n_members < world_size:
        raise ConfigError(
            f"n_members={n_members} is smaller than the world size {world_size}: "
            "every process needs at least one member"
        )
    base, extra = divmod(n_members, world_size)
    starts = [r * base + min(r, extra) for r in range(world_size + 1)]
    return [range(starts[r], starts[r + 1]) for r in range(world_size)]


@dataclasses.dataclass
class ExchangeStats:
    """What this process passed to the collectives (values, not bytes) and the time it took."""

    changed_values: int = 0  # values that changed owner, whole population (= LocalExchange)
    sent_values: int = 0  # all_to_all_single: values this rank sent to other ranks
    allreduce_values: int = 0  # all_reduce: values this rank passed in
    gather_values: int = 0  # gather to rank 0: values this rank passed in (evaluation)
    seconds: float = 0.0  # WASH/PAPA exchanges, waiting for slower ranks included (not eval)


@dataclasses.dataclass(frozen=True)
class _Route:
    """Where the values of one plan go, seen from one rank (rows are local row numbers)."""

    send_rows: torch.Tensor  # values this rank sends, grouped by destination rank
    send_cols: torch.Tensor
    send_counts: list[int]  # entries per destination rank
    recv_rows: torch.Tensor  # where received values land, grouped by source rank
    recv_cols: torch.Tensor
    recv_counts: list[int]
    local_src: torch.Tensor  # moves inside this rank: (row, col) <- (src row, col)
    local_dst: torch.Tensor
    local_cols: torch.Tensor
    n_cross: int  # entries crossing between any two ranks (every rank knows it)
    n_local: int  # entries moving inside any rank


class DistributedExchange:
    """The `Exchange` of `methods` over the default torch.distributed process group."""

    def __init__(self, n_members: int, timeout_s: float | None = None):
        if not dist.is_initialized():
            raise RuntimeError("DistributedExchange needs an initialised process group")
        self.n_members = n_members
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.backend = str(dist.get_backend())
        self.timeout_s = timeout_seconds(timeout_s)
        self.slices = member_slices(n_members, self.world_size)
        self.members = list(self.slices[self.rank])
        self.owner = torch.tensor([r for r, s in enumerate(self.slices) for _ in s])
        self.stats = ExchangeStats()

    # --- the three operations of the Exchange protocol -----------------------------------------
    def permute_(self, tensors: Sequence[torch.Tensor], plan: ShufflePlan) -> int:
        if not tensors or plan.n_selected == 0:
            return 0
        start = time.perf_counter()
        route = self._route(plan)
        device = tensors[0].device
        to = dict(device=device)
        # read every source value before writing any: a permutation may chain members
        sent = torch.stack(
            [t[route.send_rows.to(**to), route.send_cols.to(**to)] for t in tensors], 1
        )
        local = [t[route.local_src.to(**to), route.local_cols.to(**to)] for t in tensors]
        if route.n_cross:
            n_t = len(tensors)
            received = sent.new_empty((sum(route.recv_counts), n_t))
            self._collective(
                "all_to_all_single (WASH values)",
                dist.all_to_all_single,
                received.view(-1),
                sent.reshape(-1),
                output_split_sizes=[c * n_t for c in route.recv_counts],
                input_split_sizes=[c * n_t for c in route.send_counts],
            )
            rows, cols = route.recv_rows.to(**to), route.recv_cols.to(**to)
            for k, t in enumerate(tensors):
                t[rows, cols] = received[:, k]
        for t, values in zip(tensors, local, strict=True):
            t[route.local_dst.to(**to), route.local_cols.to(**to)] = values
        self.stats.seconds += time.perf_counter() - start
        self.stats.sent_values += sent.numel()
        # with one member per process every changed value crosses the network; members that
        # share a process swap in memory, but they count: bytes stay the single-process count
        changed = (route.n_cross + route.n_local) * len(tensors)
        self.stats.changed_values += changed
        return changed

    def mean(self, local: torch.Tensor) -> torch.Tensor:
        total = local.sum(0)
        start = time.perf_counter()
        self._collective("all_reduce (PAPA mean)", dist.all_reduce, total, dist.ReduceOp.SUM)
        self.stats.seconds += time.perf_counter() - start
        self.stats.allreduce_values += total.numel()
        return total.div_(self.n_members)

    def gather(self, local: torch.Tensor) -> torch.Tensor | None:
        """All N rows in member order on rank 0 (None elsewhere). Slices may differ by one row:
        each rank pads to the largest, since gather needs equal shapes."""
        shape, home = tuple(local.shape[1:]), local.device
        if local[0].numel() == 0:  # nothing to send (e.g. no BatchNorm buffers)
            return local.new_empty((self.n_members, *shape)) if self.rank == 0 else None
        rows = max(len(s) for s in self.slices)
        # NCCL sends CUDA tensors only (checkpoints gather CPU copies)
        device = torch.device("cuda") if self.backend == "nccl" else home
        padded = torch.zeros((rows, *shape), dtype=local.dtype, device=device)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in self.slices] if self.rank == 0 else None
        self._collective("gather (evaluation)", dist.gather, padded, parts, dst=0)
        self.stats.gather_values += padded.numel()
        if parts is None:
            return None
        rows_in_order = [part[: len(s)] for part, s in zip(parts, self.slices, strict=True)]
        return torch.cat(rows_in_order).to(home)

    def rows_from(self, local: torch.Tensor, sources: Sequence[int]) -> torch.Tensor:
        """Row r becomes member sources[m]'s row (m = this rank's r-th member): rows held here
        are copied, the others come in one all_to_all_single of whole rows (PAPA-2). Both ends
        list a rank pair's rows by receiving member, so no index travels."""
        me, lo = self.rank, self.slices[self.rank].start
        src_rank = [int(self.owner[s]) for s in sources]
        dst_rank = self.owner.tolist()
        out = local.clone()
        for k in self.members:
            if src_rank[k] == me:
                out[k - lo] = local[sources[k] - lo]
        if all(src_rank[k] == dst_rank[k] for k in range(self.n_members)):
            return out  # every row is where it is needed: nothing to send
        start = time.perf_counter()
        # receivers in member order: grouped by destination rank, since slices are in order
        send = [k for k in range(self.n_members) if src_rank[k] == me and dst_rank[k] != me]
        recv = sorted((k for k in self.members if src_rank[k] != me), key=lambda k: src_rank[k])
        row = local[0].numel()
        sent = torch.stack([local[sources[k] - lo].reshape(-1) for k in send]) if send else None
        received = local.new_empty((len(recv), row))
        ranks = range(self.world_size)
        self._collective(
            "all_to_all_single (PAPA-2 rows)",
            dist.all_to_all_single,
            received.view(-1),
            sent.view(-1) if sent is not None else local.new_empty(0),
            output_split_sizes=[row * sum(src_rank[k] == q for k in recv) for q in ranks],
            input_split_sizes=[row * sum(dst_rank[k] == q for k in send) for q in ranks],
        )
        for k, values in zip(recv, received, strict=True):
            out[k - lo] = values.view(local.shape[1:])
        self.stats.seconds += time.perf_counter() - start
        self.stats.sent_values += len(send) * row
        return out

    # --- helpers -------------------------------------------------------------------------------
    def _route(self, plan: ShufflePlan) -> _Route:
        """Every rank derives every route from the shared plan, so only values are sent. Both
        ends list the entries (j, i) of a rank pair in the same row-major order."""
        perm, index, me = plan.perm.cpu(), plan.index.cpu(), self.rank
        receiver = torch.arange(self.n_members).expand_as(perm)
        moved = perm != receiver
        src, dst = self.owner[perm], self.owner[receiver]
        lo = self.slices[me].start

        def pick(mask: torch.Tensor, rank_of: torch.Tensor):
            j, i = mask.nonzero(as_tuple=True)
            order = torch.sort(rank_of[j, i], stable=True).indices  # group by peer rank
            j, i = j[order], i[order]
            counts = torch.bincount(rank_of[j, i], minlength=self.world_size).tolist()
            return j, i, counts

        sj, si, send_counts = pick(moved & (src == me) & (dst != me), dst)
        rj, ri, recv_counts = pick(moved & (dst == me) & (src != me), src)
        lj, li = (moved & (src == me) & (dst == me)).nonzero(as_tuple=True)
        return _Route(
            send_rows=perm[sj, si] - lo,
            send_cols=index[sj],
            send_counts=send_counts,
            recv_rows=ri - lo,
            recv_cols=index[rj],
            recv_counts=recv_counts,
            local_src=perm[lj, li] - lo,
            local_dst=li - lo,
            local_cols=index[lj],
            n_cross=int((moved & (src != dst)).sum()),
            n_local=int((moved & (src == dst)).sum()),
        )

    def _collective(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            fn(*args, **kwargs)
        except RuntimeError as e:  # DistBackendError, gloo's "Connection closed by peer", ...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            first = re.sub(r"^\[[^\]]*\] ", "", first)  # gloo's source location
            raise PeerFailure(
                f"rank {self.rank}/{self.world_size}: {what} failed after "
                f"{time.perf_counter() - start:.0f} s: another process died or did not answer "
                f"within the {self.timeout_s:.0f} s timeout ({first[:200]})"
            ) from e

    def totals(self) -> dict[str, float]:
        """Counters summed over ranks (a collective), as summary entries in bytes."""
        s = self.stats
        t = torch.tensor([s.sent_values, s.allreduce_values], dtype=torch.float64)
        slowest = torch.tensor([s.seconds], dtype=torch.float64)
        if self.backend == "nccl":
            t, slowest = t.cuda(), slowest.cuda()
        self._collective("all_reduce (counters)", dist.all_reduce, t, dist.ReduceOp.SUM)
        self._collective("all_reduce (counters)", dist.all_reduce, slowest, dist.ReduceOp.MAX)
        sent, reduced = t.tolist()
        w = self.world_size
        elem = 4  # float32 rows
        # a ring all-reduce of d values puts 2 (W-1)/W d on the wire per rank
        ring = reduced * 2 * (w - 1) / w
        return {
            "dist/world_size": w,
            "dist/backend": self.backend,
            "dist/members_per_rank_max": max(len(sl) for sl in self.slices),
            "dist/all_to_all_bytes_total": sent * elem,
            "dist/allreduce_wire_bytes_total": ring * elem,
            "dist/network_bytes_total": (sent + ring) * elem,
            "dist/exchange_s_max_rank": float(slowest.item()),
        }


# --- process group and the distributed run ---------------------------------------------------


def backend_for(cfg: TrainConfig) -> str:
    """NCCL when the run trains on CUDA, gloo otherwise."""
    from .train import resolve_device

    return "nccl" if resolve_device(cfg.device).type == "cuda" else "gloo"


def init_process_group(cfg: TrainConfig, timeout_s: float | None = None) -> bool:
    """Join the group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT). Returns whether this call created it (and so must destroy it)."""
    if dist.is_initialized():
        return False
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ConfigError(
            f"--distributed runs under torchrun ({', '.join(missing)} not set): "
            "torchrun --standalone --nproc-per-node=N -m wash_sweeps train --distributed ..."
        )
    backend = backend_for(cfg)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    timeout = datetime.timedelta(seconds=timeout_seconds(timeout_s))
    dist.init_process_group(backend, timeout=timeout)
    return True


def _shared_checkpoint(cfg: TrainConfig, workdir: str | Path | None) -> dict[str, Any] | None:
    """Rank 0 reads the run's checkpoint and sends it to every rank (no shared disk needed)."""
    box = [None]
    if dist.get_rank() == 0:
        box[0] = RunDir(cfg.run_dir(workdir)).load_checkpoint()
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train_distributed(
    cfg: TrainConfig,
    workdir: str | Path | None = None,
    resume: bool = False,
    timeout_s: float | None = None,
    mlflow_parent_run_id: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """Train `cfg` with this process's slice of members. Returns the summary on rank 0 (which
    alone writes the run directory and talks to trackers), None on the other ranks.
    `mlflow_parent_run_id`: nest rank 0's MLflow run under a study's run (a sweep trial)."""
    from .tracking import make_tracker
    from .train import train_and_evaluate

    created = init_process_group(cfg, timeout_s)
    try:
        exchange = DistributedExchange(cfg.n_members, timeout_s)
        rank = exchange.rank
        checkpoint = _shared_checkpoint(cfg, workdir) if resume else None
        tracker = None
        if rank == 0 and mlflow_parent_run_id:
            tracker = make_tracker(cfg, cfg.run_dir(workdir), mlflow_parent_run_id, resume=resume)
        summary = train_and_evaluate(
            cfg,
            workdir,
            tracker=tracker,
            exchange=exchange,
            members=exchange.members,
            writer=rank == 0,
            checkpoint=checkpoint,
            overwrite=overwrite,
        )
        totals = exchange.totals()
        if rank != 0:
            return None
        summary.update(totals)
        RunDir(summary["run_dir"]).write_summary(summary)
        return summary
    finally:
        if created:
            dist.destroy_process_group()


RDZV_HOST_ENV = "WASH_SWEEPS_RDZV_HOST"  # the address a job's rendezvous uses (127.0.0.1)


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, args: Sequence[str], nnodes: int = 1) -> list[str]:
    """The torchrun command line of `wash-sweeps <args>` on one machine: the rendezvous and the
    workers' MASTER_ADDR on the loopback address (WASH_SWEEPS_RDZV_HOST to change it), not
    `--standalone`'s hostname lookup. (torch's TCPStore itself listens on every interface, which
    no torchrun flag changes; the job's peers all connect over loopback.)"""
    host = os.environ.get(RDZV_HOST_ENV, "127.0.0.1")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={host}:{_free_port(host)}",
        f"--rdzv-id=wash-{os.getpid()}-{time.monotonic_ns()}",
        f"--local-addr={host}",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        "-m",
        "wash_sweeps",
        *args,
    ]


class TorchrunFailure(RunFailure):
    """A torchrun job (a sweep's distributed trial) that exited with an error."""


LOG_NAME = "torchrun.log"  # in the run directory: the job's stdout and stderr


def run_torchrun(
    cfg: TrainConfig,
    nproc: int,
    workdir: str | Path,
    resume: bool = False,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    mlflow_parent_run_id: str | None = None,
    poll_s: float = 0.5,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run one distributed training of `cfg` under torchrun as a subprocess (what a sweep trial
    does) and return its summary.json. `resume`: continue the checkpoint in `workdir` (written
    by a distributed or a single-process run of the same config).

    `on_epoch(epoch, metrics)` is called for each evaluation the job appends to metrics.jsonl
    (read as it grows, every `poll_s` s). If it raises (a pruned trial), the job is stopped
    (SIGTERM to its process group, SIGKILL 30 s later), its MLflow run is marked KILLED, and the
    exception is re-raised. The job's output goes to `<workdir>/torchrun.log`; a failed job
    raises TorchrunFailure with its last error line. `overwrite`: replace a finished run or a
    run of another config in `workdir`."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    fd, cfg_path = tempfile.mkstemp(dir=workdir, prefix=".launch-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f)
    args = (
        ["--resume", str(workdir)] if resume else ["--config", cfg_path, "--workdir", str(workdir)]
    )
    if mlflow_parent_run_id:
        args += ["--mlflow-parent", mlflow_parent_run_id]
    if overwrite:
        args.append("--overwrite")
    cmd = torchrun_command(nproc, ["train", "--distributed", *args])
    full_env = {**os.environ, **(env or {})}
    if timeout_s is not None:
        full_env[TIMEOUT_ENV] = str(timeout_s)
    metrics = workdir / "metrics.jsonl"
    if not resume:  # a fresh job starts an empty history: never report a stale one
        metrics.unlink(missing_ok=True)
    log_path = workdir / LOG_NAME
    log_start = log_path.stat().st_size if log_path.exists() else 0  # earlier attempts above
    try:
        tail = _MetricsTail(metrics)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,  # stopped as a group, not by the caller's terminal
                preexec_fn=_die_with_parent(),
            )
            try:
                _follow(proc, tail, on_epoch, poll_s)
            except BaseException:  # a pruned trial, Ctrl-C: the job must not outlive its caller
                _stop_group(proc)
                _mark_killed(workdir)
                raise
    finally:
        Path(cfg_path).unlink(missing_ok=True)
    if proc.returncode != 0:
        with open(log_path, "rb") as f:
            f.seek(log_start)
            lines = f.read().decode(errors="replace").splitlines()
        # our own one-line error first (every rank prints it), else torchrun's last error
        mark = "wash-sweeps: error:"
        ours = [ln.split(mark, 1)[1] for ln in lines if mark in ln]
        errors = ours or [ln for ln in lines if "Error" in ln] or lines or ["no output"]
        raise TorchrunFailure(
            f"torchrun exited with {proc.returncode}: {errors[-1].strip()} (log: {log_path})"
        )
    return read_json(workdir / "summary.json")


class _MetricsTail:
    """The records of a metrics.jsonl not seen before (complete lines only).

    The file is read whole at each poll (it is small, and a resume replaces it by a truncated
    copy, so an offset would not survive). Epochs present when the job starts are not new: a
    resumed job truncates the file to its checkpoint and appends again epochs whose records the
    caller already had."""

    def __init__(self, path: Path):
        self.path = path
        self.stamp: tuple[int, int, int] | None = None
        self.seen: set[int] = set()
        self.new()

    def new(self) -> list[dict[str, Any]]:
        try:
            stat = self.path.stat()
            stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if stamp == self.stamp:  # unchanged since the last read
                return []
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        self.stamp = stamp
        out = []
        for line in data.split(b"\n")[:-1]:  # the last piece is a line still being written
            rec = json.loads(line) if line.strip() else None
            if rec is not None and rec["epoch"] not in self.seen:
                self.seen.add(rec["epoch"])
                out.append(rec)
        return out


def _follow(
    proc: subprocess.Popen,
    tail: _MetricsTail,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    poll_s: float,
) -> None:
    while True:
        done = proc.poll() is not None
        if on_epoch is not None:
            for rec in tail.new():
                on_epoch(rec["epoch"], rec["metrics"])
        if done:
            return
        time.sleep(poll_s)


def _die_with_parent() -> Callable[[], None] | None:
    """For the job (Linux): SIGTERM when its caller dies, even by kill -9, so a retried trial
    never shares its directory with an orphaned job (torchrun then stops its workers). prctl is
    looked up here, in the caller: the forked child only calls it (no import, no allocation)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # no prctl in this libc: the job is only stopped by us
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)
    return lambda: prctl(pr_set_pdeathsig, sigterm)


def _stop_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM to torchrun and its workers (their own session), SIGKILL if they linger."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(OSError):  # gone already
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers torchrun left behind


def _mark_killed(workdir: Path) -> None:
    """The stopped job's MLflow run (named in trackers.json) ends KILLED, not RUNNING."""
    from .tracking import TRACKERS_FILE, stored_uri

    path = workdir / TRACKERS_FILE
    with contextlib.suppress(Exception):  # best effort: the local results are what count
        ref = json.loads(path.read_text())["mlflow"]
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=stored_uri(ref["uri"])).set_terminated(ref["run_id"], "KILLED")
