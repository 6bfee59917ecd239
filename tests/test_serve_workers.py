"""`potstill serve RUN --workers 2`: two processes on one port, both answering, sharing the run's
SQLite queue (WAL): every escalation recorded exactly once; a worker killed with SIGKILL is
replaced and nothing answered is lost."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import stop_group
from fake_openai import FakeOpenAI
from test_serve_support import LABELS, free_port, fresh_run, queue_rows, tiny_run  # noqa: F401

from potstill.serve.workers import config_json, worker_threads


async def _fire(base: str, texts: list[str], concurrency: int) -> dict[str, dict]:
    sem = asyncio.Semaphore(concurrency)
    got: dict[str, dict] = {}

    async def one(t: str):
        async with sem:
            # a new connection per request, so the kernel spreads them over the workers
            async with httpx.AsyncClient(timeout=60) as c:
                try:
                    r = await c.post(f"{base}/v1/chat/completions", json={
                        "model": "tiny", "messages": [{"role": "user", "content": t}]})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    got[t] = r.json()
    await asyncio.gather(*(one(t) for t in texts))
    return got


def _pids(base: str, n: int = 40) -> set[int]:
    out = set()
    for _ in range(n):
        with httpx.Client(timeout=10) as c:  # fresh connection each time
            out.add(c.get(f"{base}/health").json()["worker_pid"])
    return out


@pytest.mark.timeout(400)
def test_two_workers_share_one_port_and_one_sqlite_queue(tiny_run, tmp_path):
    run = fresh_run(tiny_run, tmp_path / "run")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "wb")
    with FakeOpenAI(lambda t: "weather", labels=LABELS) as url:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        env.pop("POTSTILL_DATABASE_URL", None)
        p = subprocess.Popen(
            [sys.executable, "-m", "potstill", "serve", str(run), "--port", str(port),
             "--workers", "2", "--set", f"teacher.base_url={url}", "--set", "serve.ood_threshold=-1",
             "--set", "serve.confidence_threshold=0"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            t0 = time.monotonic()
            seen: set[int] = set()  # which worker accepts a connection is the kernel's choice
            while True:
                assert p.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    seen |= _pids(base, 10)
                    if len(seen) >= 2:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() - t0 < 240, "two workers never came up"
                time.sleep(0.5)
            pids = seen | _pids(base)
            assert len(pids) == 2 and p.pid not in pids  # two worker processes, not the parent
            texts = [f"what is my balance number {i}" for i in range(60)]
            got = asyncio.run(_fire(base, texts, 16))
            assert len(got) == 60 and all(g["route"] == "teacher" for g in got.values())

            victim = sorted(pids)[0]
            os.kill(victim, signal.SIGKILL)
            more = [f"send money to friend {i}" for i in range(40)]
            got2 = asyncio.run(_fire(base, more, 8))
            t0 = time.monotonic()
            while True:  # the supervisor starts a replacement
                now = _pids(base, 20)
                if len(now) == 2 and victim not in now:
                    break
                assert time.monotonic() - t0 < 120, f"no replacement worker (pids {now})"
                time.sleep(1)
        finally:
            stop_group(p, grace=30)
    rows = queue_rows(run)
    by_input = collections.Counter(r["input"] for r in rows)
    assert max(by_input.values()) == 1  # none twice
    assert set(texts) | set(got2) <= set(by_input)  # none answered and lost
    ids = {r["input"]: r["request_id"] for r in rows}
    assert all(ids[t] == g["id"] for t, g in got.items())


def test_worker_threads_and_config():
    assert worker_threads(1, 2) == 1 and worker_threads(1, 16) == 15 and worker_threads(4, 16) == 3 \
        and worker_threads(8, 2) == 1
    from pathlib import Path

    from potstill.serve.app import ServeConfig

    with pytest.raises(ValueError, match="--workers"):
        config_json(ServeConfig(Path("r"), student=object()))
    assert '"recalibrate": false' in config_json(ServeConfig(Path("r"), overrides=["serve.x=1"]))


def test_served_model_threads_default_and_blas_limit(tiny_run, tmp_path):
    """Unless serve.threads is set, the server's model gets the cores left after one for the event
    loop, and numpy's BLAS (which computes the OOD distances of every batch) is held to the same
    count: at its default, an idle OpenBLAS worker spin-waits and takes a core from the event loop."""
    import torch
    from starlette.testclient import TestClient
    from threadpoolctl import threadpool_info, threadpool_limits

    from potstill.serve.app import ServeConfig, create_app

    torch_before = torch.get_num_threads()
    with threadpool_limits(limits=2, user_api="blas"):  # numpy's default on 2 cores; restored after
        try:
            app = create_app(ServeConfig(tiny_run, db_path=tmp_path / "q.db", teacher=None))
            want = worker_threads(1)
            with TestClient(app) as c:
                assert c.get("/health").json()["threads"] == want
            assert torch.get_num_threads() == want
            blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
            assert blas and all(n == want for n in blas), blas
        finally:
            torch.set_num_threads(torch_before)


def test_onnx_session_threads_do_not_spin(tmp_path):
    """ONNX Runtime's idle pool threads sleep between runs instead of spin-waiting (the server's
    other threads need those cycles)."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper

    from potstill.onnx_export import session

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    s = session(path, threads=2)
    assert s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
