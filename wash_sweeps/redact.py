"""Secrets never leave the process: the one place that hides a password in a URL or a text.

    redact_url("postgresql+psycopg2://u:PW@db:5432/optuna")  # 'postgresql+psycopg2://u:***@db:5432/optuna'
    redact_text("could not connect to postgresql://u:PW@db/x")  # the same inside any message

Storage URLs reach study workers through the environment (`STORAGE_ENV`), never their command
line; whatever is printed, logged or recorded goes through `redact_url` / `redact_text` first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
STORAGE_ENV = "WASH_SWEEPS_STORAGE"  # an Optuna storage URL, read when --storage is not given
_SECRET_QUERY_KEYS = ("password", "pass", "passwd", "pwd", "secret", "token", "api_key")
# scheme://user:PASSWORD@ inside any text (the password may hold anything but @ and space; a
# host:port/path@x is masked too: hiding too much is the safe side)
_USERINFO = re.compile(r"([A-Za-z][\w+.-]*://[^\s:/@]*:)([^\s@]+)(@)")
_QUERY = re.compile(r"([?&](?:" + "|".join(_SECRET_QUERY_KEYS) + r")=)([^&\s]+)", re.IGNORECASE)


def has_password(url: str) -> bool:
    """Whether `url` carries a password (in user:password@ or a ?password= query)."""
    return redact_url(url) != url


def redact_url(url: str) -> str:
    """`url` with its password (user:PW@ or ?password=PW) replaced by ***; other text as is."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if not parts.scheme or not parts.netloc:
        return redact_text(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            masked = [(k, MASK if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs]
            query = urlencode(masked, safe="*")
    # a password urlsplit misreads (one holding '/') is still caught by the text pattern
    return redact_text(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def redact_text(text: str) -> str:
    """Every URL password inside `text` (an error message, a command line) replaced by ***."""
    return _QUERY.sub(rf"\g<1>{MASK}", _USERINFO.sub(rf"\g<1>{MASK}\g<3>", text))


def argv_has_secret(argv: Sequence[str]) -> bool:
    """Whether a command line holds a URL password (W&B must then not record it)."""
    return any(redact_text(a) != a for a in argv)
