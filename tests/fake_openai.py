"""A stand-in OpenAI-compatible chat-completions endpoint for offline tests and benchmarks.

`FakeOpenAI` is a real HTTP/1.1 server (keep-alive, Content-Length bodies) on 127.0.0.1 and a free
port, served by an asyncio event loop in a background thread, so thousands of concurrent requests
cost one thread and no per-connection threads. Use it as a context manager; it yields the
base_url (`http://127.0.0.1:PORT/v1`) and everything stops when the block exits: the listening
socket closes, open connections and any request still hanging are cancelled, the thread joins.

    fake = FakeOpenAI(label_fn={"hello": "greet"}.get, delay_ms=20)
    with fake as base_url:
        ...  # point a client at base_url
    fake.count, fake.max_in_flight, fake.requests[0].body

It answers POST /v1/chat/completions in the chat-completions wire format (id, object, created,
model, choices[].message.content, choices[].logprobs.content[].{token, logprob, bytes,
top_logprobs[]}, usage) and records every request it received (arrival/finish times, JSON body,
Authorization header, the text it extracted, the fault it played), so tests can assert on
retries, waits and concurrency.

It also implements the Batch API's endpoints: `POST /v1/files` (multipart upload, purpose
"batch"), `GET /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches/{id}` and
`GET /v1/batches`. A batch reports `in_progress` for `batch_polls` retrieves (forever while
`batch_hold` is true), then runs every request line through the same model as a real-time
call, each line recorded in `requests` (path `/v1/batches/{id}`) like a paid call, and reports
`completed` with an output file (and an error file for lines whose `fault_fn`/`faults_by_text`
fault is "400" or "500"). `api_log` lists every files/batches request as (method, path).

Behaviour knobs (all keyword arguments):

- `label_fn(text)`: the label to answer with. May return a list of labels: choice j of the k-th
  request for that text then answers `labels[(k + j) % len(labels)]` (sampling that varies).
  Returning None answers a sentence naming no label.
- `text_fn(prompt)`: how the input text is pulled out of the user message (default: what
  follows "Text: " up to the next blank line, else the whole prompt).
- `delay_ms`: fixed service time per request.
- `logprobs` / `confidence` / `tail_confidence`: whether logprobs are returned (only when the
  request asks for them), the probability of the first label token and of later label tokens.
  The remaining first-token mass is split evenly over the first tokens of other labels.
  `logprobs_fn(text, content, top_k)` replaces the generated logprobs entirely (exact control).
- `tokenize(content)`: how the answer is cut into tokens (default: words, "_", punctuation runs;
  a space sticks to the token after it).
- `json_answers`: answer `{"label": "x"}` instead of `x`.
- `honour_n`: return `n` choices when asked (else always one).
- `usage`: fixed (prompt_tokens, completion_tokens) per response instead of the estimate.
- `reject_response_format`: answer 400 to any request carrying `response_format` (an endpoint
  without structured output). `label_fn` may return JSON text: it is sent as the content as is.
- Faults: `faults_by_request={arrival_no: fault}` (1-based), `faults_by_text={text: [fault or
  None, ...]}` (the k-th request for that text plays the k-th entry), or `fault_fn(arrival_no,
  text, attempt_for_text) -> fault | None`. A fault is a `Fault` or one of the kind strings:
  "429" (with Retry-After), "500", "400", "401" / "403" (the key refused),
  "404" (OpenAI's answer to a model it does not have: model_not_found), "hang" (sleep `hang_s`, longer than a client timeout, then
  answer), "malformed" (200 with a truncated JSON body), "no_choices" (200, valid JSON, no
  choices) or "drop" (close the connection without answering).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

FAULT_KINDS = ("429", "500", "400", "401", "403", "404", "hang", "malformed", "no_choices", "drop")


@dataclass(frozen=True)
class Fault:
    kind: str
    retry_after: float | None = 1.0
    """For "429": seconds sent in Retry-After (None sends no header)."""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; one of {FAULT_KINDS}")


@dataclass
class Received:
    """One request as the server saw it."""

    no: int
    """1-based arrival number."""
    t_arrival: float
    """time.monotonic() when the full request had been read."""
    path: str
    body: dict[str, Any] | None
    authorization: str | None
    text: str | None
    attempt_for_text: int
    """0 for the first request carrying this text, 1 for the second, ..."""
    fault: str | None = None
    t_done: float | None = None
    status: int | None = None
    conn: int = 0
    """Which connection it came on (numbered in accept order)."""


_TEXT_RE = re.compile(r"Text: (.*?)(?:\n\n|$)", re.S)
_TOKEN_RE = re.compile(r"\s?[A-Za-z0-9]+|_|\s?[^A-Za-z0-9_\s]+|\s+")


def default_text_fn(prompt: str) -> str:
    m = _TEXT_RE.search(prompt)
    return m.group(1) if m else prompt


def default_tokenize(content: str) -> list[str]:
    tokens = _TOKEN_RE.findall(content)
    assert "".join(tokens) == content, "tokenizer must cover the content exactly"
    return tokens


def _as_fault(f: Fault | str | None) -> Fault | None:
    if f is None or isinstance(f, Fault):
        return f
    return Fault(f)


class FakeOpenAI:
    def __init__(
        self,
        label_fn: Callable[[str], str | Sequence[str] | None] | None = None,
        *,
        labels: Sequence[str] | None = None,
        text_fn: Callable[[str], str] = default_text_fn,
        delay_ms: float = 0.0,
        logprobs: bool = True,
        confidence: float = 0.9,
        tail_confidence: float = 1.0,
        logprobs_fn: Callable[[str, str, int], list[dict[str, Any]]] | None = None,
        tokenize: Callable[[str], list[str]] = default_tokenize,
        json_answers: bool = False,
        honour_n: bool = True,
        usage: tuple[int, int] | None = None,
        reject_response_format: bool = False,
        faults_by_request: dict[int, Fault | str] | None = None,
        faults_by_text: dict[str, Sequence[Fault | str | None]] | None = None,
        fault_fn: Callable[[int, str | None, int], Fault | str | None] | None = None,
        hang_s: float = 30.0,
        record_bodies: bool = True,
        batch_polls: int = 1,
    ):
        self.label_fn = label_fn or (lambda text: None)
        self.labels = list(labels) if labels else None
        """All labels, used to invent first-token alternatives in generated logprobs."""
        self.text_fn = text_fn
        self.delay_s = delay_ms / 1000.0
        self.logprobs = logprobs
        self.confidence = confidence
        self.tail_confidence = tail_confidence
        self.logprobs_fn = logprobs_fn
        self.tokenize = tokenize
        self.json_answers = json_answers
        self.honour_n = honour_n
        self.usage = usage
        self.reject_response_format = reject_response_format
        self.faults_by_request = {k: _as_fault(v) for k, v in (faults_by_request or {}).items()}
        self.faults_by_text = {
            k: [_as_fault(f) for f in v] for k, v in (faults_by_text or {}).items()
        }
        self.fault_fn = fault_fn
        self.hang_s = hang_s
        self.record_bodies = record_bodies

        self.batch_polls = batch_polls
        self.batch_hold = False
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.api_log: list[tuple[str, str]] = []

        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._per_text: dict[str | None, int] = {}
        self._lock = threading.Lock()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conn_tasks: set[asyncio.Task] = set()
        self._conns = 0
        self.port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> str:
        self.start()
        return self.base_url

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve_conn, "127.0.0.1", 0, backlog=4096)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:  # pragma: no cover - port binding failure
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conn_tasks):
            t.cancel()
        if self._conn_tasks:
            await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- what tests read ------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self.requests)

    def for_text(self, text: str) -> list[Received]:
        return [r for r in self.requests if r.text == text]

    def reset(self) -> None:
        """Forget the recorded requests (the fault scripts' per-text counters restart too)."""
        with self._lock:
            self.requests = []
            self._per_text = {}
            self.max_in_flight = self.in_flight

    # -- HTTP -----------------------------------------------------------------------------------
    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        self._conns += 1
        conn = self._conns
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                try:
                    method, target, _version = request_line.decode("latin-1").split()
                except ValueError:
                    return
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = line.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                raw = await reader.readexactly(length) if length else b""
                keep = await self._respond(method, target, headers, raw, writer, conn)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # shutdown: end quietly (asyncio's stream callback logs a cancelled handler task)
            return
        finally:
            self._conn_tasks.discard(task)
            writer.close()

    async def _respond(
        self, method: str, target: str, headers: dict[str, str], raw: bytes,
        writer: asyncio.StreamWriter, conn: int = 0,
    ) -> bool:
        """Answer one request; False when the connection must close."""
        path = target.split("?", 1)[0]
        if path.startswith(("/v1/files", "/v1/batches")):
            with self._lock:
                self.api_log.append((method, path))
            await self._batch_api(method, path, headers, raw, writer)
            return True
        if method != "POST" or not path.endswith("/chat/completions"):
            await self._write(writer, 404, {"error": {"message": f"no route {method} {path}"}})
            return True
        try:
            body = json.loads(raw) if raw else {}
            prompt = _last_user_message(body)
        except (ValueError, TypeError, KeyError):
            await self._write(writer, 400, {"error": {"message": "bad request body"}})
            return True
        text = self.text_fn(prompt) if prompt is not None else None

        with self._lock:
            attempt = self._per_text.get(text, 0)
            self._per_text[text] = attempt + 1
            rec = Received(
                no=len(self.requests) + 1, t_arrival=time.monotonic(), path=path,
                body=body if self.record_bodies else None,
                authorization=headers.get("authorization"), text=text,
                attempt_for_text=attempt, conn=conn,
            )
            self.requests.append(rec)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            fault = self._fault_for(rec.no, text, attempt)
            rec.fault = fault.kind if fault else None
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return await self._play(fault, body, prompt, text, attempt, rec, writer)
        finally:
            self._finish(rec)

    def _finish(self, rec: Received) -> None:
        """Mark `rec` answered (idempotent): stamp t_done and leave the in-flight count."""
        with self._lock:
            if rec.t_done is None:
                rec.t_done = time.monotonic()
                self.in_flight -= 1

    def _fault_for(self, no: int, text: str | None, attempt: int) -> Fault | None:
        if no in self.faults_by_request:
            return self.faults_by_request[no]
        script = self.faults_by_text.get(text) if text is not None else None
        if script and attempt < len(script) and script[attempt] is not None:
            return script[attempt]
        if self.fault_fn is not None:
            return _as_fault(self.fault_fn(no, text, attempt))
        return None

    async def _play(
        self, fault: Fault | None, body: dict[str, Any], prompt: str | None, text: str | None,
        attempt: int, rec: Received, writer: asyncio.StreamWriter,
    ) -> bool:
        writer = _Stamping(writer, lambda: self._finish(rec))
        if self.reject_response_format and body.get("response_format") is not None:
            rec.status = 400
            await self._write(writer, 400, _error("response_format is not supported",
                                                  "invalid_request_error"))
            return True
        if fault is not None:
            if fault.kind == "drop":
                rec.status = 0
                return False
            if fault.kind == "429":
                extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
                rec.status = 429
                await self._write(writer, 429, _error("rate limited", "rate_limit_exceeded"), extra)
                return True
            if fault.kind == "500":
                rec.status = 500
                await self._write(writer, 500, _error("internal error", "server_error"))
                return True
            if fault.kind == "400":
                rec.status = 400
                await self._write(writer, 400, _error("bad request", "invalid_request_error"))
                return True
            if fault.kind == "404":
                rec.status = 404
                await self._write(writer, 404, _error("The model does not exist or you do not have "
                                                      "access to it.", "model_not_found"))
                return True
            if fault.kind in ("401", "403"):
                rec.status = int(fault.kind)
                await self._write(writer, rec.status, _error("Incorrect API key provided", "invalid_api_key"))
                return True
            if fault.kind == "malformed":
                rec.status = 200
                await self._write_raw(writer, 200, b'{"id": "chatcmpl-broken", "choices": [{"mess')
                return True
            if fault.kind == "no_choices":
                rec.status = 200
                await self._write(writer, 200, {"id": "chatcmpl-empty", "object": "chat.completion"})
                return True
            if fault.kind == "hang":
                # the client gives up first; if it did not, answer normally after the hang
                await asyncio.sleep(self.hang_s)
        rec.status = 200
        await self._write(writer, 200, self._completion(body, prompt or "", text, attempt))
        return True

    async def _write(
        self, writer: asyncio.StreamWriter, status: int, payload: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        await self._write_raw(writer, status, json.dumps(payload).encode(), headers)

    async def _write_raw(
        self, writer: asyncio.StreamWriter, status: int, data: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
                  404: "Not Found", 429: "Too Many Requests",
                  500: "Internal Server Error"}.get(status, "Status")
        head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
                f"Content-Length: {len(data)}", "Connection: keep-alive"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        await writer.drain()

    # -- the Batch API ----------------------------------------------------------------------------
    async def _batch_api(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                         writer: asyncio.StreamWriter) -> None:
        parts = path.strip("/").split("/")  # v1, files|batches, [id], [content]
        if parts[1] == "files" and method == "POST" and len(parts) == 2:
            content, filename, purpose = _multipart_file(headers.get("content-type", ""), raw)
            if content is None:
                await self._write(writer, 400, _error("no file part", "invalid_request_error"))
                return
            fid = f"file-{uuid.uuid4().hex[:16]}"
            obj = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                   "filename": filename or "upload.jsonl", "purpose": purpose or "batch",
                   "status": "processed"}
            self.files[fid] = {**obj, "content": content}
            await self._write(writer, 200, obj)
            return
        if parts[1] == "files" and method == "GET" and len(parts) == 4 and parts[3] == "content":
            f = self.files.get(parts[2])
            if f is None:
                await self._write(writer, 404, _error(f"no file {parts[2]}", "not_found"))
                return
            await self._write_raw(writer, 200, f["content"])
            return
        if parts[1] == "batches" and method == "POST" and len(parts) == 2:
            body = json.loads(raw or b"{}")
            if body.get("input_file_id") not in self.files:
                await self._write(writer, 400, _error("unknown input_file_id", "invalid_request_error"))
                return
            bid = f"batch_{uuid.uuid4().hex[:16]}"
            self.batches[bid] = {
                "id": bid, "object": "batch", "endpoint": body.get("endpoint"),
                "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window"),
                "status": "validating", "created_at": int(time.time()), "output_file_id": None,
                "error_file_id": None, "errors": None, "metadata": body.get("metadata"),
                "request_counts": {"total": 0, "completed": 0, "failed": 0}, "_polls": 0}
            await self._write(writer, 200, _public(self.batches[bid]))
            return
        if parts[1] == "batches" and method == "GET" and len(parts) == 2:
            data = [_public(b) for b in reversed(list(self.batches.values()))]
            await self._write(writer, 200, {"object": "list", "data": data, "has_more": False,
                                            "first_id": data[0]["id"] if data else None,
                                            "last_id": data[-1]["id"] if data else None})
            return
        if parts[1] == "batches" and method == "GET" and len(parts) == 3:
            b = self.batches.get(parts[2])
            if b is None:
                await self._write(writer, 404, _error(f"no batch {parts[2]}", "not_found"))
                return
            if b["status"] not in ("completed", "failed", "expired", "cancelled"):
                b["_polls"] += 1
                if self.batch_hold or b["_polls"] <= self.batch_polls:
                    b["status"] = "in_progress"
                else:
                    self._run_batch(b)
            await self._write(writer, 200, _public(b))
            return
        await self._write(writer, 404, _error(f"no route {method} {path}", "not_found"))

    def _run_batch(self, b: dict[str, Any]) -> None:
        """Answer every line of the batch's input file (each one recorded as a paid request)."""
        out, err = [], []
        for line in self.files[b["input_file_id"]]["content"].decode().splitlines():
            if not line.strip():
                continue
            req = json.loads(line)
            body = req["body"]
            prompt = _last_user_message(body)
            text = self.text_fn(prompt) if prompt is not None else None
            with self._lock:
                attempt = self._per_text.get(text, 0)
                self._per_text[text] = attempt + 1
                rec = Received(no=len(self.requests) + 1, t_arrival=time.monotonic(),
                               path=f"/v1/batches/{b['id']}", body=body if self.record_bodies else None,
                               authorization=None, text=text, attempt_for_text=attempt)
                self.requests.append(rec)
            fault = self._fault_for(rec.no, text, attempt)
            rec.fault = fault.kind if fault else None
            rec.t_done = time.monotonic()
            if fault is not None and fault.kind in ("400", "500"):
                rec.status = int(fault.kind)
                err.append({"id": f"batch_req_{rec.no}", "custom_id": req["custom_id"],
                            "response": {"status_code": rec.status, "request_id": f"req_{rec.no}",
                                         "body": _error("failed", "server_error")}, "error": None})
                continue
            rec.status = 200
            out.append({"id": f"batch_req_{rec.no}", "custom_id": req["custom_id"],
                        "response": {"status_code": 200, "request_id": f"req_{rec.no}",
                                     "body": self._completion(body, prompt or "", text, attempt)},
                        "error": None})
        for key, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                fid = f"file-{uuid.uuid4().hex[:16]}"
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                self.files[fid] = {"id": fid, "object": "file", "bytes": len(data),
                                   "created_at": int(time.time()), "filename": f"{key}.jsonl",
                                   "purpose": "batch_output", "status": "processed", "content": data}
                b[key] = fid
        b["status"] = "completed"
        b["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}

    # -- the model ------------------------------------------------------------------------------
    def _completion(
        self, body: dict[str, Any], prompt: str, text: str | None, attempt: int
    ) -> dict[str, Any]:
        n = int(body.get("n") or 1) if self.honour_n else 1
        want_lp = bool(body.get("logprobs")) and self.logprobs
        top_k = int(body.get("top_logprobs") or 0)
        answer = self.label_fn(text) if text is not None else None
        choices = []
        out_tokens = 0
        for j in range(n):
            if isinstance(answer, (list, tuple)):
                label = answer[(attempt + j) % len(answer)]
            else:
                label = answer
            content = self._content(label)
            tokens = self.tokenize(content)
            out_tokens += len(tokens)
            choice: dict[str, Any] = {
                "index": j,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
            if want_lp:
                if self.logprobs_fn is not None:
                    lp = self.logprobs_fn(text or "", content, top_k)
                else:
                    lp = self._logprobs(content, tokens, label, top_k)
                choice["logprobs"] = {"content": lp, "refusal": None}
            choices.append(choice)
        if self.usage is not None:
            prompt_tokens, completion_tokens = self.usage
        else:
            prompt_tokens, completion_tokens = len(self.tokenize(prompt)), out_tokens
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _content(self, label: str | None) -> str:
        if label is None:
            return "I cannot tell."
        return json.dumps({"label": label}) if self.json_answers else label

    def _logprobs(
        self, content: str, tokens: list[str], label: str | None, top_k: int
    ) -> list[dict[str, Any]]:
        """Logprobs for `tokens`: the label's first token has p=confidence, the rest of that
        position's mass is spread over other labels' first tokens; later label tokens have
        p=tail_confidence; scaffolding tokens are certain."""
        start = content.rfind(label) if label else -1
        end = start + len(label) if label else -1
        out = []
        pos = 0
        first_done = False
        for tok in tokens:
            t_start, t_end = pos, pos + len(tok)
            pos = t_end
            in_label = start >= 0 and t_start < end and t_end > start
            if in_label and not first_done:
                first_done = True
                p = self.confidence
                lead = content[t_start:start] if start > t_start else ""
                alts = self._alternatives(label or "", lead, tok, max(top_k - 1, 0), 1 - p)
            elif in_label:
                p, alts = self.tail_confidence, []
            else:
                p, alts = 1.0, []
            entry_top = [_lp_entry(tok, p)] + [_lp_entry(t, q) for t, q in alts]
            out.append({**_lp_entry(tok, p), "top_logprobs": entry_top[:top_k]})
        return out

    def _alternatives(
        self, label: str, lead: str, chosen: str, k: int, mass: float
    ) -> list[tuple[str, float]]:
        if not self.labels or k == 0 or mass <= 0:
            return []
        firsts: list[str] = []
        for other in self.labels:
            if other == label:
                continue
            tok = lead + self.tokenize(other)[0].lstrip()
            if tok != chosen and tok not in firsts:
                firsts.append(tok)
        firsts = firsts[:k]
        return [(t, mass / len(firsts)) for t in firsts] if firsts else []


class _Stamping:
    """A writer that marks the request finished just before handing the response over: the
    client may read it, and send its next request, before the handler's own cleanup runs, and
    that next request must not be counted as overlapping this one."""

    def __init__(self, writer: asyncio.StreamWriter, finish: Callable[[], None]):
        self._writer, self._finish = writer, finish

    def write(self, data: bytes) -> None:
        self._finish()
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()


def _lp_entry(token: str, p: float) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": math.log(p) if p > 0 else -9999.0,
        "bytes": list(token.encode()),
    }


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def _last_user_message(body: dict[str, Any]) -> str | None:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):  # content parts
                return "".join(p.get("text", "") for p in c if isinstance(p, dict))
            return c
    return None


def _public(b: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in b.items() if not k.startswith("_")}


def _multipart_file(content_type: str, raw: bytes) -> tuple[bytes | None, str | None, str | None]:
    """(file bytes, filename, purpose) of a multipart/form-data body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        return None, None, None
    content = filename = purpose = None
    for part in raw.split(b"--" + m.group(1).encode()):
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        if data.endswith(b"\r\n"):
            data = data[:-2]
        h = head.decode("latin-1")
        name = re.search(r'name="([^"]*)"', h)
        fn = re.search(r'filename="([^"]*)"', h)
        if name and name.group(1) == "file":
            content, filename = data, fn.group(1) if fn else None
        elif name and name.group(1) == "purpose":
            purpose = data.decode()
    return content, filename, purpose
