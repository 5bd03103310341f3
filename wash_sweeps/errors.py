"""Failures a user sees as one line (the CLI prints them without a traceback).

ConfigError (bad input, exit 2) lives in `config`; these are runs that started and then failed.
"""


class RunFailure(RuntimeError):
    """A run that could not complete for a reason the message states in one line."""


def interrupted(e: BaseException) -> bool:
    """Whether `e` is, or was raised while handling, a KeyboardInterrupt (Ctrl-C). A library's
    cleanup can replace the interrupt: Optuna's journal-file lock, interrupted while it waits,
    releases a lock it does not hold and raises RuntimeError("did not possess lock") instead."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False
