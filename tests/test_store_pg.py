"""The store on both backends: the same cache, queue, feedback and request-log behaviour on the
embedded SQLite file and on a real PostgreSQL server (tests/pgserver.py starts one), plus what only
a shared database has to get right: several processes writing one queue."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
from pgserver import pg_server, pg_url  # noqa: F401

from potstill.db import database_url, describe, redact
from potstill.store import MIGRATIONS, Store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, monkeypatch):
    monkeypatch.delenv("POTSTILL_DATABASE_URL", raising=False)
    if request.param == "sqlite":
        s = Store(tmp_path / "potstill.db")
    else:
        url = request.getfixturevalue("pg_url")
        s = Store(tmp_path / "potstill.db", url=url)
        assert type(s).__name__ == "PgStore" and not (tmp_path / "potstill.db").exists()
    yield s
    s.close()


def test_cache_round_trip_replace_and_spend(store):
    assert store.get_calls(["a", "b"]) == {}
    store.put_call("a", "t1", {"label": "x", "logprobs": [0.5]}, 10, 2, 0.001, 12.5)
    store.put_call("b", "t2", {"label": "y"}, 5, 1, 0.002)
    store.put_call("a", "t1", {"label": "z"}, 11, 3, 0.003)  # replaced, not duplicated
    keys = [f"k{i}" for i in range(1200)]  # more than one 500-key chunk
    assert store.get_calls(["a", "b", "missing"]) == {"a": {"label": "z"}, "b": {"label": "y"}}
    assert store.get_calls(keys) == {}
    s = store.spend()
    assert (s["calls"], s["input_tokens"], s["output_tokens"]) == (2, 16, 4)
    assert s["cost_usd"] == pytest.approx(0.005)
    assert store.spend("t1")["calls"] == 1 and store.spend("nobody")["calls"] == 0
    store.put_call("c", "t2", {"label": "w"})  # no tokens recorded: left out of the means
    n, avg_in, avg_out = store.token_stats()
    assert (n, avg_in, avg_out) == (2, 8.0, 2.0) and type(avg_in) is float  # not a Decimal
    assert store.token_stats("t1") == (1, 11.0, 3.0) and store.token_stats("nobody") == (0, None, None)


def test_queue_feedback_and_request_log(store):
    a = store.queue_add({"kind": "escalation", "reason": "low_confidence", "request_id": "r1",
                         "input": "hello", "student_label": "x", "teacher_label": "y",
                         "confidence": 0.4, "detail": {"why": [1, 2]}})
    b = store.queue_add({"kind": "degraded", "reason": "teacher_timeout", "request_id": "r2",
                         "input": "bye"})
    c = store.queue_add({"kind": "feedback", "reason": "wrong", "request_id": "r1", "input": "hello",
                         "feedback": "wrong"})
    assert a < b < c
    store.queue_update(b, teacher_label="late", detail={"late": True})
    items = store.queue_items()
    assert [i["id"] for i in items] == [a, b, c]
    assert items[0]["detail"] == {"why": [1, 2]} and items[0]["confidence"] == pytest.approx(0.4)
    assert items[1]["teacher_label"] == "late" and items[1]["updated_at"] >= items[1]["created_at"]
    assert [i["id"] for i in store.queue_items(last=2)] == [b, c]
    assert [i["id"] for i in store.queue_items(limit=1, after_id=a)] == [b]
    assert [i["id"] for i in store.queue_items(kind="feedback")] == [c]
    assert store.queue_counts() == {"escalation": 1, "degraded": 1, "feedback": 1}
    store.queue_update(a, used_in_round="round-1")
    assert store.queue_counts() == {"degraded": 1, "feedback": 1}
    assert store.queue_counts(unused_only=False)["escalation"] == 1
    assert [i["id"] for i in store.queue_items(unused_only=True)] == [b, c]
    with pytest.raises(ValueError, match="unknown queue fields"):
        store.queue_update(a, nope=1)
    assert store.queue_request("r1")["id"] == a  # the newest non-feedback item
    assert store.queue_request("nope") is None
    d = store.queue_add({"kind": "feedback", "reason": "corrected", "request_id": "r1",
                         "input": "hello", "feedback": "z"})
    assert store.feedback_for("r1") == [(c, "wrong"), (d, "z")] and store.feedback_for("r2") == []

    store.log_requests([{"request_id": "q1", "input": "hi", "route": "student", "reasons": [],
                         "confidence": 0.9},
                        {"request_id": "q2", "input": "yo", "route": "teacher",
                         "reasons": ["ood"], "served_label": "y"}])
    store.log_requests([{"request_id": "q1", "input": "hi", "route": "teacher", "reasons": ["x"]}])
    assert store.get_request("q1")["route"] == "teacher" and store.get_request("q1")["reasons"] == ["x"]
    assert store.get_request("q2")["reasons"] == ["ood"] and store.get_request("nope") is None


def test_queue_items_added_together_commit_together(store):
    """queue_add_many: one transaction, ids in order; an item that cannot be written leaves
    none of its group behind (the server answers none of those requests as queued)."""
    ids = store.queue_add_many([{"kind": "degraded", "reason": "breaker_open", "input": f"t{i}",
                                 "request_id": f"r{i}"} for i in range(5)])
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [i["input"] for i in store.queue_items()] == [f"t{i}" for i in range(5)]
    import sqlite3

    import psycopg

    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.NotNullViolation)):
        store.queue_add_many([{"kind": "degraded", "reason": "x", "input": "kept?"},
                              {"kind": None, "reason": "x", "input": "not null"}])  # kind is NOT NULL
    assert store.queue_counts() == {"degraded": 5}


def test_sqlite_writes_many_rows_in_few_statements(tmp_path, monkeypatch):
    """A group of queue items (and a request-log flush) goes to SQLite as multi-row INSERTs, not
    one statement per row: each statement hands the GIL back and forth, and with the server's
    other threads busy each hand-back waits up to 5 ms (store.py, _insert_many). The ids still
    belong to their own rows, across chunks."""
    monkeypatch.delenv("POTSTILL_DATABASE_URL", raising=False)
    with Store(tmp_path / "potstill.db") as s:
        s.queue_add({"kind": "feedback", "reason": "wrong", "input": "first"})
        stmts: list[str] = []
        s._db.set_trace_callback(stmts.append)
        items = [{"kind": "degraded", "reason": "breaker_open", "input": f"t{i}", "request_id": f"r{i}"}
                 for i in range(1200)]
        ids = s.queue_add_many(items)
        s.log_requests([{"request_id": f"r{i}", "input": f"t{i}", "route": "student"} for i in range(300)])
        s._db.set_trace_callback(None)
        inserts = [x for x in stmts if x.lstrip().upper().startswith("INSERT")]
        assert len(inserts) <= 4, len(inserts)  # 1,200 items in chunks of up to 500, the log in one
        by_id = {i["id"]: i["input"] for i in s.queue_items(last=2000)}
        assert [by_id[i] for i in ids] == [f"t{i}" for i in range(1200)]
        assert ids == list(range(ids[0], ids[0] + 1200)) and by_id[ids[0] - 1] == "first"
        assert s.get_request("r299")["input"] == "t299"


def test_reopening_migrates_once(store, tmp_path):
    store.queue_add({"kind": "feedback", "reason": "wrong", "input": "x"})
    url = getattr(store, "url", "")
    again = Store(tmp_path / "potstill.db", url=url)
    try:
        assert again.queue_counts() == {"feedback": 1}  # same data, no migration re-ran
        if url:
            assert again.schema_version() == len(MIGRATIONS)
    finally:
        again.close()


def test_the_environment_chooses_the_backend(tmp_path, monkeypatch, pg_url):
    monkeypatch.setenv("POTSTILL_DATABASE_URL", pg_url)
    s = Store(tmp_path / "potstill.db")
    try:
        assert type(s).__name__ == "PgStore" and not (tmp_path / "potstill.db").exists()
        s.queue_add({"kind": "feedback", "reason": "wrong", "input": "x"})
    finally:
        s.close()
    local = Store(tmp_path / "potstill.db", url="")  # "" forces SQLite
    try:
        assert type(local) is Store and local.queue_counts() == {}
    finally:
        local.close()
    monkeypatch.setenv("MY_DB", pg_url)
    assert database_url("MY_DB") == pg_url
    monkeypatch.setenv("POTSTILL_DATABASE_URL", "mysql://u:p@h/db")
    with pytest.raises(ValueError, match=r"postgresql:// URL.*\*\*\*") as e:
        database_url()
    assert ":p@" not in str(e.value)


def test_passwords_never_printed(monkeypatch):
    assert redact("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("postgresql://db/x?password=s3cret&sslmode=require") == (
        "postgresql://db/x?password=***&sslmode=require")
    assert "s3cret" not in describe("p", "postgresql://me:s3cret@db/x")
    with pytest.raises(ConnectionError) as e:
        Store("unused", url="postgresql://me:s3cret@127.0.0.1:1/x?connect_timeout=2")
    assert "s3cret" not in str(e.value) and "***" in str(e.value)


def test_concurrent_first_opens_migrate_once(pg_url):
    errors: list[BaseException] = []

    def open_one():
        try:
            Store(None, url=pg_url).close()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = Store(None, url=pg_url)
    assert s.schema_version() == len(MIGRATIONS)
    s.close()


WRITER = textwrap.dedent("""
    import asyncio, sys
    from potstill.store import Store
    from potstill.serve.queue import ReviewQueue

    async def main(name, n):
        q = ReviewQueue(Store(None), flush_ms=5)
        await q.start()
        async def one(i):
            rid = f"{name}-{i}"
            await q.add(kind="escalation", reason="low_confidence", request_id=rid, input=rid,
                        route="teacher")
            q.log({"request_id": rid, "input": rid, "route": "teacher"})
        await asyncio.gather(*(one(i) for i in range(n)))
        await q.stop()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""")


def test_two_writer_processes_share_one_queue_exactly_once(pg_url, tmp_path):
    n = 300
    env = {"POTSTILL_DATABASE_URL": pg_url, "PATH": "/usr/bin:/bin"}
    import os

    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, name, str(n)], env=env,
                              stderr=subprocess.PIPE) for name in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    s = Store(None, url=pg_url)
    try:
        items = s.queue_items()
        ids = [i["request_id"] for i in items]
        assert len(ids) == 2 * n and set(ids) == {f"{w}-{i}" for w in "ab" for i in range(n)}
        assert len({i["id"] for i in items}) == 2 * n
        assert all(s.get_request(r) is not None for r in ("a-0", "b-299"))
    finally:
        s.close()


def test_queue_list_reads_the_shared_database(pg_url, tmp_path, monkeypatch):
    import json

    import typer
    from typer.testing import CliRunner

    from potstill.serve.queue import queue_list_command

    monkeypatch.setenv("POTSTILL_DATABASE_URL", pg_url)
    with Store(None) as s:
        s.queue_add({"kind": "escalation", "reason": "ood", "input": "shared row"})
    cli = typer.Typer()
    cli.command()(queue_list_command)
    res = CliRunner().invoke(cli, [str(tmp_path / "no-such-run"), "--json"])  # no potstill.db here
    assert res.exit_code == 0, res.output
    assert [json.loads(l)["input"] for l in res.output.splitlines()] == ["shared row"]


def test_cost_model_reads_spend_from_the_shared_database(pg_url, tmp_path, monkeypatch):
    import json

    from potstill.cost import cost_inputs_from_run

    monkeypatch.setenv("POTSTILL_DATABASE_URL", pg_url)
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"models": {"teacher": {"identity": "t1"}}}))
    with Store(None) as s:
        s.put_call("a", "t1", {}, 400, 10, 0.5)
        s.put_call("b", "t1", {}, 600, 30, 0.25)
        s.put_call("c", "t2", {}, 0, 0, 0.0)
    x = cost_inputs_from_run(run)
    assert x.labelling_usd == pytest.approx(0.75)
    assert (x.tokens_in, x.tokens_out) == (500.0, 20.0)


def test_a_dropped_connection_is_reopened_and_nothing_is_written_twice(pg_url):
    import psycopg

    s = Store(None, url=pg_url)
    try:
        s.queue_add({"kind": "feedback", "reason": "wrong", "input": "before"})
        pid = s._db.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:  # the server drops us
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            s.queue_add({"kind": "feedback", "reason": "wrong", "input": "during"})  # not retried
        s.queue_add({"kind": "feedback", "reason": "wrong", "input": "after"})  # reconnected
        assert [i["input"] for i in s.queue_items()] == ["before", "after"]
        assert s._db.info.backend_pid != pid
    finally:
        s.close()
