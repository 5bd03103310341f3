"""The transport of a distributed run: `DistributedExchange`, the torch.distributed twin of
`methods.LocalExchange`, one member (or a contiguous slice) per process.

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

import dataclasses
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from ..config import ConfigError
from ..errors import RunFailure
from ..shuffle import ShufflePlan

TIMEOUT_ENV = "WASH_SWEEPS_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


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

    def positions(self, row_length: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(send, recv, local_src, local_dst) as positions in a flattened contiguous
        (n_local, row_length) tensor: one index_select / index_copy_ per tensor. Cached per
        (row length, device): the weights and each optimizer-state tensor reuse them."""
        cache = self.__dict__.setdefault("_positions", {})
        key = (row_length, device)
        if key not in cache:
            pairs = (
                (self.send_rows, self.send_cols),
                (self.recv_rows, self.recv_cols),
                (self.local_src, self.local_cols),
                (self.local_dst, self.local_cols),
            )
            cache[key] = tuple((r * row_length + c).to(device) for r, c in pairs)
        return cache[key]


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
        route = self.route(plan)  # already there when prefetched
        flats = [t.view(-1) for t in tensors]  # contiguous (n_local, P) rows
        send, recv, local_src, local_dst = route.positions(tensors[0].shape[1], flats[0].device)
        # read every source value before writing any: a permutation may chain members
        sent = torch.stack([f.index_select(0, send) for f in flats], 1)
        local = [f.index_select(0, local_src) for f in flats]
        if route.n_cross:
            n_t = len(tensors)
            received = sent.new_empty((sum(route.recv_counts), n_t))
            self._collective(
                "all_to_all_single (WASH values)",
                dist.all_to_all_single,
                received.view(-1),
                sent.view(-1),
                output_split_sizes=[c * n_t for c in route.recv_counts],
                input_split_sizes=[c * n_t for c in route.send_counts],
            )
            for k, f in enumerate(flats):
                f.index_copy_(0, recv, received[:, k])
        for f, values in zip(flats, local, strict=True):
            f.index_copy_(0, local_dst, values)
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

    def max_(self, flag: torch.Tensor) -> None:
        """`flag` becomes its elementwise maximum over every process (fp16: one rank's
        overflow skips the step everywhere)."""
        self._collective(
            "all_reduce (fp16 overflow flag)", dist.all_reduce, flag, dist.ReduceOp.MAX
        )

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
    def prepare(self, plan: ShufflePlan) -> None:
        """Work out this rank's route of `plan` ahead of `permute_` (Wash's prefetch thread
        calls it): the route is a pure function of the plan and the rank, so computing it
        early takes it off the training step's critical path."""
        self.route(plan)

    def route(self, plan: ShufflePlan) -> _Route:
        """This rank's route of `plan`, computed once per plan (kept on the plan)."""
        routes = plan.__dict__.setdefault("_routes", {})
        key = (self.rank, self.world_size, self.n_members)
        if key not in routes:
            routes[key] = self._route(plan)
        return routes[key]

    def _route(self, plan: ShufflePlan) -> _Route:
        """Every rank derives every route from the shared plan, so only values are sent. Both
        ends list the entries (j, i) of a rank pair in row-major order over the receiving
        rank's columns of `perm` (member i of that rank gets member perm[j, i]'s value), so the
        k x N work is a handful of comparisons and one nonzero per peer rank, with no sort."""
        perm, index = plan.perm.cpu(), plan.index.cpu()
        me, mine = self.rank, self.slices[self.rank]
        lo, hi = mine.start, mine.stop
        incoming = perm[:, lo:hi]  # (k, m): what this rank's members receive
        src = self.owner[incoming] if self.world_size < self.n_members else incoming
        send_rows, send_cols, send_counts = [], [], []
        recv_rows, recv_cols, recv_counts = [], [], []
        for q, theirs in enumerate(self.slices):
            if q == me:
                send_counts.append(0)
                recv_counts.append(0)
                continue
            outgoing = perm[:, theirs.start : theirs.stop]  # what rank q's members receive
            j, c = ((outgoing >= lo) & (outgoing < hi)).nonzero(as_tuple=True)
            send_rows.append(outgoing[j, c] - lo)
            send_cols.append(index[j])
            send_counts.append(int(j.numel()))
            j, c = (src == q).nonzero(as_tuple=True)
            recv_rows.append(c)
            recv_cols.append(index[j])
            recv_counts.append(int(j.numel()))
        own = torch.arange(lo, hi, dtype=perm.dtype)
        lj, lc = ((src == me) & (incoming != own)).nonzero(as_tuple=True)
        n_local = self._moves_inside_ranks(perm)
        n_moved = plan.n_moved()
        return _Route(
            send_rows=_cat(send_rows),
            send_cols=_cat(send_cols),
            send_counts=send_counts,
            recv_rows=_cat(recv_rows),
            recv_cols=_cat(recv_cols),
            recv_counts=recv_counts,
            local_src=incoming[lj, lc] - lo,
            local_dst=lc,
            local_cols=index[lj],
            n_cross=n_moved - n_local,
            n_local=n_local,
        )

    def _moves_inside_ranks(self, perm: torch.Tensor) -> int:
        """Moved entries whose source and receiver share a rank (any rank: every rank knows the
        count). None with one member per process."""
        total = 0
        for sl in self.slices:
            if len(sl) > 1:
                block = perm[:, sl.start : sl.stop]
                own = torch.arange(sl.start, sl.stop, dtype=perm.dtype)
                total += int(((block >= sl.start) & (block < sl.stop) & (block != own)).sum())
        return total

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


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
