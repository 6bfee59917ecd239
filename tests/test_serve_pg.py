"""Two `potstill serve` processes on different ports sharing one PostgreSQL queue under
concurrent load, one of them killed with SIGKILL mid-load: every answered escalation is recorded
exactly once (none lost, none duplicated). A real PostgreSQL server (tests/pgserver.py)."""

from __future__ import annotations

import asyncio
import collections
import signal

import httpx
import pytest
from fake_openai import FakeOpenAI
from pgserver import pg_server, pg_url  # noqa: F401
from test_serve_support import LABELS, free_port, fresh_run, start_server_process, tiny_run  # noqa: F401

from potstill.store import Store


async def _fire(base: str, texts: list[str], concurrency: int) -> dict[str, str]:
    """POST each text; {text: response id} for those answered 200 (errors are dropped: a killed
    server's in-flight requests)."""
    sem = asyncio.Semaphore(concurrency)
    got: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=30) as c:
        async def one(t: str):
            async with sem:
                try:
                    r = await c.post(f"{base}/v1/chat/completions", json={
                        "model": "tiny", "messages": [{"role": "user", "content": t}]})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    got[t] = r.json()["id"]
        await asyncio.gather(*(one(t) for t in texts))
    return got


@pytest.mark.timeout(300)
def test_two_servers_share_one_postgres_queue_exactly_once_across_a_kill(tiny_run, tmp_path, pg_url):
    run = fresh_run(tiny_run, tmp_path / "run")
    env = {"POTSTILL_DATABASE_URL": pg_url}
    n = 90
    with FakeOpenAI(lambda t: "weather", labels=LABELS) as url:
        # every input escalates (OOD threshold below any score), so every answer is a queue row
        ov = [f"teacher.base_url={url}", "serve.ood_threshold=-1", "serve.confidence_threshold=0"]
        pa, pb = free_port(), free_port()
        a = start_server_process(run, pa, ov, env, tmp_path / "a.log")
        b = start_server_process(run, pb, ov, env, tmp_path / "b.log")
        try:
            texts_a = [f"what is my balance number {i}" for i in range(n)]
            texts_b = [f"send money to friend {i}" for i in range(n)]

            async def load():
                ta = asyncio.create_task(_fire(f"http://127.0.0.1:{pa}", texts_a, 16))
                tb = asyncio.create_task(_fire(f"http://127.0.0.1:{pb}", texts_b, 16))
                # kill B once it has answered a few, while requests are still in flight
                async with httpx.AsyncClient() as c:
                    for _ in range(600):
                        h = (await c.get(f"http://127.0.0.1:{pa}/health")).json()
                        if h["queue_depth"] >= 20:
                            break
                        await asyncio.sleep(0.05)
                b.send_signal(signal.SIGKILL)
                return await ta, await tb

            got_a, got_b = asyncio.run(load())
            b.wait(10)
        finally:
            for p in (a, b):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.wait(30)
    assert len(got_a) == n  # the surviving server answered everything
    assert len(got_b) < n  # the kill cut B's load short
    assert not (run / "potstill.db").exists()  # nothing went to the SQLite file
    with Store(None, url=pg_url) as s:
        rows = s.queue_items()
    by_input = collections.Counter(r["input"] for r in rows)
    assert all(r["kind"] == "escalation" for r in rows)
    assert max(by_input.values()) == 1  # nothing recorded twice
    answered = set(got_a) | set(got_b)
    assert answered <= set(by_input)  # every answered escalation was recorded (before its answer)
    assert set(by_input) <= set(texts_a) | set(texts_b)
    # each recorded row names the request id its response carried
    ids = {r["input"]: r["request_id"] for r in rows}
    assert all(ids[t] == rid for t, rid in {**got_a, **got_b}.items())


def test_feedback_through_the_server_on_postgres(tiny_run, tmp_path, pg_url, monkeypatch):
    """POST /v1/feedback with the store on PostgreSQL: the request is found in the shared request
    log and the feedback is queued there (the store once ran SQLite's query on PostgreSQL here)."""
    from test_serve_support import live_server

    from potstill.serve.app import ServeConfig, create_app

    monkeypatch.setenv("POTSTILL_DATABASE_URL", pg_url)
    run = fresh_run(tiny_run, tmp_path / "run")
    app = create_app(ServeConfig(run, overrides=["serve.ood_threshold=1e9", "serve.confidence_threshold=0"],
                                 teacher=None, allow_local_admin=True))
    with live_server(app) as base:
        r = httpx.post(f"{base}/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "what is my balance"}]})
        rid = r.json()["id"]
        f = httpx.post(f"{base}/v1/feedback", json={"request_id": rid, "answer": "wrong"})
        assert f.status_code == 200, f.text
        again = httpx.post(f"{base}/v1/feedback", json={"request_id": rid, "answer": "wrong"})
        assert again.json()["status"] == "duplicate"
    assert not (run / "potstill.db").exists()
    with Store(None, url=pg_url) as s:
        rows = [x for x in s.queue_items(kind="feedback") if x["request_id"] == rid]
    assert [(x["input"], x["feedback"]) for x in rows] == [("what is my balance", "wrong")]
