"""Which MLflow store a run logs to, and the store-level helpers the MLflow tracker uses.

The tracking URI is `cfg.mlflow_uri`, else MLFLOW_TRACKING_URI, else
`sqlite:///<out_dir>/mlflow.db` with artifacts in `<out_dir>/mlartifacts`. Studies and sweeps
keep their trials in the store of their output root (`shared_store`), beside the standalone runs
there.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..redact import redact_text, redact_url

_MLFLOW_BAD_KEY = re.compile(r"[^\w\-. :/]")  # MLflow keys: alnum, _ - . space : /


def mlflow_uri(cfg: Any) -> str:
    """cfg.mlflow_uri, else MLFLOW_TRACKING_URI, else SQLite in cfg.out_dir."""
    if cfg.mlflow_uri:
        return cfg.mlflow_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(cfg.out_dir).resolve() / 'mlflow.db'}"


def shared_store(cfg: Any) -> dict[str, str]:
    """`{"mlflow_uri": ...}` for runs whose out_dir is moved under a study or sweep directory:
    they keep the store of their output root `cfg.out_dir` (`<out_dir>/mlflow.db`, where the
    standalone runs of that root go), so one `mlflow ui` shows both. {} when MLflow is not
    tracked or its store is named elsewhere (cfg.mlflow_uri, MLFLOW_TRACKING_URI)."""
    from ..config import trackers

    if "mlflow" not in trackers(cfg) or cfg.mlflow_uri:
        return {}
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return {}
    return {"mlflow_uri": mlflow_uri(cfg)}


def stored_uri(recorded: str) -> str:
    """The tracking URI a trackers.json entry names: it is kept with its password as ***, so the
    password comes back from MLFLOW_TRACKING_URI when that is the same store."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    return env if env and redact_url(env) == recorded else recorded


def mlflow_key(key: str) -> str:
    """The metric/param key MLflow accepts: characters it refuses become `_`."""
    return _MLFLOW_BAD_KEY.sub("_", key)[:250]


def prepare_store(uri: str) -> str | None:
    """Ready a store before its first client: a server must answer (`check_server`), a SQLite
    file's directory is created. Returns where a new experiment there keeps its artifacts:
    `mlartifacts` beside a SQLite file, None (the store's own choice) otherwise."""
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        db.parent.mkdir(parents=True, exist_ok=True)
        # must be set when the experiment is created; otherwise it is ./mlruns
        return str(db.parent.resolve() / "mlartifacts")
    return None


def check_server(uri: str, timeout_s: float = 3.0) -> None:
    """Fail at once on a server that does not answer (MLflow would retry for minutes)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            r.read()
    except (OSError, urllib.error.URLError) as e:
        raise ConnectionError(
            f"MLflow server {redact_url(uri)} does not answer: {redact_text(str(e))}"
        ) from None


@contextlib.contextmanager
def sqlite_lock(uri: str) -> Iterator[None]:
    """Serialise MLflow's first use of a SQLite file across processes: workers that open a fresh
    database at once race on its schema migration (3 of 4 failed here without this lock)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(uri[len("sqlite:///") :] + ".lock")
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def experiment_id(client: Any, name: str, artifact_root: str | None) -> str:
    """The id of experiment `name`, created (with `artifact_root`) if it does not exist."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root)
    except Exception:  # another process created it meanwhile
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
