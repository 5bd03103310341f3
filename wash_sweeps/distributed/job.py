"""A distributed run as a subprocess job: `run_torchrun(cfg, nproc, workdir, on_epoch=...)` (what
`launch.run_one(..., nproc=K)` does for a sweep trial) starts torchrun, passes each evaluation
to `on_epoch` as the job writes it to metrics.jsonl, and stops the job when `on_epoch` raises
(a pruned trial) or the caller dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..config import TrainConfig
from ..errors import RunFailure
from ..results import RunFiles, read_json
from ..tracking import end_run
from .exchange import TIMEOUT_ENV

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
    files = RunFiles(workdir)
    files.path.mkdir(parents=True, exist_ok=True)
    if not resume:  # a fresh job starts an empty history: never report a stale one
        files.metrics_path.unlink(missing_ok=True)
    log_path = files.path / LOG_NAME
    log_start = log_path.stat().st_size if log_path.exists() else 0  # earlier attempts above
    job_env = {**os.environ, **(env or {})}
    if timeout_s is not None:
        job_env[TIMEOUT_ENV] = str(timeout_s)
    with _config_file(cfg, files.path) as cfg_path:
        if resume:
            args = ["--resume", str(files.path)]
        else:
            args = ["--config", cfg_path, "--workdir", str(files.path)]
        args += ["--mlflow-parent", mlflow_parent_run_id] if mlflow_parent_run_id else []
        args += ["--overwrite"] if overwrite else []
        cmd = torchrun_command(nproc, ["train", "--distributed", *args])
        returncode = _run_job(cmd, job_env, files, log_path, on_epoch, poll_s)
    if returncode != 0:
        raise TorchrunFailure(_failure_message(returncode, log_path, log_start))
    return read_json(files.summary_path)


@contextlib.contextmanager
def _config_file(cfg: TrainConfig, workdir: Path) -> Iterator[str]:
    """The config as a YAML file the job reads, removed when the job has ended."""
    fd, cfg_path = tempfile.mkstemp(dir=workdir, prefix=".launch-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(cfg.to_dict(), f)
        yield cfg_path
    finally:
        Path(cfg_path).unlink(missing_ok=True)


def _run_job(
    cmd: list[str],
    env: dict[str, str],
    files: RunFiles,
    log_path: Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    poll_s: float,
) -> int:
    """Start the job, its output appended to `log_path`, follow it to its end; return its exit
    status. An `on_epoch` that raises, or Ctrl-C, stops the job first."""
    tail = MetricsTail(files.metrics_path)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # stopped as a group, not by the caller's terminal
            preexec_fn=_die_with_parent(),
        )
        try:
            _follow(proc, tail, on_epoch, poll_s)
        except BaseException:  # a pruned trial, Ctrl-C: the job must not outlive its caller
            _stop_group(proc)
            end_run(files.path, "KILLED")  # its MLflow run ends KILLED, not RUNNING
            raise
    return proc.returncode


def _failure_message(returncode: int, log_path: Path, log_start: int) -> str:
    """Our own one-line error (every rank prints it), else torchrun's last error line."""
    with open(log_path, "rb") as f:
        f.seek(log_start)
        lines = f.read().decode(errors="replace").splitlines()
    mark = "wash-sweeps: error:"
    ours = [ln.split(mark, 1)[1] for ln in lines if mark in ln]
    errors = ours or [ln for ln in lines if "Error" in ln] or lines or ["no output"]
    return f"torchrun exited with {returncode}: {errors[-1].strip()} (log: {log_path})"


class MetricsTail:
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
    tail: MetricsTail,
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
