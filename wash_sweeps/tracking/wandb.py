"""The W&B tracker: one run (offline by default), every file it writes under `<run_dir>/wandb/`.

`cfg.wandb_mode` is `offline` by default (`online` needs WANDB_API_KEY or a ~/.netrc entry, else
a warning and offline). Every file W&B writes goes under `<run_dir>/wandb/`: the run's files
(`wandb.init(dir=)`) and W&B's cache, config and data directories (WANDB_CACHE_DIR,
WANDB_CONFIG_DIR, WANDB_DATA_DIR point there during each call into W&B: `scoped_environ`).
Barrier curves and the final per-member metrics are W&B tables (`curves/barrier`,
`tables/members`); the averaged model is the artifact `averaged-model-<run id>` (type model:
averaged.pt + config.json, for load_averaged). Charts run along `train/step` (define_metric); the
`val/` accuracies keep their best and last value in the summary (`val/` losses: min and last).
System stats are on (WANDB_X_DISABLE_STATS=true turns them off). Read an offline run back with
`wash_sweeps.wandb_reader.read_run`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..redact import argv_has_secret
from .base import Tracker, warn

# W&B summaries of the history keys: the validation accuracies and losses keep their best and
# their last value (the final evaluation's); test/ keys keep only the last (never chosen on)
WANDB_SUMMARIES = {"val/acc*": "max,last", "val/loss*": "min,last"}
WANDB_STEP = "train/step"  # the x axis of every chart: optimizer steps (train/epoch beside it)


def wandb_dirs(run_dir: str | Path) -> dict[str, str]:
    """Where W&B writes for a run: everything under `<run_dir>/wandb/`."""
    root = Path(run_dir).resolve() / "wandb"
    return {
        "WANDB_DIR": str(root.parent),  # W&B adds wandb/: runs land in <root>/offline-run-*
        "WANDB_CACHE_DIR": str(root / ".cache"),
        "WANDB_CONFIG_DIR": str(root / ".config"),
        "WANDB_DATA_DIR": str(root / ".data"),
    }


@contextlib.contextmanager
def scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in the environment for the length of the block, then what was there before.

    W&B has no setting for its cache, config and data directories: it reads them from the
    environment when it starts its service (at the process's first `wandb.init`) and when it
    stages an artifact. A study run and its trials are open at once in one process, so each run
    points them into its own directory only while it calls W&B, never for the whole process."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _in_run_dirs(method: Callable[..., None]) -> Callable[..., None]:
    """A WandbTracker method that runs with its run's W&B directories (`scoped_environ`): W&B
    stages tables and artifacts in its data directory."""

    @functools.wraps(method)
    def in_dirs(self: WandbTracker, *args: Any, **kwargs: Any) -> None:
        with scoped_environ(self.dirs):
            method(self, *args, **kwargs)

    return in_dirs


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _mode(cfg: Any) -> str:
    if cfg.wandb_mode == "online" and not _wandb_has_key():
        warn("wandb_mode=online but no WANDB_API_KEY (or ~/.netrc entry): logging offline")
        return "offline"
    return cfg.wandb_mode


class WandbTracker(Tracker):
    """One W&B run (offline by default), files under `<run_dir>/wandb/`."""

    name = "wandb"

    def __init__(
        self,
        cfg: Any,
        run_dir: Path,
        run_name: str,
        job_type: str,
        previous: Mapping[str, Any] | None = None,
    ):
        self.dirs = wandb_dirs(run_dir)
        for d in self.dirs.values():
            Path(d).mkdir(parents=True, exist_ok=True)
        mode = _mode(cfg)
        import wandb

        self.wandb, self.mode = wandb, mode
        # only an online run can be continued (see the tracking package doc)
        same = bool(previous) and previous.get("mode") == mode == "online"
        with scoped_environ(self.dirs):
            self.run = self._init(cfg, run_name, job_type, previous if same else None)
        _define_metrics(self.run)
        self.step = 0
        self.logged: set[str] = set()  # history keys: their summaries follow define_metric
        # steps below this are already in a continued run (W&B drops them with a warning)
        self.first_step = int(getattr(self.run, "starting_step", 0) or 0) if same else 0
        if previous and not same:
            self.run.config.update({"resumed_from": previous.get("id", "")})

    def _init(
        self, cfg: Any, run_name: str, job_type: str, previous: Mapping[str, Any] | None
    ) -> Any:
        """A new W&B run, or the online run `previous` continued."""
        wandb = self.wandb
        return wandb.init(
            id=previous["id"] if previous else None,
            resume="allow" if previous else None,
            project=cfg.project,
            entity=cfg.wandb_entity or None,
            group=cfg.group or None,
            job_type=job_type,
            tags=[t.strip() for t in cfg.tags.split(",") if t.strip()] or None,
            name=run_name,
            dir=self.dirs["WANDB_DIR"],
            mode=self.mode,
            reinit="create_new",  # a study run and its trials can be open at once
            # system stats (CPU, memory, GPU) stay on: WANDB_X_DISABLE_STATS=true turns them off
            settings=wandb.Settings(
                console="off",
                init_timeout=60,
                # W&B's metadata holds the command line: not recorded when it holds a password
                x_disable_meta=argv_has_secret(sys.argv),
            ),
        )

    def ref(self):
        # path: entity/project/id online (project/id offline), what wandb.Api().run() takes
        return {"id": self.run.id, "mode": self.mode, "path": self.run.path}

    @_in_run_dirs
    def log_params(self, params):
        self.run.config.update(dict(params), allow_val_change=True)

    @_in_run_dirs
    def log_metrics(self, metrics, step):
        if step < self.first_step:
            return
        self.step = max(self.step, step)
        self.logged.update(metrics)
        self.run.log(dict(metrics), step=step)

    @_in_run_dirs
    def log_curves(self, curves, step):
        if step < self.first_step:
            return
        rows = [
            [k, _alpha(i, len(c)), float(v)] for k, c in curves.items() for i, v in enumerate(c)
        ]
        table = self.wandb.Table(columns=["curve", "alpha", "loss"], data=rows)
        self.step = max(self.step, step)
        self.run.log({"curves/barrier": table}, step=step)

    @_in_run_dirs
    def log_summary(self, summary):
        # a key of the history keeps the summary define_metric gives it (best and last of the
        # val/ accuracies and losses, else last): only the keys never logged are set here
        skip = self.logged | {"config"}
        self.run.summary.update({k: v for k, v in summary.items() if k not in skip})
        members = member_table(summary)
        if members:
            cols = ["member", *sorted({k for row in members.values() for k in row})]
            data = [[i, *(row.get(c) for c in cols[1:])] for i, row in sorted(members.items())]
            self.run.log(
                {"tables/members": self.wandb.Table(columns=cols, data=data)}, step=self.step
            )

    @_in_run_dirs
    def log_artifact(self, path, name=None):
        path = Path(path)
        if name is None:  # result files: saved with the run's files
            self.run.save(str(path), base_path=str(path.parent), policy="now")
            return
        art = self.wandb.Artifact(name, type="model" if "model" in name else "result")
        art.add_file(str(path))
        self.run.log_artifact(art)

    @_in_run_dirs
    def log_model(self, run_dir, input_example):
        # one name per run (W&B versions artifacts by name: a shared name would pile the models
        # of every run and trial into one history); with config.json it is a run directory
        # that results.load_averaged reads
        run_dir = Path(run_dir)
        art = self.wandb.Artifact(f"averaged-model-{self.run.id}", type="model")
        art.add_file(str(run_dir / "averaged.pt"))
        art.add_file(str(run_dir / "config.json"))
        self.run.log_artifact(art)

    @_in_run_dirs
    def set_tags(self, tags):
        # provenance lives in the run config (W&B tags are short labels, not key-value pairs)
        self.run.config.update({k.replace("prov/", "provenance/"): v for k, v in tags.items()})

    @_in_run_dirs
    def finish(self, status="FINISHED"):
        # a run stopped by its sweep (KILLED) ended as asked: exit 0, the status in the summary
        self.run.summary["run/status"] = status
        self.run.finish(exit_code=0 if status in ("FINISHED", "KILLED") else 1)


def _define_metrics(run: Any) -> None:
    run.define_metric(WANDB_STEP)
    run.define_metric("*", step_metric=WANDB_STEP)
    for glob, summary in WANDB_SUMMARIES.items():
        run.define_metric(glob, step_metric=WANDB_STEP, summary=summary)


def _alpha(i: int, n: int) -> float:
    return i / (n - 1) if n > 1 else 0.0


def member_table(summary: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """`member/<i>/<name>` keys -> {i: {name: value}}."""
    out: dict[int, dict[str, Any]] = {}
    for key, value in summary.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "member" and parts[1].isdigit():
            out.setdefault(int(parts[1]), {})[parts[2]] = value
    return out
