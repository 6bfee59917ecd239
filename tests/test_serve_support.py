"""Shared pieces of the serving tests (this module holds no tests): a tiny trained run directory,
built once per test session and cached on disk, and a real uvicorn server on 127.0.0.1 in a
background thread, on a free port, stopped when its block ends."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import make_rows, write_jsonl

LABELS = ["balance", "transfer", "weather"]
OOS_VALIDATION = ["play some jazz music", "book a table for two at eight", "who won the football game",
                  "translate hello into french", "set an alarm for six", "order a pizza with cheese",
                  "tell me a joke", "what is the capital of peru", "remind me to call the dentist",
                  "how do i bake bread", "turn off the kitchen lights", "find a flight to tokyo"]
OOS_TEST = ["what time is it in london", "recommend a good movie", "how many calories in an apple",
            "start a timer for ten minutes", "spell the word necessary", "who wrote hamlet"]


def build_run(root: Path, tiny_bert: Path) -> Path:
    """A task folder + run directory with a student trained on gold (no teacher needed to build
    it); the spec names an OpenAI-compatible teacher that tests point at a fake endpoint."""
    from potstill.config import load_spec, run_paths
    from potstill.stages.prepare import prepare_inputs
    from potstill.stages.train import train_student

    write_jsonl(root / "data/train.jsonl", make_rows(240, 1))
    write_jsonl(root / "data/validation.jsonl", make_rows(60, 2))
    write_jsonl(root / "data/test.jsonl", make_rows(60, 3))
    write_jsonl(root / "data/oos_validation.jsonl", [{"text": t, "label": "oos"} for t in OOS_VALIDATION])
    write_jsonl(root / "data/oos_test.jsonl", [{"text": t, "label": "oos"} for t in OOS_TEST])
    (root / "potstill.yaml").write_text(f"""
name: tiny
data: {{train: data/train.jsonl, validation: data/validation.jsonl, test: data/test.jsonl}}
teacher: {{kind: openai, model: fake-teacher, base_url: "http://127.0.0.1:9/v1", max_retries: 0,
           timeout_s: 5, price_in: 2.0, price_out: 8.0}}
student: {{model: {tiny_bert}, layers: [0, 3]}}
train: {{schedule: fixed, objective: gold, epochs: 3, lr: 0.002, batch_size: 8, precision: fp32,
         checkpoint_every: 1000, baseline: false}}
serve: {{ood_validation: data/oos_validation.jsonl, ood_test: data/oos_test.jsonl,
         batch_window_ms: 5, teacher_timeout_s: 5}}
""")
    spec = load_spec(root / "potstill.yaml")
    run = run_paths(spec)
    prepare_inputs(spec, run)
    train_student(spec, run, "student")
    from potstill.serve.calibrate import calibrate

    calibrate(spec, run)  # the teacher is an API one: cached answers only, so no call is made
    return run.root


@pytest.fixture(scope="session")
def tiny_run(tiny_bert, tmp_path_factory) -> Path:
    """The trained run directory (built on first use in this session, then reused)."""
    root = tmp_path_factory.getbasetemp() / "serve-task"
    run = root / "runs" / "tiny"
    if not (run / "calibration.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        build_run(root, tiny_bert)
    return run


def fresh_run(tiny_run: Path, dest: Path) -> Path:
    """A copy of the run directory (its own store and calibration), for tests that write."""
    import shutil

    shutil.copytree(tiny_run, dest, ignore=shutil.ignore_patterns("potstill.db*"))
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app, timeout: float = 30.0) -> Iterator[str]:
    """Run `app` under uvicorn on 127.0.0.1 (a free port) in a thread; yield its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=True,
                                           timeout_graceful_shutdown=3))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                          name="test-uvicorn")
    th.start()
    t0 = time.monotonic()
    while not server.started:
        if not th.is_alive() or time.monotonic() - t0 > timeout:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(15)
        sock.close()
        assert not th.is_alive(), "server thread did not stop"


def wait_for(cond, timeout: float = 10.0, every: float = 0.05):
    """Poll `cond()` until it is truthy (returned) or `timeout` passes (AssertionError)."""
    t0 = time.monotonic()
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(every)


def queue_rows(run: Path, db: Path | None = None) -> list[dict]:
    from potstill.store import Store

    with Store(db or run / "potstill.db") as s:
        return s.queue_items()


SERVER_SCRIPT = """
import sys
from pathlib import Path
from potstill.serve.app import serve_command
serve_command(Path(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), teacher_share=None,
              no_teacher=False, model="student", no_routing=False, set=sys.argv[3:],
              access_log=True, log_level="info")
"""


def start_server_process(run: Path, port: int, overrides: list[str], env: dict | None = None,
                         log_path: Path | None = None):
    """`serve_command` in a child process (what `potstill serve` runs); returns the Popen once
    /health answers."""
    import subprocess

    import httpx

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    p = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(run), str(port), *overrides],
                         env=env, stdout=out, stderr=subprocess.STDOUT)
    if log_path:
        out.close()  # the child holds its own copy
    t0 = time.monotonic()
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"server exited with {p.returncode}"
                               + (f":\n{Path(log_path).read_text()}" if log_path else ""))
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > 120:
            p.kill()
            raise RuntimeError("server process did not come up in 120 s")
        time.sleep(0.2)
