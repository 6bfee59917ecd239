"""Which database holds a run's shared state: the embedded SQLite file, or PostgreSQL.

One setting chooses: a connection URL in the environment. `POTSTILL_DATABASE_URL` by default; a
spec can name another variable (`store.url_env`), never the URL itself, so no password lands in
a spec, a manifest or a log. Unset or empty: the run's `potstill.db` (SQLite, WAL).

`Store(path)` (store.py) asks `database_url()` and returns a `PgStore` (store.py) when a URL is
set, so every caller of the store gets the shared backend without knowing it. Import does nothing.
"""

from __future__ import annotations

import os
import re

DEFAULT_URL_ENV = "POTSTILL_DATABASE_URL"


def database_url(url_env: str | None = None) -> str | None:
    """The PostgreSQL URL from the environment variable `url_env` (default
    POTSTILL_DATABASE_URL), or None for the embedded SQLite store."""
    url = os.environ.get(url_env or DEFAULT_URL_ENV, "").strip()
    if not url:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"${url_env or DEFAULT_URL_ENV} must be a postgresql:// URL, got "
                         f"{redact(url)!r}")
    return url


def redact(url: str) -> str:
    """The URL with any password replaced by '***' (for logs and error messages)."""
    url = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)


def describe(path: object, url: str | None) -> str:
    """Where the store lives, safe to print."""
    return f"PostgreSQL {redact(url)}" if url else f"SQLite {path}"
