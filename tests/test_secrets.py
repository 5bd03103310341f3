"""Secrets never leave the process: a storage password is never on a worker's command line,
never printed, never in a run directory, the MLflow store or W&B's files; a password in
mlflow_uri is refused before anything is written."""

from __future__ import annotations

import shutil
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
from pg_server import PostgresServer, ensure_installed

from wash_sweeps.cli import main
from wash_sweeps.config import ConfigError, TrainConfig
from wash_sweeps.redact import argv_has_secret, has_password, redact_text, redact_url

PW = "FAKE-pw-7Qz93"


@pytest.mark.parametrize(
    "url, shown",
    [
        (
            f"postgresql+psycopg2://u:{PW}@db:5432/optuna",
            "postgresql+psycopg2://u:***@db:5432/optuna",
        ),
        (f"postgresql://u:{PW}/x@db/optuna", "postgresql://u:***@db/optuna"),
        (f"https://h:5000/?user=u&password={PW}", "https://h:5000/?user=u&password=***"),
        ("postgresql://u@db/optuna", "postgresql://u@db/optuna"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("runs/studies/x/optuna-journal.log", "runs/studies/x/optuna-journal.log"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert PW not in redact_text(f"error: cannot reach {url} (timeout)")
    assert has_password(url) == (PW in url)


def test_a_command_line_with_a_password_is_noticed():
    assert argv_has_secret(["study", "x.yaml", "--storage", f"postgresql://u:{PW}@h/db"])
    assert not argv_has_secret(["study", "x.yaml", "--storage", "postgresql://u@h/db"])


def test_mlflow_uri_with_a_password_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_USERNAME") as e:
        TrainConfig(mlflow_uri=f"http://u:{PW}@127.0.0.1:5000")
    assert PW not in str(e.value)
    out = tmp_path / "runs"
    args = ["train", "--preset", "tiny", "--set", f"mlflow_uri=http://u:{PW}@h:1"]
    assert main([*args, "--set", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "mlflow_uri" in err and PW not in err
    assert not out.exists()  # nothing written


def test_a_bad_storage_url_is_one_line_without_its_password(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(textwrap.dedent(SWEEP))
    url = f"postgresql+psycopg2://u:{PW}@127.0.0.1:1/db"  # nothing listens on port 1
    assert main(["study", str(sweep), "--out", str(tmp_path / "o"), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--storage postgresql+psycopg2://u:***@127.0.0.1:1/db" in err and PW not in err


SWEEP = """
name: secrets
preset: tiny
method: grid
metric: {name: train/loss, goal: minimize}
parameters:
  method: {value: independent}
  lr: {values: [0.05, 0.1]}
"""


class CmdlineWatch:
    """Reads /proc/<pid>/cmdline of every study worker while the study runs."""

    def __init__(self, marker: str):
        self.marker, self.seen, self.stop = marker, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    args = cmdline.read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"--worker" in args and self.marker.encode() in b" ".join(args):
                    self.seen[cmdline.parent.name] = b" ".join(args).decode(errors="replace")
            self.stop.wait(0.2)

    def __enter__(self) -> CmdlineWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.fixture(scope="module")
def postgres():
    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    # not under pytest's base temp: a concurrent pytest run may rotate those away mid-test
    root = Path(tempfile.mkdtemp(prefix="wash-sweeps-pg-"))
    try:
        with PostgresServer(root / "pg") as pg:
            yield pg
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_a_storage_password_never_leaves_the_process(tmp_path, postgres, monkeypatch, capfd):
    # the cluster trusts local connections: any password is accepted, and must never show
    url = postgres.create_db("secrets").replace("postgres@", f"postgres:{PW}@")
    sweep, out = tmp_path / "s.yaml", tmp_path / "study"
    sweep.write_text(textwrap.dedent(SWEEP))
    args = ["study", str(sweep), "--out", str(out), "--storage", url, "--workers", "2"]
    args += ["--track", "mlflow,wandb", "--set", "epochs=1", "--set", "n_train=256"]
    args += ["--set", f"out_dir={out}"]  # the output root: its MLflow store is out/mlflow.db
    monkeypatch.setattr(sys, "argv", ["wash-sweeps", *args])  # what W&B would record
    with CmdlineWatch(str(out)) as watch:
        assert main(args) == 0
    std = capfd.readouterr()
    assert PW not in std.out + std.err
    assert "postgres:***@127.0.0.1" in std.out  # the storage is shown, redacted
    # both workers were seen (and any process they forked before its exec)
    assert {c.rsplit("--seed", 1)[1].strip() for c in watch.seen.values()} == {"0", "1"}
    assert all(PW not in cmd and "--storage" not in cmd for cmd in watch.seen.values())
    assert list(out.rglob("run-*.wandb")) and (out / "mlflow.db").is_file()
    assert files_holding(out, PW) == []  # run dirs, MLflow store and artifacts, W&B files
    assert len(list((out / "trials").glob("trial-*/summary.json"))) == 2
