"""The run directory: everything a run leaves on disk, written before any tracker sees it.

    RUN/config.json       the resolved TrainConfig + derived quantities
    RUN/metrics.jsonl     one JSON record per evaluation: {"step", "epoch", "metrics", "curves"}
    RUN/summary.json      final metrics + provenance (git commit, versions, seeds, device)
    RUN/checkpoint.pt     the whole population (members, optimizer state, step), atomic
    RUN/averaged.pt       the final uniform soup (state_dict of one model): load_averaged(RUN)

Figures and aggregation read these files only, never a tracking server.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

_VERSIONED = (
    "torch",
    "torchvision",
    "numpy",
    "wandb",
    "mlflow",
    "optuna",
    "dvc",
    "mnist1d",
    "wash-sweeps",
)


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(
        Path(path), (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    )


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold run directory `path` for the block: a second process (or a second run in this one)
    that tries to write it at the same time fails at once with one line, instead of both
    appending to one history. The lock is on the directory itself (no lock file), and the
    kernel drops it when the holder dies, even by kill -9."""
    import fcntl

    from .errors import RunFailure

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFailure(
                f"run directory {path} is in use by another run; wait for it to end or "
                "choose another directory (--workdir)"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def git_state(cwd: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the source tree this package runs from (None outside git)."""
    cwd = Path(cwd or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
        return {"git_commit": commit, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def device_info(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    return f"cpu:{cpu} x{os.cpu_count()} threads={torch.get_num_threads()}"


def provenance(device: torch.device, seeds: dict[str, Any]) -> dict[str, Any]:
    return {
        **git_state(),
        "versions": versions(),
        "device": device_info(device),
        "host": socket.gethostname(),
        "seeds": seeds,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class RunFiles:
    """The layout of a run directory, named in this one place, and the read-only way to open
    one (nothing is created or written): `RunFiles(path).summary()`, `.metrics()`."""

    CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"
    CHECKPOINT, AVERAGED, TRACKERS = "checkpoint.pt", "averaged.pt", "trackers.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / self.CONFIG)
    metrics_path = property(lambda self: self.path / self.METRICS)
    summary_path = property(lambda self: self.path / self.SUMMARY)
    checkpoint_path = property(lambda self: self.path / self.CHECKPOINT)
    averaged_path = property(lambda self: self.path / self.AVERAGED)
    trackers_path = property(lambda self: self.path / self.TRACKERS)

    def summary(self) -> dict[str, Any] | None:
        """The finished run's summary, or None when the run has not finished (no summary.json)."""
        return read_json(self.summary_path) if self.summary_path.is_file() else None

    def metrics(self) -> list[dict[str, Any]]:
        """Every evaluation record so far (empty before the first)."""
        return list(iter_jsonl(self.metrics_path)) if self.metrics_path.is_file() else []

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()


class RunDir(RunFiles):
    """A run directory being written (created on opening)."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: dict[str, Any], derived: dict[str, Any]) -> None:
        write_json(self.config_path, {"config": config, "derived": derived})

    def read_config(self) -> dict[str, Any]:
        return read_json(self.config_path)["config"]

    def previous_config(self) -> dict[str, Any] | None:
        """The config of the run written here before (None if none); a file that is not a run's
        config.json is a one-line ConfigError."""
        from .config import ConfigError

        if not self.config_path.exists():
            return None
        try:
            config = read_json(self.config_path)["config"]
            if not isinstance(config, dict):
                raise TypeError("config is not a mapping")
            return config
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"{self.config_path}: not a run's config.json ({type(e).__name__}: "
                f"{str(e)[:120]}); pass --overwrite to replace the run, or remove the file"
            ) from None

    def claim(self, result_config: dict[str, Any], overwrite: bool = False) -> None:
        """Before a fresh run writes here: refuse, in one line, to write over a finished run or a
        run of another config (`result_config`: the fields that change results), unless
        `overwrite`, which removes the old run's files first. A same-config unfinished run is
        simply started again."""
        from .config import RUN_CONTROL, ConfigError

        if overwrite:
            for path in (self.summary_path, self.checkpoint_path, self.averaged_path):
                path.unlink(missing_ok=True)
            return
        previous = self.previous_config()
        what = None
        if previous is not None:
            old = {k: v for k, v in previous.items() if k not in RUN_CONTROL}
            changed = sorted(
                k for k in {*old, *result_config} if old.get(k) != result_config.get(k)
            )
            if changed:
                what = f"a run of another config (fields {', '.join(changed[:5])} differ)"
        if what is None and self.summary_path.exists():
            what = "a finished run"
        if what is not None:
            raise ConfigError(
                f"run directory {self.path} holds {what}; continue it with --resume, choose "
                "another directory (--workdir or run_name), or pass --overwrite to replace it"
            )

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        return list(iter_jsonl(self.metrics_path))

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only records up to `last_step` (a resume continues from a checkpoint)."""
        keep = [r for r in self.read_metrics() if r["step"] <= last_step]
        atomic_write(
            self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep).encode()
        )

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_path, summary)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write `state` (plain tensors, dicts, lists, numbers, strings: what `weights_only`
        loading accepts) atomically: fsynced before the rename, no temp file left behind."""
        self.remove_orphans()
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".checkpoint.")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.checkpoint_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove_orphans(self) -> None:
        """Temp files of writes a killed process never finished (the holder of the directory's
        lock is the only writer, so none of them is in use)."""
        for tmp in self.path.glob(".checkpoint.*"):
            tmp.unlink(missing_ok=True)
        for name in ("config.json", "summary.json", "metrics.jsonl"):
            for tmp in self.path.glob(f".{name}.*"):
                tmp.unlink(missing_ok=True)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint, or None if there is none. Loaded with `weights_only=True`: a file that
        holds anything but tensors and plain containers is refused (ConfigError, one line) and
        none of its code runs."""
        if not self.checkpoint_path.exists():
            return None
        return load_checkpoint_file(self.checkpoint_path)


