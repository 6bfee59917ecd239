"""The store: the teacher-call cache, the review queue, the feedback and the request log, with
numbered migrations, on SQLite (the default) or PostgreSQL (`PgStore`, below).

SQLite: one file per run directory, in WAL mode, so readers (a report, a second process) can look
while a writer labels; every call result is committed as it arrives, so a killed run loses only
calls in flight.

Each operation is written once, in `Store`, with `?` placeholders, on top of a handful of
primitives (`_run`, `_fetch`, `_write`, `_write_many`, `_insert`, `_upsert`) that `PgStore`
overrides with PostgreSQL's forms; the migrations are the other thing each backend does its own way.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .db import redact

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
    # 2: serving: the review queue (escalations, degraded answers, disagreements, feedback) and
    # the request log (every answered input, so feedback can name any request id)
    """
    CREATE TABLE queue (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        request_id TEXT,
        input TEXT NOT NULL,
        student_label TEXT,
        teacher_label TEXT,
        served_label TEXT,
        route TEXT,
        confidence REAL,
        ood_score REAL,
        feedback TEXT,
        student_version TEXT,
        detail TEXT,
        updated_at REAL,
        used_in_round TEXT
    );
    CREATE INDEX queue_kind ON queue(kind);
    CREATE INDEX queue_request ON queue(request_id);
    CREATE INDEX queue_unused ON queue(used_in_round);
    CREATE TABLE requests (
        request_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        input TEXT NOT NULL,
        student_label TEXT,
        served_label TEXT,
        teacher_label TEXT,
        route TEXT NOT NULL,
        reasons TEXT,
        confidence REAL,
        ood_score REAL,
        student_version TEXT
    );
    """,
]

CALL_COLUMNS = ("key", "teacher", "response", "input_tokens", "output_tokens", "cost_usd",
                "latency_ms", "created_at")
QUEUE_COLUMNS = ("id", "created_at", "kind", "reason", "request_id", "input", "student_label",
                 "teacher_label", "served_label", "route", "confidence", "ood_score", "feedback",
                 "student_version", "detail", "updated_at", "used_in_round")
REQUEST_COLUMNS = ("request_id", "created_at", "input", "student_label", "served_label",
                   "teacher_label", "route", "reasons", "confidence", "ood_score", "student_version")


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _json_text(value: Any) -> Any:
    """A queue item's `detail` as JSON text; None and strings as they are."""
    return value if value is None or isinstance(value, str) else json.dumps(value, default=str)


