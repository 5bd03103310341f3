"""A cache of generated datasets: numpy arrays in one `.npz` file per generator and arguments.

Generating MNIST-1D takes seconds and gives the same arrays every time for the same arguments,
so the first run writes them under the user's cache directory and later runs read them back:

    arrays = cached_arrays("mnist1d", args, make)   # make() -> {"x": ..., "y": ...}

Where: `$WASH_SWEEPS_CACHE` if set, else `$XDG_CACHE_HOME/wash-sweeps`, else
`~/.cache/wash-sweeps`. The file name holds a hash of (name, arguments, format), so other
arguments never read a stale file. Files are written to a temporary name and renamed (a killed
writer leaves no half file under the real name), read with `allow_pickle=False` (a planted file
runs no code), and a file that does not read back is regenerated and replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .results import atomic_write

CACHE_ENV = "WASH_SWEEPS_CACHE"
_FORMAT = 1  # bump when what a cached file holds changes: older files are then never read


def cache_dir() -> Path:
    """The directory cached datasets live in (not created here)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wash-sweeps"


def cache_key(name: str, args: Mapping[str, Any]) -> str:
    """16 hex digits of sha256 over (name, arguments, format); arguments must be JSON values."""
    text = json.dumps({"name": name, "args": dict(args), "format": _FORMAT}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(name: str, args: Mapping[str, Any]) -> Path:
    return cache_dir() / f"{name}-{cache_key(name, args)}.npz"


def _read(path: Path, keys: frozenset[str]) -> dict[str, np.ndarray] | None:
    """The arrays of `path`, or None if it is missing, unreadable or holds other keys."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if set(f.files) != keys:
                return None
            return {k: f[k] for k in f.files}  # read every member now: a bad CRC shows here
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError):
        return None  # truncated, overwritten, not an npz (np.load sniffs and fails variously)


def _write(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def cached_arrays(
    name: str,
    args: Mapping[str, Any],
    keys: Sequence[str],
    make: Callable[[], Mapping[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """`make()`'s arrays (named `keys`), from the cache when a readable file for (name, args)
    holding exactly those keys is there; else made, written to the cache (unless the directory
    is not writable: a read-only home still trains) and returned."""
    path = cache_path(name, args)
    arrays = _read(path, frozenset(keys))
    if arrays is not None:
        return arrays
    arrays = {k: np.asarray(v) for k, v in make().items()}
    try:
        _write(path, arrays)
    except OSError as e:
        warnings.warn(f"dataset cache {path} not written: {e}", stacklevel=2)
    return arrays