CHECKPOINT_KEYS = ("config", "population", "state")


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `RunDir.save_checkpoint`, refusing anything else in one line
    (never unpickling code: `weights_only=True`)."""
    from .config import ConfigError

    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for foreign objects, RuntimeError for a bad zip
        raise ConfigError(
            f"checkpoint {path}: not a checkpoint of this tool ({_load_reason(e)}); "
            "nothing in it was run. Delete it to start the run again"
        ) from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise ConfigError(
            f"checkpoint {path}: not a checkpoint of this tool (expected a mapping with keys "
            f"{', '.join(CHECKPOINT_KEYS)}). Delete it to start the run again"
        )
    return ckpt


def load_averaged(run_dir: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The run's averaged model (the final uniform soup), ready for inference: the architecture
    from the run's config.json, the weights and BatchNorm statistics from averaged.pt (read with
    `weights_only=True`: no code runs), in eval mode, without gradients.

        from wash_sweeps import load_averaged
        model = load_averaged("runs/mnist1d-wash-N5-p0.01-s0-1a2b3c")
        predictions = model(x).argmax(1)

    A tracker's copy works too: MLflow's `results/` folder, a W&B `averaged-model-*` artifact."""
    from .config import ConfigError, TrainConfig
    from .models import build_model

    run_dir = Path(run_dir)
    path = run_dir / "averaged.pt"
    if not (run_dir / "config.json").is_file() or not path.is_file():
        raise ConfigError(f"{run_dir}: no config.json and averaged.pt there (not a finished run)")
    saved = read_json(run_dir / "config.json")
    cfg = TrainConfig.from_dict(saved["config"])
    in_shape, n_classes = _model_shape(cfg, saved.get("derived", {}))
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise ConfigError(f"{path}: not an averaged model ({_load_reason(e)})") from None
    model = build_model(cfg, in_shape, n_classes).to(device)
    model.load_state_dict(state)
    for prm in model.parameters():
        prm.requires_grad_(False)
    return model.eval()


def _model_shape(cfg: Any, derived: dict[str, Any]) -> tuple[list[int], int]:
    """Input shape and class count: recorded in config.json's derived quantities; runs written
    before they were recorded read them off their dataset."""
    if "in_shape" in derived and "n_classes" in derived:
        return list(derived["in_shape"]), int(derived["n_classes"])
    from .data import load_data

    data = load_data(cfg, "cpu")
    return list(data.in_shape), data.n_classes


def _load_reason(e: Exception) -> str:
    """torch's refusal in a few words (its message suggests turning weights_only off: never)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "unsupported" in ln.lower():
            return ln[:200]
    return f"{type(e).__name__}: {lines[0][:120]}" if lines else type(e).__name__


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return
    from .config import ConfigError

    with path.open() as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except ValueError:
                raise ConfigError(
                    f"{path}: line {number} is not a JSON record (a damaged file); remove that "
                    "line, or start the run again with --overwrite"
                ) from None
