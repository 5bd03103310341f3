"""Failures a user sees as one line (the CLI prints them without a traceback).

ConfigError (bad input, exit 2) lives in `config`; these are runs that started and then failed.
"""


class RunFailure(RuntimeError):
    """A run that could not complete for a reason the message states in one line."""
