"""Reading a user's YAML file (config, sweep, showcase, params): every problem is one ConfigError
line naming the file and what is wrong, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed contents of `path`, a `what` file ("sweep", "config", ...): missing, a
    directory, unreadable, not UTF-8 or not YAML is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text ({what} file)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({what} file): {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({what} file): {first}") from None