class Store:
    """Thread-safe handle on the run's SQLite file; with a PostgreSQL URL (`url`, else
    $POTSTILL_DATABASE_URL, see db.py) a `PgStore` on that database instead (below)."""

    path: Path | None

    def __new__(cls, path: str | Path | None = None, url: str | None = None):
        if cls is Store:
            from .db import database_url

            url = url if url is not None else database_url()
            if url:
                return PgStore.__new__(PgStore)  # Python then runs PgStore.__init__(path, url)
        return super().__new__(cls)

    def __init__(self, path: str | Path, url: str | None = None):
        """`url=""` forces the SQLite file even when $POTSTILL_DATABASE_URL is set."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db: Any = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
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

    # -- the backend's primitives: one connection, one lock; each write committed on its own ---
    # SQL comes in with `?` placeholders (PgStore translates them).
    def _run(self, fn: Callable[[Any], Any]) -> Any:
        """fn(connection) under the lock."""
        with self._lock:
            return fn(self._db)

    def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self._run(lambda c: c.execute(sql, args).fetchall())

    def _write(self, sql: str, args: Sequence[Any] = ()) -> None:
        def go(c: Any) -> None:
            c.execute(sql, args)
            c.commit()

        self._run(go)

    def _write_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """An `INSERT ... VALUES (?, ...)` for every row, in one transaction (as `_insert_many`,
        whose ids mean nothing for a table without an AUTOINCREMENT `id`)."""
        self._insert_many(sql, rows)

    def _insert_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]:
        """Run an `INSERT ... VALUES (?, ...)` into a table with an AUTOINCREMENT `id` for every
        row, in one transaction; the new rows' ids, in order.

        The rows go in as few statements as SQLite's bound-variable limit allows (one
        `VALUES (...), (...), ...` per chunk), not one statement per row: the sqlite3 module
        releases the GIL around each statement, and taking it back waits out the interpreter's
        switch interval (5 ms) whenever another thread runs Python. With one busy Python thread
        beside it, 64 queue items took 451 ms one statement at a time and 20 ms this way
        (bench/store_writes.py, docs/bench_store_writes.md). Rows inserted by one
        statement into an AUTOINCREMENT table get consecutive ids, so each chunk's ids end at
        its `lastrowid`."""
        if not rows:
            return []
        head, sep, one = sql.rpartition(" VALUES ")
        if not sep or not one.startswith("("):
            raise ValueError(f"not an INSERT ... VALUES (...) statement: {sql[:80]!r}")
        width = len(rows[0])
        getlimit = getattr(self._db, "getlimit", None)  # Python >= 3.11; before, SQLite's old default
        limit = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit else 999
        per = max(1, min(500, limit // max(1, width)))

        def go(c: Any) -> list[int]:
            ids: list[int] = []
            try:
                for i in range(0, len(rows), per):
                    chunk = rows[i : i + per]
                    stmt = f"{head} VALUES {','.join([one] * len(chunk))}"
                    last = int(c.execute(stmt, [v for r in chunk for v in r]).lastrowid)
                    ids.extend(range(last - len(chunk) + 1, last + 1))
                c.commit()
            except BaseException:
                c.rollback()
                raise
            return ids

        return self._run(go)

    def _insert(self, sql: str, args: Sequence[Any]) -> int:
        """Run an INSERT into a table with an `id` column; the new row's id."""
        return self._insert_many(sql, [args])[0]

    def _upsert(self, table: str, columns: Sequence[str], key: str) -> str:
        """INSERT of every column that replaces the row with the same `key`."""
        return f"INSERT OR REPLACE INTO {table} ({','.join(columns)}) VALUES ({_marks(len(columns))})"

    # -- teacher-call cache -------------------------------------------------------------------
    def get_calls(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(keys)
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            for k, resp in self._fetch(
                    f"SELECT key, response FROM calls WHERE key IN ({_marks(len(chunk))})", chunk):
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
        self._write(self._upsert("calls", CALL_COLUMNS, "key"),
                    (key, teacher, json.dumps(response), input_tokens, output_tokens, cost_usd,
                     latency_ms, time.time()))

    def spend(self, teacher: str | None = None) -> dict[str, float]:
        """Recorded calls, tokens and dollars, for one teacher identity or all."""
        q = ("SELECT COUNT(*), COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0), "
             "COALESCE(SUM(cost_usd),0) FROM calls")
        args: tuple[Any, ...] = ()
        if teacher is not None:
            q += " WHERE teacher = ?"
            args = (teacher,)
        n, tin, tout, cost = self._fetch(q, args)[0]
        return {"calls": int(n), "input_tokens": int(tin), "output_tokens": int(tout),
                "cost_usd": float(cost)}

    def token_stats(self, teacher: str | None = None) -> tuple[int, float | None, float | None]:
        """(calls that recorded tokens, mean input tokens, mean output tokens), for one teacher
        identity or all (the cost model's per-call figures)."""
        q = ("SELECT COUNT(*), AVG(input_tokens), AVG(output_tokens) FROM calls "
             "WHERE (input_tokens > 0 OR output_tokens > 0)")
        args: tuple[Any, ...] = ()
        if teacher is not None:
            q += " AND teacher = ?"
            args = (teacher,)
        n, a, b = self._fetch(q, args)[0]
        return int(n), (float(a) if a is not None else None), (float(b) if b is not None else None)

    # -- serving: review queue ----------------------------------------------------------------
    def queue_add(self, item: dict[str, Any]) -> int:
        """Append one queue item (keys from QUEUE_COLUMNS; `detail` may be a dict); committed
        before returning, so it survives a kill. Returns its id."""
        return self.queue_add_many([item])[0]

    def queue_add_many(self, items: Sequence[dict[str, Any]]) -> list[int]:
        """`queue_add` for several items in one transaction (all or none); their ids, in order."""
        cols = [k for k in QUEUE_COLUMNS if k != "id"]
        rows = []
        for item in items:
            row = {k: item.get(k) for k in cols}
            row["created_at"] = row["created_at"] or time.time()
            row["detail"] = _json_text(row["detail"])
            rows.append(tuple(row.values()))
        return self._insert_many(f"INSERT INTO queue ({','.join(cols)}) VALUES ({_marks(len(cols))})", rows)

    def queue_update(self, queue_id: int, **fields: Any) -> None:
        """Fill in fields of a queued item later (e.g. the teacher's late answer)."""
        bad = set(fields) - set(QUEUE_COLUMNS[1:])
        if bad:
            raise ValueError(f"unknown queue fields {sorted(bad)}")
        if "detail" in fields:
            fields["detail"] = _json_text(fields["detail"])
        fields["updated_at"] = time.time()
        sets = ",".join(f"{k}=?" for k in fields)
        self._write(f"UPDATE queue SET {sets} WHERE id=?", (*fields.values(), queue_id))

    def queue_items(self, kind: str | None = None, limit: int | None = None,
                    unused_only: bool = False, after_id: int = 0,
                    last: int | None = None) -> list[dict[str, Any]]:
        """Queued items, oldest first (`detail` decoded): the first `limit` after `after_id`, or
        with `last`, the newest `last` of them."""
        q = f"SELECT {','.join(QUEUE_COLUMNS)} FROM queue WHERE id > ?"
        args: list[Any] = [after_id]
        if kind is not None:
            q += " AND kind = ?"
            args.append(kind)
        if unused_only:
            q += " AND used_in_round IS NULL"
        if last is not None:
            q = f"SELECT * FROM ({q} ORDER BY id DESC LIMIT ?) AS newest ORDER BY id"
            args.append(last)
        else:
            q += " ORDER BY id"
            if limit is not None:
                q += " LIMIT ?"
                args.append(limit)
        out = []
        for r in self._fetch(q, args):
            d = dict(zip(QUEUE_COLUMNS, r))
            if d["detail"]:
                try:
                    d["detail"] = json.loads(d["detail"])
                except json.JSONDecodeError:
                    pass
            out.append(d)
        return out

    def queue_counts(self, unused_only: bool = True) -> dict[str, int]:
        """Number of queued items by kind (by default those no round has used yet)."""
        q = "SELECT kind, COUNT(*) FROM queue"
        if unused_only:
            q += " WHERE used_in_round IS NULL"
        return {k: int(n) for k, n in self._fetch(q + " GROUP BY kind")}

    # -- serving: request log -----------------------------------------------------------------
    def log_requests(self, rows: list[dict[str, Any]]) -> None:
        """Insert answered requests (keys from REQUEST_COLUMNS) in one transaction; a request id
        logged again replaces the earlier row."""
        if not rows:
            return
        vals = []
        for r in rows:
            reasons = r.get("reasons")
            if reasons is not None and not isinstance(reasons, str):
                reasons = json.dumps(reasons)
            vals.append(tuple(reasons if k == "reasons" else
                              (r.get(k) if k != "created_at" else r.get(k) or time.time())
                              for k in REQUEST_COLUMNS))
        self._write_many(self._upsert("requests", REQUEST_COLUMNS, "request_id"), vals)

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        rows = self._fetch(f"SELECT {','.join(REQUEST_COLUMNS)} FROM requests WHERE request_id = ?",
                           (request_id,))
        if not rows:
            return None
        d = dict(zip(REQUEST_COLUMNS, rows[0]))
        if d["reasons"]:
            d["reasons"] = json.loads(d["reasons"])
        return d

    def feedback_for(self, request_id: str) -> list[tuple[int, str]]:
        """(queue id, answer) of every feedback item naming `request_id`, oldest first."""
        rows = self._fetch("SELECT id, feedback FROM queue WHERE request_id = ? AND kind = 'feedback' "
                           "ORDER BY id", (request_id,))
        return [(int(i), f) for i, f in rows]

    def queue_request(self, request_id: str) -> dict[str, Any] | None:
        """The newest non-feedback queue item of a request (its input and answers), or None."""
        rows = self._fetch(f"SELECT {','.join(QUEUE_COLUMNS)} FROM queue WHERE request_id = ? "
                           "AND kind != 'feedback' ORDER BY id DESC LIMIT 1", (request_id,))
        return dict(zip(QUEUE_COLUMNS, rows[0])) if rows else None


# -- PostgreSQL ------------------------------------------------------------------------------
# The store on PostgreSQL (psycopg 3), shared by every process that points at the same database.
#
# Same operations (Store's) and same numbered migrations as on SQLite, with the dialect
# differences translated: `?` -> `%s` placeholders, `INSERT OR REPLACE` -> `ON CONFLICT DO
# UPDATE`, `lastrowid` -> `RETURNING id`, and in the schema `INTEGER PRIMARY KEY AUTOINCREMENT` ->
# `BIGSERIAL PRIMARY KEY`, `REAL` -> `DOUBLE PRECISION`. The applied version is kept in
# `potstill_schema`, and migrations run under a transaction-scoped advisory lock, so several
# servers starting at once migrate exactly once. Every write is its own committed transaction (a
# queue item is durable before the response that caused it goes out, as with SQLite). One
# connection per process, guarded by a lock; a dropped connection is reopened on the next call
# (the failed call is not retried, so nothing is written twice).
#
# Chosen with `POTSTILL_DATABASE_URL` (see db.py); SQLite stays the default.

# any constant works: it only has to be the same in every potstill process
_MIGRATION_LOCK = 0x706F7473  # "pots"


def pg_migrations() -> list[str]:
    """store.MIGRATIONS in PostgreSQL's dialect (the list is shared, so versions line up)."""
    out = []
    for script in MIGRATIONS:
        s = re.sub(r"INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY", script)
        s = re.sub(r"\bREAL\b", "DOUBLE PRECISION", s)
        out.append(s)
    return out


def _pg(sql: str) -> str:
    """Store's `?` placeholders as psycopg's `%s` (no SQL here has a literal `?` or `%`)."""
    return sql.replace("?", "%s")


class PgStore(Store):
    """`Store` on a PostgreSQL database (`Store(path, url=...)` returns one)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "PgStore":
        return object.__new__(cls)

    def __init__(self, path: str | Path | None = None, url: str | None = None):
        if url is None:
            from .db import database_url

            url = database_url()
        if not url:
            raise ValueError("PgStore needs a postgresql:// URL (or $POTSTILL_DATABASE_URL)")
        try:
            import psycopg  # noqa: F401
        except ImportError as e:  # pragma: no cover - psycopg is a dependency
            raise RuntimeError("the PostgreSQL store needs psycopg 3: pip install 'psycopg[binary]'") from e
        self.path = Path(path) if path is not None else None
        self.url = url
        self._lock = threading.Lock()
        self._db = self._connect()
        self._migrate()

    def __repr__(self) -> str:
        return f"PgStore({redact(self.url)})"

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as e:
            # psycopg's message can echo the connection string; say where, never the password
            raise ConnectionError(f"cannot connect to PostgreSQL at {redact(self.url)}: "
                                  f"{redact(str(e)).strip()}") from None

    def _migrate(self) -> None:
        scripts = pg_migrations()

        def go(conn: Any) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS potstill_schema (version INTEGER NOT NULL)")
                row = conn.execute("SELECT version FROM potstill_schema").fetchone()
                if row is None:
                    conn.execute("INSERT INTO potstill_schema VALUES (0)")
                    version = 0
                else:
                    version = row[0]
                for i, script in enumerate(scripts[version:], start=version + 1):
                    for stmt in (s.strip() for s in script.split(";")):
                        if stmt:
                            conn.execute(stmt)
                    conn.execute("UPDATE potstill_schema SET version = %s", (i,))

        self._run(go)

    def schema_version(self) -> int:
        return int(self._fetch("SELECT version FROM potstill_schema")[0][0])

    # -- the primitives, PostgreSQL's way (autocommit: each statement commits on its own) -----
    def _run(self, fn: Callable[[Any], Any]) -> Any:
        """fn(conn) under the lock. A connection found broken is reopened before the call; a
        call that fails is never retried (a write may have committed before the break, and a
        retried queue insert would record an escalation twice)."""
        with self._lock:
            if self._db.closed or self._db.broken:
                self._db = self._connect()
            return fn(self._db)

    def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self._run(lambda c: c.execute(_pg(sql), args).fetchall())

    def _write(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._run(lambda c: c.execute(_pg(sql), args))

    def _write_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        def go(c: Any) -> None:
            with c.transaction(), c.cursor() as cur:
                cur.executemany(_pg(sql), rows)

        self._run(go)

    def _insert_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]:
        def go(c: Any) -> list[int]:
            with c.transaction():
                return [int(c.execute(_pg(sql) + " RETURNING id", r).fetchone()[0]) for r in rows]

        return self._run(go)

    def _upsert(self, table: str, columns: Sequence[str], key: str) -> str:
        updates = ",".join(f"{k}=EXCLUDED.{k}" for k in columns if k != key)
        return (f"INSERT INTO {table} ({','.join(columns)}) VALUES ({_marks(len(columns))}) "
                f"ON CONFLICT ({key}) DO UPDATE SET {updates}")
