"""A local teacher asked over HTTP: one potstill server teaching another run (`teacher.over_http`).

`ServedTeacher` starts `potstill serve RUN --model teacher --no-routing` as a child process on
127.0.0.1 (a free port, a one-off bearer key in the child's environment), waits for `/health`,
and asks it through an `OpenAITeacher`: the labels then travel the same path as from any
OpenAI-compatible endpoint (the official SDK, bounded concurrency, retries, logprobs turned into
a label distribution). `close()` stops the server (`open_teacher` calls it when its block ends, also on errors).

The cache identity is the served model's (`served:hf:teacher@<weights hash>`), not the URL: the
port changes from run to run, the answers do not.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import httpx

from ..paths import RunPaths
from ..progress import log
from ..spec import TaskSpec
from .base import Answer
from .openai_compat import OpenAITeacher

START_TIMEOUT_S = 300.0
"""Loading the model dominates start-up; past this the child is killed and its log is shown."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, url: str, key: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the teacher server exited with code {proc.returncode} before it "
                               f"was ready; its log ends with:\n{tail}")
        try:
            r = httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {key}"}, timeout=2.0)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise TimeoutError(f"the teacher server was not ready within {timeout_s:.0f}s; its log ends "
                       f"with:\n{tail}")


class ServedTeacher:
    """The `Teacher` protocol over a potstill server started on first need (see the module doc).

    Cached answers need no server: it starts on the first `answer()` call, so a rerun whose
    answers are all cached costs nothing. `close()` stops it."""

    def __init__(self, spec: TaskSpec, run: RunPaths, labels: list[str], identity: str,
                 start_timeout_s: float = START_TIMEOUT_S):
        self.run, self.start_timeout_s = run, start_timeout_s
        self._key = secrets.token_urlsafe(24)
        t = spec.teacher.model_copy(update={
            "kind": "openai", "model": spec.serve.model_name or spec.name,
            "base_url": "http://127.0.0.1:0/v1",  # the real port is set when the server starts
            "logprobs": True, "samples": 1, "temperature": 0.0, "price_in": 0.0, "price_out": 0.0,
            # enough requests in flight for the server to fill a batch of `teacher.batch_size`
            "concurrency": max(spec.teacher.concurrency, spec.teacher.batch_size)})
        self._http = OpenAITeacher(spec.model_copy(update={"teacher": t}), labels, api_key=self._key)
        self.labels = labels
        self.identity = f"served:{identity}"
        self._batch = spec.teacher.batch_size
        self._proc: subprocess.Popen | None = None
        self._log: Path | None = None

    def request(self, text: str) -> dict[str, Any]:
        return self._http.request(text)

    def answer(self, texts: Sequence[str]) -> Iterator[tuple[int, Answer]]:
        if self._proc is None:
            self._start()
        yield from self._http.answer(texts)

    def _start(self) -> None:
        port = _free_port()
        env = dict(os.environ, POTSTILL_SERVED_TEACHER_KEYS=self._key)
        cmd = [sys.executable, "-m", "potstill", "serve", str(self.run.root), "--model", "teacher",
               "--no-routing", "--port", str(port), "--log-level", "warning",
               "--set", "serve.api_keys_env=POTSTILL_SERVED_TEACHER_KEYS",
               "--set", f"serve.max_batch_size={self._batch}", "--set", "serve.log_requests=false"]
        with tempfile.NamedTemporaryFile("w+b", prefix="potstill-teacher-server-", suffix=".log",
                                         delete=False) as logf:
            self._log = Path(logf.name)
            self._proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        log(f"teacher: serving {self.identity.removeprefix('served:')} at {url} (potstill serve "
            "--model teacher --no-routing); labelling over HTTP")
        try:
            _wait_healthy(self._proc, url, self._key, self._log, self.start_timeout_s)
        except BaseException:
            self.close()
            raise
        self._http.base_url = f"{url}/v1"

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None
