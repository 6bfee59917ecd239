"""SQLite store (WAL): the teacher-call cache, with numbered migrations.

One file per run directory. WAL lets readers (a report, a second process) look while a writer
labels; every call result is committed as it arrives, so a killed run loses only calls in flight.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

MIGRATIONS: list[str] = [
    # 1: teacher-call cache
    """
    CREATE TABLE calls (
        key TEXT PRIMARY KEY,
        teacher TEXT NOT NULL,
        response TEXT NOT NULL,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        latency_ms REAL,
        created_at REAL NOT NULL
    );
    CREATE INDEX calls_teacher ON calls(teacher);
    """,
]


class Store:
    """Thread-safe handle on the run's SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
                self._db.executescript(f"BEGIN; {script} PRAGMA user_version={i}; COMMIT;")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- teacher-call cache -------------------------------------------------------------------
    def get_calls(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(keys)
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT key, response FROM calls WHERE key IN ({','.join('?' * len(chunk))})"
                for k, resp in self._db.execute(q, chunk):
                    out[k] = json.loads(resp)
        return out

    def put_call(
        self,
        key: str,
        teacher: str,
        response: dict[str, Any],
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float = 0.0,
        latency_ms: float | None = None,
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?,?,?,?)",
                (key, teacher, json.dumps(response), input_tokens, output_tokens, cost_usd,
                 latency_ms, time.time()),
            )
            self._db.commit()

    def spend(self, teacher: str | None = None) -> dict[str, float]:
        """Recorded calls, tokens and dollars, for one teacher identity or all."""
        q = "SELECT COUNT(*), COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0), COALESCE(SUM(cost_usd),0) FROM calls"
        args: tuple[Any, ...] = ()
        if teacher is not None:
            q += " WHERE teacher = ?"
            args = (teacher,)
        with self._lock:
            n, tin, tout, cost = self._db.execute(q, args).fetchone()
        return {"calls": n, "input_tokens": tin, "output_tokens": tout, "cost_usd": cost}
