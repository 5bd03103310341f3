"""Provenance as tracker tags: git commit and dirty flag, package versions, device, seeds
(MLflow tags `prov/...`, W&B config `provenance/...`), and MLflow's own source tags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def provenance_tags(cfg: Any, seeds: bool = True) -> dict[str, str]:
    """Git commit + dirty flag, package versions, device, seeds, as flat string tags."""
    from .. import seeding
    from ..results import git_state, versions

    tags = {f"prov/{k}": str(v) for k, v in git_state().items()}
    tags.update({f"prov/version/{k}": v for k, v in versions().items()})
    tags["prov/device"] = _device(cfg)
    if seeds:  # the same seeds the trainer derives (summary.json provenance)
        tags["prov/seed"] = str(cfg.seed)
        init = [seeding.derive(cfg.seed, seeding.INIT, m) for m in range(cfg.n_members)]
        tags["prov/seeds_init"] = json.dumps(init)
    return tags


def _device(cfg: Any) -> str:
    import torch

    from ..results import device_info

    name = getattr(cfg, "device", "cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return device_info(torch.device(name))
    except (RuntimeError, AssertionError):
        return name


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags (mlflow.user, mlflow.source.name/type, mlflow.source.git.*)
    with the git state of the code that runs: this package's checkout, not the entry script's
    (a console script in a venv)."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import mlflow_tags as mt

    from ..results import git_state

    tags = {
        k: v for k, v in resolve_tags({}).items() if k.startswith(("mlflow.source", "mlflow.user"))
    }
    git = git_state()
    if git["git_commit"]:
        tags[mt.MLFLOW_GIT_COMMIT] = git["git_commit"]
        tags[mt.MLFLOW_GIT_DIRTY] = str(bool(git["git_dirty"])).lower()
        tags.update(_git_branch_and_remote())
    return tags


def _git_branch_and_remote() -> dict[str, str]:
    import subprocess

    from mlflow.utils import mlflow_tags as mt

    here = Path(__file__).resolve().parent
    out = {}
    for tag, cmd in (
        (mt.MLFLOW_GIT_BRANCH, ["git", "rev-parse", "--abbrev-ref", "HEAD"]),
        (mt.MLFLOW_GIT_REPO_URL, ["git", "remote", "get-url", "origin"]),
    ):
        try:
            r = subprocess.run(cmd, cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0 and r.stdout.strip():
            out[tag] = _without_credentials(r.stdout.strip())
    return out


def _without_credentials(url: str) -> str:
    """A remote URL without its user-info (https://TOKEN@host/... carries a token as the user)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return url
