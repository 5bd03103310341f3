"""One line to a stream in one write: lines from concurrent processes (study workers, sweep
agents, torchrun ranks) sharing a pipe never interleave mid-line.

`print(line, flush=True)` writes the text and its newline separately whenever the stream writes
through (PYTHONUNBUFFERED=1, as on CI): two workers' writes can then meet on one line. A single
`write` of fewer than PIPE_BUF (4096) bytes to a pipe is atomic (POSIX)."""

from __future__ import annotations

import sys
from typing import TextIO


def say(line: str, stream: TextIO | None = None) -> None:
    """Write `line` and its newline to `stream` (stdout by default) in one call, then flush."""
    out = sys.stdout if stream is None else stream
    out.write(line + "\n")
    out.flush()
