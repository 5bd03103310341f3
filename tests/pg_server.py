"""A throwaway PostgreSQL 15 cluster on 127.0.0.1 for tests (as root: the cluster runs as the
`postgres` user). `.ci/run` installs the server with apt; here it is installed when missing.

    with PostgresServer(tmp_path / "pg") as pg:
        url = pg.url("optuna")     # postgresql+psycopg2://postgres@127.0.0.1:PORT/optuna
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def pg_bin() -> Path | None:
    """The server binaries of the newest installed PostgreSQL (Debian layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def ensure_installed() -> str | None:
    """None when the server is available; else why it cannot be (for pytest.skip)."""
    if pg_bin() is not None:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "PostgreSQL is not installed and cannot be (needs root and apt-get)"
    r = subprocess.run(
        ["apt-get", "install", "-y", "-q", "postgresql"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if r.returncode != 0 or pg_bin() is None:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        return f"apt-get install postgresql failed: {tail[0]}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.data = self.root / "data"
        self.port = free_port()
        self.bin = pg_bin()

    def _as_postgres(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        self.data.mkdir(parents=True)
        if os.geteuid() == 0:  # initdb refuses root; the directory must be postgres's
            shutil.chown(self.root, "postgres")
            shutil.chown(self.data, "postgres")
            self.root.chmod(0o755)
            for parent in self.root.parents:  # pytest's tmp dirs are 0700: let postgres in
                if parent == Path("/tmp") or parent == Path("/"):
                    break
                parent.chmod(parent.stat().st_mode | 0o005)
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"
        )
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data} -c fsync=off"
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
            str(self.data / "server.log"), "-w", "start",
        )  # fmt: skip
        return self

    def create_db(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres"
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def url(self, db: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        """Immediate shutdown: SIGQUIT to the postmaster, what `pg_ctl -m immediate stop` sends.
        Not pg_ctl itself: it runs as `postgres` and needs to enter the data directory, which it
        no longer can once another pytest session has reset pytest-of-root to 0700."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
            for _ in range(300):  # up to 30 s; the server's children exit with it
                os.kill(pid, 0)
                time.sleep(0.1)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
