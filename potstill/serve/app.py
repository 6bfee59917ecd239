"""The OpenAI-compatible server: the student answers, the teacher is the safety net.

`create_app(ServeConfig(run_dir))` builds everything (nothing is built at import): the student
with its calibration (recalibrated when missing or stale), the teacher the spec names, the
router, the queue, the metrics. `serve_command` runs it under uvicorn. `--model teacher
--no-routing` serves the run's teacher/ model as a plain classifier instead, e.g. as the teacher
of another run (the `openai` teacher backend works against any potstill server).

Endpoints (bearer auth on every /v1/* and /metrics route when keys are configured):

- `POST /v1/chat/completions` — the OpenAI wire format. The input is the last user message
  (text or text parts); when it is a potstill teacher prompt (the served spec's
  `prompt_template` or the default one), the `{text}` part of it, so a potstill server can be the
  teacher of another run. The answer is the label (`kind: extract`: the canonical JSON of the
  extracted object, serve/tagger.py), as `choices[0].message.content`. Extra
  top-level fields: `route` (student | teacher | degraded), `reasons`, `confidence` (the student's
  calibrated confidence), `ood_score`, `degraded`. `logprobs: true` returns the answer as one
  token whose logprob is log p(label), with the other labels as `top_logprobs` (calibrated
  student probabilities, or the teacher's when it answered). `n` repeats the one answer;
  `stream: true` sends it as one server-sent chunk. `usage` is estimated (4 characters a token,
  the answer counted once per choice).
- `GET /v1/models` — the served model (and, for a causal-LM student, each LoRA adapter).
- `POST /v1/adapters` `{"name", "path"}` / `DELETE /v1/adapters/{name}` — a causal-LM student
  only: load or unload a LoRA adapter on the served base model at runtime, served under `name`
  (the `model` field picks it); see serve/causal.py.
- `POST /v1/classify` — `{"inputs": [text, ...], "top_k": 0}` -> one result per input, each with
  its own `id` for feedback.
- `POST /v1/feedback` — `{"request_id": id, "answer": label | "wrong"}`: queued with the input
  (`kind: extract`: the answer is the right JSON object, checked against the schema).
- `GET /health` (never needs a key), `GET /metrics` (Prometheus).

Every client error is a 4xx JSON body in OpenAI's shape:
`{"error": {"message", "type": "invalid_request_error", "param", "code"}}`.
"""


import asyncio
import dataclasses
import hmac
import json
import logging
import math
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import typer

from ..errors import PotstillError
from ..paths import RunPaths
from ..spec import DEFAULT_TEMPLATE, TaskSpec
from ..stages.prepare import load_inputs
from ..tasks import get_task
from .backends import build_backend
from .template_match import TemplateMatcher

log = logging.getLogger("potstill.serve")

OFF_LOOP_CHARS = 32_768
"""Bodies larger than this are parsed and validated in a worker thread, off the event loop."""

ENDPOINTS = ("/v1/chat/completions", "/v1/classify", "/v1/feedback", "/v1/models", "/health",
             "/metrics", "/v1/adapters")


# -- configuration -------------------------------------------------------------------------------
@dataclass
class ServeConfig:
    """What `create_app` builds from. Only `run_dir` is required; the rest overrides pieces
    (tests inject a teacher or a student; the bench points the store elsewhere)."""

    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    """`--set serve.x=y` style overrides of the run's resolved spec."""
    spec: TaskSpec | None = None
    teacher: Any = "auto"
    """"auto": the teacher the spec names (none, with a warning, when it cannot be built);
    None: no teacher (escalations are answered degraded); or any `Teacher`."""
    student: Any = None
    """A `StudentBackend`; default: the run's classifier with its calibration."""
    db_path: Path | None = None
    """The store for the queue and request log; default: the run's potstill.db."""
    api_keys: list[str] | None = None
    """Accepted bearer keys; default: read from the env var `serve.api_keys_env`."""
    admin_keys: list[str] | None = None
    """Keys that may also administer the server (adapters, feedback); default: read from the
    env var `serve.admin_keys_env`."""
    allow_local_admin: bool = False
    """With no admin key: let callers on the loopback interface use the admin endpoints (the
    `--allow-local-admin` flag; `serve_command` refuses it unless the server binds to loopback)."""
    teacher_share: float | None = None
    """Use the calibration table's row nearest this share instead of the calibrated point."""
    model: str = "student"
    """Which of the run's models to serve: student, teacher or baseline."""
    routing: bool = True
    """False: answer every input with the served model (no escalation, no queue, no teacher):
    for serving a big model as the teacher of another run."""
    recalibrate: bool = True
    """Calibrate when calibration.json is missing or stale (else refuse to start)."""
    adapters: dict[str, str | Path] = field(default_factory=dict)
    """Causal-LM students: more LoRA adapters (served name -> directory) on the same base model,
    each served under its name (serve/causal.py)."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# -- inputs --------------------------------------------------------------------------------------
def template_pattern(template: str) -> TemplateMatcher:
    """A matcher of prompts rendered from `template`, capturing the {text} field in linear time
    (serve/template_match.py; a regex here backtracked on crafted input, issue 11)."""
    return TemplateMatcher(template)


def extract_input(message: str, patterns: Sequence[TemplateMatcher]) -> str:
    """The text to classify: the {text} of a potstill teacher prompt, else the whole message."""
    for p in patterns:
        m = p.fullmatch(message)
        if m is not None:
            return m.group("text")
    return message


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


MAX_JSON_CONTAINERS = 100_000
MAX_JSON_NUMBERS = 10_000


class _Counted:
    """parse_int/parse_float hooks that stop a body holding more than MAX_JSON_NUMBERS numbers."""

    def __init__(self) -> None:
        self.n = 0

    def _tick(self) -> None:
        self.n += 1
        if self.n > MAX_JSON_NUMBERS:
            raise ValueError(f"more than {MAX_JSON_NUMBERS} numbers in one body")

    def int(self, s: str) -> int:
        self._tick()
        return int(s)

    def float(self, s: str) -> float:
        self._tick()
        return float(s)


def parse_json_body(text: str) -> Any:
    """A request body as JSON, or ApiError 400. Every way `json.loads` can refuse a body is a
    client error: bad syntax, nesting too deep (RecursionError), an integer over Python's
    int-size guard (a ValueError: a 5,000-digit number gave a 500 before, issue 11), and
    NaN/Infinity, which are not JSON.

    The parser holds the GIL from start to end (in a worker thread too), and 1 MB of `[0,0,...]`
    or `[[],[],...]` took 150-300 ms of it on a busy 2-core machine: a request that stalls every
    other one. So a body may hold at most MAX_JSON_CONTAINERS `[`/`{` characters (counted on the
    raw text in about a millisecond, brackets inside strings included: 240 inputs of 4,000
    characters of JSON logs stay under it) and MAX_JSON_NUMBERS numbers (counted while parsing;
    the parse stops there). A body just under the bracket bound still costs tens of ms."""
    containers = text.count("[") + text.count("{")
    if containers > MAX_JSON_CONTAINERS:
        raise ApiError(400, f"the body holds {containers} '[' / '{{' characters; the limit is "
                       f"{MAX_JSON_CONTAINERS}", "too_complex")
    counted = _Counted()
    try:
        return json.loads(text, parse_constant=_no_constant, parse_int=counted.int,
                          parse_float=counted.float)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"invalid JSON: {e}", "invalid_json") from None
    except RecursionError:
        raise ApiError(400, "invalid JSON: nested too deeply", "invalid_json") from None
    except ValueError as e:
        raise ApiError(400, f"invalid JSON: {_clip(str(e), 200)}", "invalid_json") from None


def _clip(s: str, n: int) -> str:
    """At most `n` characters of `s` (for echoing client input back in an error)."""
    return s if len(s) <= n else s[: n - 1] + "…"


def _validate_text(text: Any, max_chars: int, param: str) -> str:
    if not isinstance(text, str):
        raise ApiError(400, f"{param} must be a string", "invalid_type", param)
    if not text.strip():
        raise ApiError(400, f"{param} is empty", "empty_input", param)
    if len(text) > max_chars:
        raise ApiError(400, f"{param} is {len(text)} characters; the limit is {max_chars}",
                       "input_too_long", param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{param} is not valid UTF-8 (it holds a lone surrogate)",
                       "invalid_encoding", param) from None
    return text


def _strict(model_cls, obj: Any):
    from pydantic import ValidationError

    if not isinstance(obj, dict):
        raise ApiError(400, "the request body must be a JSON object", "invalid_type")
    try:
        return model_cls.model_validate(obj, strict=True)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(x) for x in err["loc"] if not (isinstance(x, str) and ("[" in x or x in ("str",)))]
        param = ".".join(loc) or None
        raise ApiError(400, f"{param}: {err['msg']}" if param else err["msg"],
                       "invalid_value" if err["type"] != "missing" else "missing_field", param) from None


def _models():
    """Request models (pydantic), built on first use."""
    from pydantic import BaseModel, ConfigDict, Field

    class Part(BaseModel):
        model_config = ConfigDict(extra="allow")
        type: str
        text: Optional[str] = None

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")
        role: str
        content: Optional[str | list[Part]] = None

    class Chat(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: str
        messages: list[Message] = Field(min_length=1)
        logprobs: Optional[bool] = None
        top_logprobs: Optional[int] = Field(None, ge=0, le=20)
        n: Optional[int] = Field(None, ge=1, le=16)
        stream: Optional[bool] = None

    class Classify(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inputs: list[Any] = Field(min_length=1)
        model: Optional[str] = None
        top_k: int = Field(0, ge=0, le=100)

    class Feedback(BaseModel):
        model_config = ConfigDict(extra="forbid")
        request_id: str = Field(min_length=1, max_length=200)
        answer: str = Field(min_length=1)
        comment: Optional[str] = Field(None, max_length=2000)

    return Chat, Classify, Feedback


# -- metrics -------------------------------------------------------------------------------------
class Metrics:
    """Prometheus metrics in a registry of their own (several apps can live in one process)."""

    def __init__(self, queue_depth) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        lat = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.http = Counter("potstill_http_requests", "HTTP requests by endpoint and status",
                            ["endpoint", "status"], registry=r)
        self.latency = Histogram("potstill_request_seconds", "Request latency by endpoint",
                                 ["endpoint"], buckets=lat, registry=r)
        self.answers = Counter("potstill_answers", "Answered inputs by route", ["route"], registry=r)
        self.escalations = Counter("potstill_escalations", "Inputs escalated, by reason",
                                   ["reason"], registry=r)
        self.rate = Gauge("potstill_escalation_rate",
                          "Share of answered inputs the router sent to the teacher, since start",
                          registry=r)
        self.batch_size = Histogram("potstill_student_batch_size", "Inputs per student forward pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.student_seconds = Histogram("potstill_student_batch_seconds",
                                         "Student forward pass time per batch", buckets=lat, registry=r)
        self.teacher_seconds = Histogram("potstill_teacher_seconds",
                                         "Time a request waited for the teacher", buckets=lat, registry=r)
        self.teacher_errors = Counter("potstill_teacher_errors",
                                      "Escalations the teacher did not answer, by kind", ["kind"],
                                      registry=r)
        self.shadow_checks = Counter("potstill_shadow_checks", "Shadow checks by outcome",
                                     ["outcome"], registry=r)
        self.queue_items = Counter("potstill_queue_items", "Items added to the queue, by kind", ["kind"],
                              registry=r)
        self.depth = Gauge("potstill_queue_depth", "Queue items no training round has used yet",
                           registry=r)
        self.depth.set_function(queue_depth)
        self._n = 0
        self._escalated = 0

    # RouterEvents
    def student_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.student_seconds.observe(seconds)

    def routed(self, r) -> None:
        self.answers.labels(r.route).inc()
        self._n += 1
        if r.reasons:
            self._escalated += 1
            for reason in r.reasons:
                self.escalations.labels(reason).inc()
        self.rate.set(self._escalated / self._n)

    def teacher_answer(self, seconds: float, error: str | None) -> None:
        self.teacher_seconds.observe(seconds)
        if error is not None:
            self.teacher_errors.labels(error).inc()

    def teacher_skipped(self, reason: str) -> None:
        self.teacher_errors.labels(reason).inc()

    def watch_breaker(self, breaker) -> None:
        """Export the teacher circuit breaker's state (serve/breaker.py)."""
        from prometheus_client import Gauge

        from .breaker import STATES

        g = Gauge("potstill_teacher_state", "Teacher circuit breaker: 1 for the current state",
                  ["state"], registry=self.registry)
        for st in STATES:
            g.labels(st).set_function(lambda st=st: 1.0 if breaker.state == st else 0.0)
        Gauge("potstill_teacher_consecutive_failures", "Teacher failures in a row",
              registry=self.registry).set_function(lambda: breaker.consecutive)
        Gauge("potstill_teacher_breaker_opens", "Times the teacher circuit breaker opened",
              registry=self.registry).set_function(lambda: breaker.opens)

    def shadow(self, outcome: str) -> None:
        self.shadow_checks.labels(outcome).inc()

    def queued(self, kind: str) -> None:
        self.queue_items.labels(kind).inc()


class _HttpMetrics:
    """Pure ASGI middleware: counts and times every HTTP request by endpoint and status."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.http.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)


class _HotRoutes:
    """Pure ASGI middleware: POST on the model endpoints goes straight to its handler, past
    FastAPI's router, dependency solver and per-route wrappers. Under load those layers were a
    third of the event loop's time per request. Where the event loop is the bottleneck (a
    cheap model), that gave 1.3x the requests (docs/RELIABILITY.md, section 3); where the
    model's forward pass is, a few percent (docs/RESULTS.md, bench/serve_load.py). The handlers
    take the request and return a response, so nothing they need is skipped; the routes stay
    registered with FastAPI, which answers whatever this does not take (other methods, a
    `root_path` mount). An `ApiError` becomes its response through the app's own handler; any
    other exception propagates to the server-error handler above, as from a routed endpoint."""

    def __init__(self, app, routes: dict[str, Any], on_api_error: Any):
        from starlette.requests import Request

        self.app, self.routes, self.on_api_error, self.request = app, routes, on_api_error, Request

    async def __call__(self, scope, receive, send):
        handler = (self.routes.get(scope["path"]) if scope["type"] == "http"
                   and scope["method"] == "POST" and not scope.get("root_path") else None)
        if handler is None:
            return await self.app(scope, receive, send)
        request = self.request(scope, receive, send)
        try:
            response = await handler(request)
        except ApiError as e:
            response = await self.on_api_error(request, e)
        await response(scope, receive, send)


# -- building the pieces -------------------------------------------------------------------------
@dataclass
class Service:
    spec: TaskSpec
    run: RunPaths
    model_name: str
    student: Any
    router: Any
    queue: Any
    store: Any
    metrics: Metrics
    api_keys: list[str]
    patterns: list[TemplateMatcher]
    calibration: dict[str, Any] | None
    policy: Any
    teacher_identity: str | None


def _read_keys(env: str) -> list[str]:
    raw = os.environ.get(env, "")
    return [k.strip() for k in raw.split(",") if k.strip()]


def create_app(config: ServeConfig):
    """The FastAPI app for a run directory (see the module doc)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from ..store import Store
    from .calibrate import load_run_spec
    from .queue import ReviewQueue
    from .router import Policy, Router, TeacherClient

    run = RunPaths(Path(config.run_dir))
    spec = config.spec or load_run_spec(run.root, config.overrides)
    if spec.serve.threads is None:  # one core stays with the event loop: serve/workers.py
        from .workers import worker_threads

        spec = spec.model_copy(update={"serve": spec.serve.model_copy(update={"threads": worker_threads(1)})})
    task = get_task(spec.kind)
    sv = spec.serve
    cal = None
    point = None
    if config.student is None:  # the backend of the run's student kind: serve/backends.py
        student, cal, policy, point = build_backend(spec, run, config)
    elif config.adapters:
        raise PotstillError("adapters are served on a causal-LM student (student.kind causal_lm)")
    else:
        student = config.student
        policy = Policy(sv.confidence_threshold, sv.ood_threshold, frozenset(sv.high_stakes),
                        sv.high_stakes_prob)
    bad = [l for l in sv.high_stakes if l not in student.labels]
    if bad:
        raise PotstillError(f"serve.high_stakes names labels the student does not have: {bad}")
    if not config.routing:
        policy = Policy()  # no gate fires: the served model answers everything
        config = dataclasses.replace(config, teacher=None)
    store = Store(config.db_path or run.db)
    queue = ReviewQueue(store, log_requests=sv.log_requests)
    metrics = Metrics(lambda: queue.depth)

    teacher = config.teacher
    if isinstance(teacher, str) and teacher == "auto":
        from ..teachers import make_teacher

        try:
            teacher = make_teacher(spec, run, list(student.labels) or load_inputs(run).labels, realtime=True)
        except PotstillError as e:  # a mistake in the teacher's config: say so, serve nothing
            raise PotstillError(f"the teacher cannot be built ({e}); fix the spec's teacher, or serve "
                                "without a safety net with --no-teacher") from e
        if task.answer_is_text:  # the teacher's whole reply is the answer, checked as the student's
            from .causal import TextTeacher, span_snapper

            teacher = TextTeacher(teacher, parse=lambda text: task.serve_answer(text, [], spec.json_schema),
                                  snap=span_snapper(spec))
    breaker = None
    if teacher is not None:
        from .breaker import CircuitBreaker

        breaker = CircuitBreaker(sv.teacher_breaker_failures, sv.teacher_breaker_cooldown_s,
                                 on_change=lambda old, new: _breaker_moved(old, new, breaker))
        metrics.watch_breaker(breaker)
    tclient = (TeacherClient(teacher, store, spec.spec_hash(), workers=sv.teacher_workers,
                             max_batch=max(1, spec.teacher.concurrency), breaker=breaker,
                             deadline_s=0.9 * sv.teacher_timeout_s)
               if teacher is not None else None)

    def new_router(st, pol, cls=Router):
        return cls(st, pol, queue, tclient, batching=sv.batching,
                   window_ms=sv.batch_window_ms, adaptive_window=sv.adaptive_window,
                   max_batch_size=sv.max_batch_size,
                   teacher_timeout_s=sv.teacher_timeout_s, shadow_share=sv.shadow_share,
                   shadow_max_pending=sv.shadow_max_pending, seed=sv.seed, events=metrics)

    router = new_router(student, policy)
    # a causal-LM student with LoRA adapters: one router (one micro-batcher) per adapter, so a
    # batch never mixes adapters (serve/causal.py); the main router owns the teacher client
    host = getattr(student, "host", None)
    routers: dict[str, Any] = {sv.model_name or spec.name: router}
    if host is not None:
        from .causal import AdapterRouter

        for name in host.names:
            if name not in routers:
                routers[name] = new_router(host.view(name), policy, AdapterRouter)
    keys = config.api_keys if config.api_keys is not None else _read_keys(sv.api_keys_env)
    admin_keys = (config.admin_keys if config.admin_keys is not None
                  else _read_keys(sv.admin_keys_env))
    started_adapters = len(routers)
    feedback_lock = asyncio.Lock()  # the duplicate check and the insert of one feedback item
    templates = [spec.prompt_template] + ([DEFAULT_TEMPLATE] if spec.prompt_template != DEFAULT_TEMPLATE else [])
    svc = Service(spec=spec, run=run, model_name=sv.model_name or spec.name, student=student,
                  router=router, queue=queue, store=store, metrics=metrics, api_keys=keys,
                  patterns=[template_pattern(t) for t in templates], calibration=cal, policy=policy,
                  teacher_identity=teacher.identity if teacher is not None else None)
    Chat, Classify, Feedback = _models()

    @asynccontextmanager
    async def lifespan(app):
        await queue.start()
        await router.start()
        for r in routers.values():
            if r is not router:
                await r.start()
        log.info("serving %s: student %s, teacher %s, auth %s, admin %s", svc.model_name,
                 student.identity, svc.teacher_identity or "none",
                 f"{len(keys)} key(s)" if keys else "off",
                 f"{len(admin_keys)} key(s)" if admin_keys
                 else ("loopback callers (--allow-local-admin)" if config.allow_local_admin else "off"))
        try:
            yield
        finally:
            for r in list(routers.values()):
                if r is not router:
                    await r.stop()
            await router.stop()
            await queue.stop()
            store.close()

    app = FastAPI(title="potstill", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.potstill = svc

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), exc.status,
                            headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        msg = (f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405)
               else str(exc.detail))
        return JSONResponse(error_body(msg, "invalid_request_error", None, code), exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):  # pragma: no cover
        return JSONResponse(error_body(str(exc.errors()[0].get("msg")), code="invalid_value"), 400)

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(error_body("internal server error", "server_error", None, "internal_error"), 500)

    def bearer(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None

    def auth(request: Request) -> None:
        """Model endpoints: any model key or admin key (no check when no model key is set)."""
        if not keys:
            return
        token = bearer(request)
        if token is None:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", "invalid_api_key")
        if not (_key_in(token, keys) | _key_in(token, admin_keys)):
            raise ApiError(401, "invalid API key", "invalid_api_key")

    def admin(request: Request) -> None:
        """Admin endpoints (adapters, feedback that trains the next round): an admin key; with
        none configured, only loopback callers of a server started with --allow-local-admin."""
        auth(request)
        if admin_keys:
            token = bearer(request)
            if token is None:
                raise ApiError(401, "missing admin key: send 'Authorization: Bearer <admin key>'",
                               "invalid_api_key")
            if not _key_in(token, admin_keys):
                if _key_in(token, keys):
                    raise ApiError(403, "this key may call the model but not administer the server "
                                   f"(admin keys: {sv.admin_keys_env})", "admin_required")
                raise ApiError(401, "invalid admin key", "invalid_api_key")
            return
        client = request.client.host if request.client else None
        if config.allow_local_admin and _loopback(client):
            return
        raise ApiError(403, "admin endpoints are off: set admin keys in "
                       f"{sv.admin_keys_env}, or serve on 127.0.0.1 with --allow-local-admin",
                       "admin_disabled")

    async def read_body(request: Request) -> str:
        """The body as text: size-checked (413) while it streams in, UTF-8-checked (400)."""
        cl = request.headers.get("content-length")
        if cl is not None:
            try:
                if int(cl) > sv.max_body_bytes:
                    raise ApiError(413, f"request body over {sv.max_body_bytes} bytes", "body_too_large")
            except ValueError:
                raise ApiError(400, "bad Content-Length header", "invalid_header") from None
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > sv.max_body_bytes:
                raise ApiError(413, f"request body over {sv.max_body_bytes} bytes", "body_too_large")
        if not body:
            raise ApiError(400, "empty request body; send a JSON object", "invalid_json")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ApiError(400, f"request body is not valid UTF-8 (byte {e.start})", "invalid_encoding") from None

    async def read_json(request: Request) -> Any:
        text = await read_body(request)
        if len(text) > OFF_LOOP_CHARS:
            return await asyncio.to_thread(parse_json_body, text)
        return parse_json_body(text)

    async def read_request(model_cls, request: Request):
        """The body parsed and validated against `model_cls`; a large body in a worker thread,
        so parsing ~1 MB of JSON (or validating 30,000 messages) never stalls the event loop
        and the requests it serves (/health included)."""
        text = await read_body(request)

        def parse():
            obj = parse_json_body(text)
            msgs = obj.get("messages") if isinstance(obj, dict) else None
            if isinstance(msgs, list) and len(msgs) > sv.max_messages:  # before validating them all
                raise ApiError(400, f"{len(msgs)} messages; the limit is {sv.max_messages}",
                               "too_many_messages", "messages")
            return _strict(model_cls, obj)

        if len(text) > OFF_LOOP_CHARS:
            return await asyncio.to_thread(parse)
        return parse()

    def check_model(name: str | None, required: bool):
        """The router of the model (the adapter, for a causal-LM student) a request names."""
        if name is None and not required:
            return router
        if name not in routers:
            raise ApiError(404, f"the model {_clip(repr(name), 100)} does not exist; this server serves "
                           f"{', '.join(repr(n) for n in routers)}", "model_not_found", "model")
        return routers[name]

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        auth(request)
        req = await read_request(Chat, request)
        rt = check_model(req.model, True)
        content = None
        for i in range(len(req.messages) - 1, -1, -1):
            m = req.messages[i]
            if m.role == "user":
                content = m.content
                if isinstance(content, list):
                    content = "".join(p.text or "" for p in content if p.type == "text")
                param = f"messages.{i}.content"
                break
        if content is None:
            raise ApiError(400, "no user message with text content", "missing_user_message", "messages")
        text = extract_input(_validate_text(content, sv.max_input_chars, param), svc.patterns)
        _validate_text(text, sv.max_input_chars, param)
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        (r,) = await rt.route([text], [rid])
        n = req.n or 1
        want_lp = bool(req.logprobs)
        lp = _logprobs(r, rt.student.labels, req.top_logprobs or 0) if want_lp else None
        created = int(time.time())
        extra = {"route": r.route, "reasons": r.reasons, "confidence": _f(r.student.confidence),
                 "ood_score": _f(r.student.ood_score), "degraded": r.route == "degraded"}
        prompt_tokens, completion_tokens = _token_estimate(content), n * _token_estimate(r.label or "")
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        if req.stream:
            return StreamingResponse(_sse(rid, created, req.model, r.label, lp, n, extra),
                                     media_type="text/event-stream")
        return _json({
            "id": rid, "object": "chat.completion", "created": created, "model": req.model,
            "system_fingerprint": f"potstill-{rt.student.identity}",
            "choices": [{"index": i, "message": {"role": "assistant", "content": r.label, "refusal": None},
                         "logprobs": lp, "finish_reason": "stop"} for i in range(n)],
            "usage": usage, **extra,
        })

    @app.get("/v1/models")
    async def models(request: Request):
        auth(request)
        return {"object": "list", "data": [{"id": name, "object": "model",
                                            "created": 0, "owned_by": "potstill"}
                                           for name in routers]}

    @app.post("/v1/adapters")
    async def add_adapter(request: Request):
        """Load a LoRA adapter on the served base model: {"name", "path"[, "confidence_threshold"]}."""
        admin(request)
        body = await read_json(request)
        if host is None:
            raise ApiError(400, "this server's student is not a causal LM with adapters",
                           "adapters_unsupported")
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"] \
                or not isinstance(body.get("path"), str) or not body["path"]:
            raise ApiError(400, 'send {"name": "...", "path": "..."}', "invalid_value")
        extra = set(body) - {"name", "path", "confidence_threshold"}
        if extra:
            raise ApiError(400, f"unknown fields {sorted(extra)}", "invalid_value")
        name, thr = body["name"], body.get("confidence_threshold", policy.confidence_threshold)
        if thr is not None and not isinstance(thr, (int, float)):
            raise ApiError(400, "confidence_threshold must be a number", "invalid_value",
                           "confidence_threshold")
        if name in routers:
            raise ApiError(409, f"a model named {_clip(repr(name), 100)} is already served",
                           "model_exists", "name")
        if len(routers) - started_adapters >= sv.max_adapters:
            raise ApiError(409, f"{sv.max_adapters} adapters were loaded at runtime, the limit "
                           "(serve.max_adapters); unload one first", "adapter_limit")
        try:
            view = await asyncio.to_thread(host.load_adapter, name, body["path"])
        except (ValueError, OSError) as e:  # FileNotFoundError, a name too long, ...
            raise ApiError(400, _clip(str(e), 500), "invalid_adapter", "path") from None
        r = new_router(view, dataclasses.replace(policy, confidence_threshold=thr), AdapterRouter)
        await r.start()
        routers[name] = r
        log.info("loaded adapter %s from %s", name, body["path"])
        return {"object": "adapter", "id": name, "path": body["path"], "identity": view.identity,
                "confidence_threshold": thr}

    @app.delete("/v1/adapters/{name}")
    async def delete_adapter(name: str, request: Request):
        admin(request)
        if host is None:
            raise ApiError(400, "this server's student is not a causal LM with adapters",
                           "adapters_unsupported")
        if name not in routers:
            raise ApiError(404, f"the model {_clip(repr(name), 100)} does not exist", "model_not_found", "name")
        if routers[name] is router:
            raise ApiError(400, f"{name!r} is the run's own student; it cannot be unloaded",
                           "invalid_value", "name")
        r = routers.pop(name)  # new requests 404 from here; those in flight finish first
        await r.stop()
        await asyncio.to_thread(host.unload_adapter, name)
        log.info("unloaded adapter %s", name)
        return {"object": "adapter", "id": name, "deleted": True}

    @app.post("/v1/classify")
    async def classify(request: Request):
        auth(request)
        req = await read_request(Classify, request)
        rt = check_model(req.model, False)
        if len(req.inputs) > sv.max_batch_inputs:
            raise ApiError(400, f"{len(req.inputs)} inputs; the limit is {sv.max_batch_inputs}",
                           "too_many_inputs", "inputs")
        def texts_of() -> list[str]:
            return [extract_input(_validate_text(x, sv.max_input_chars, f"inputs.{i}"), svc.patterns)
                    for i, x in enumerate(req.inputs)]

        # matching the prompt template is linear, but 256 inputs of 4,000 characters is a million
        # characters: off the event loop, as a large body's parsing is
        big = sum(len(x) for x in req.inputs if isinstance(x, str)) > OFF_LOOP_CHARS
        texts = await asyncio.to_thread(texts_of) if big else texts_of()
        ids = ["cls-" + uuid.uuid4().hex[:24] for _ in texts]
        routed = await rt.route(texts, ids)
        data = []
        for i, r in enumerate(routed):
            d = {"index": i, "id": r.request_id, "label": r.label, "route": r.route,
                 "reasons": r.reasons, "confidence": _f(r.student.confidence),
                 "ood_score": _f(r.student.ood_score), "degraded": r.route == "degraded"}
            if req.top_k and r.probs is not None:
                top = sorted(zip(rt.student.labels, r.probs), key=lambda t: -t[1])[: req.top_k]
                d["top"] = [{"label": l, "prob": _f(p)} for l, p in top]
            data.append(d)
        return _json({"object": "list", "model": req.model or svc.model_name, "data": data})

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        admin(request)
        req = await read_request(Feedback, request)
        if req.answer != "wrong":  # the right answer, in the task's form
            try:
                req.answer = task.feedback_answer(req.answer, student.labels, spec.json_schema)
            except ValueError as e:  # the client's answer is never echoed back whole (it may be ~1 MB)
                raise ApiError(400, _clip(str(e), 300), "invalid_value", "answer") from None
        found = await queue.find_request(req.request_id)
        if found is None:
            raise ApiError(404, f"no request with id {_clip(repr(req.request_id), 100)}",
                           "request_not_found", "request_id")
        async with feedback_lock:
            given = await asyncio.to_thread(store.feedback_for, req.request_id)
            same = [qid for qid, ans in given if ans == req.answer]
            if same:  # a repeat (a client retrying, say) is the same item, not a new one
                return {"object": "feedback", "request_id": req.request_id, "queue_id": same[0],
                        "status": "duplicate"}
            if len(given) >= sv.max_feedback_per_request:
                raise ApiError(409, f"request {req.request_id!r} already has {len(given)} feedback "
                               f"items, the limit (serve.max_feedback_per_request)",
                               "feedback_limit", "request_id")
            return await add_feedback(req, found)

    async def add_feedback(req, found):
        served = found.get("served_label")
        reason = "wrong" if req.answer == "wrong" else ("confirmed" if req.answer == served else "corrected")
        qid = await queue.add(kind="feedback", reason=reason, request_id=req.request_id,
                              input=found["input"], student_label=found.get("student_label"),
                              teacher_label=found.get("teacher_label"), served_label=served,
                              route=found.get("route"), confidence=found.get("confidence"),
                              ood_score=found.get("ood_score"), feedback=req.answer,
                              student_version=found.get("student_version"),
                              detail={"comment": req.comment} if req.comment else None)
        metrics.queued("feedback")
        return {"object": "feedback", "request_id": req.request_id, "queue_id": qid,
                "reason": reason, "status": "queued"}

    @app.get("/v1/models/{model_id:path}")
    async def model_info(model_id: str, request: Request):
        auth(request)
        if model_id not in routers:
            raise ApiError(404, f"the model {_clip(repr(model_id), 100)} does not exist",
                           "model_not_found", "model")
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "potstill"}

    @app.get("/health")
    async def health():
        point = svc.calibration.get("operating_point") if svc.calibration else None
        tstate = None
        if breaker is not None:  # the state, not the error text: that may name the endpoint
            tstate = {"state": breaker.state, "consecutive_failures": breaker.consecutive,
                      "retry_in_s": breaker.retry_in_s()}
        return {
            "status": "ok" if breaker is None or breaker.state == "closed" else "degraded",
            "model": svc.model_name, "student": student.identity,
            # the backend and model only: the endpoint's address is not for anonymous callers
            "teacher": svc.teacher_identity.split("@")[0] if svc.teacher_identity else None,
            "teacher_state": tstate,
            "labels": len(student.labels),
            "queue_depth": queue.depth,
            "worker_pid": os.getpid(),  # which of `--workers N` processes answered
            "runtime": getattr(student, "runtime", "torch"),
            "threads": sv.threads,
            "routing": {
                "confidence_threshold": policy.confidence_threshold,
                "ood_threshold": policy.ood_threshold,
                "high_stakes": sorted(policy.high_stakes),
                "expected_teacher_share": point.get("teacher_share") if point else None,
                "shadow_share": sv.shadow_share,
            },
        }

    @app.get("/metrics")
    async def prometheus(request: Request):
        auth(request)
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # middlewares added last run first: the metrics see every request, the hot routes included
    app.add_middleware(_HotRoutes, routes={"/v1/chat/completions": chat, "/v1/classify": classify},
                       on_api_error=_api_error)
    app.add_middleware(_HttpMetrics, metrics=metrics)
    return app


def _key_in(token: str, keys: Sequence[str]) -> bool:
    ok = False
    for k in keys:  # compare with every key, in constant time each
        ok |= hmac.compare_digest(token.encode("utf-8", "surrogateescape"), k.encode())
    return ok


def _loopback(host: str | None) -> bool:
    import ipaddress

    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _breaker_moved(old: str, new: str, breaker) -> None:
    if new == "open":
        log.warning("teacher circuit open after %d failure(s) in a row (last: %s): escalations are "
                    "answered degraded for %gs", breaker.consecutive, breaker.last_error,
                    breaker.cooldown_s)
    else:
        log.info("teacher circuit %s -> %s", old, new)


def _json(doc: dict[str, Any]):
    """A JSON response from plain data, skipping FastAPI's recursive encoder (it cost more than
    the routing itself per request; see bench/serve_load.py)."""
    from fastapi.responses import Response

    return Response(json.dumps(doc, separators=(",", ":")), media_type="application/json")


def _f(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), 6)


def _lp_entry(token: str, p: float) -> dict[str, Any]:
    return {"token": token, "logprob": math.log(p) if p > 0 else -9999.0,
            "bytes": list(token.encode("utf-8"))}


def _logprobs(r, labels: Sequence[str], top_k: int) -> dict[str, Any] | None:
    """The answer as one token: logprob = log p(label); top_logprobs = the most probable labels."""
    if r.label is None:
        return {"content": [], "refusal": None}
    probs = r.probs
    if probs is None or len(probs) != len(labels):
        # a causal-LM student's own answer: the probability of the text it generated
        seq_lp = r.student.extra.get("logprob") if r.route != "teacher" else None
        p = math.exp(seq_lp) if seq_lp is not None else 1.0
        entry = {**_lp_entry(r.label, p), "top_logprobs": [_lp_entry(r.label, p)][:top_k]}
        return {"content": [entry], "refusal": None}
    p_label = probs[labels.index(r.label)] if r.label in labels else 1.0
    top = sorted(zip(labels, probs), key=lambda t: -t[1])[:top_k]
    entry = {**_lp_entry(r.label, p_label), "top_logprobs": [_lp_entry(l, p) for l, p in top]}
    return {"content": [entry], "refusal": None}


async def _sse(rid: str, created: int, model: str, label: str | None, lp, n: int, extra: dict):
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    for i in range(n):
        first = {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": label},
                                      "logprobs": lp, "finish_reason": None}], **extra}
        yield f"data: {json.dumps(first)}\n\n"
        last = {**base, "choices": [{"index": i, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}
        yield f"data: {json.dumps(last)}\n\n"
    yield "data: [DONE]\n\n"


def worker_app_factory():
    """uvicorn's factory in each worker process."""
    from .workers import ENV

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    d = json.loads(os.environ[ENV])
    d["run_dir"] = Path(d["run_dir"])
    d["db_path"] = Path(d["db_path"]) if d["db_path"] else None
    app = create_app(ServeConfig(**d))
    freeze_gc()
    return app


def _token_estimate(text: str) -> int:
    """Tokens in `text` for `usage`, estimated at 4 characters a token (at least 1): the served
    models' tokenizers differ, and the figure only has to let a client count its traffic."""
    return max(1, -(-len(text) // 4))


def freeze_gc() -> None:
    """For a process that only serves: the model and its libraries are millions of long-lived
    objects; moved out of the cyclic collector's reach (`gc.freeze`), full collections stop
    pausing every request in flight (bench/serve_load.py: about 2x the requests/s with batching
    at 8 clients on 2 CPUs). Not done by `create_app`, so embedding the app changes nothing."""
    import gc

    gc.collect()
    gc.freeze()


# -- `potstill serve RUN_DIR` ---------------------------------------------------------------------
def parse_adapters(items: Sequence[str]) -> dict[str, str]:
    """["name=dir", ...] -> {name: dir}; a clear error for a malformed or repeated name."""
    out: dict[str, str] = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise typer.BadParameter(f"--adapter {it!r}: expected NAME=DIR")
        if name.strip() in out:
            raise typer.BadParameter(f"--adapter: {name.strip()!r} given twice")
        out[name.strip()] = path.strip()
    return out


def serve_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with a trained student/.")],
    host: Annotated[Optional[str], typer.Option(
        help="Bind address (default serve.host: 127.0.0.1). Anything else exposes the server; "
        "set API keys.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default serve.port: 8000).")] = None,
    teacher_share: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Use the calibrated thresholds for this expected share of traffic "
        "to the teacher (the nearest row of calibration.json).")] = None,
    no_teacher: Annotated[bool, typer.Option(
        "--no-teacher", help="Serve without a teacher: escalations are answered degraded and queued.")] = False,
    model: Annotated[str, typer.Option(
        help="Which of the run's models to serve: student, teacher or baseline.")] = "student",
    no_routing: Annotated[bool, typer.Option(
        "--no-routing", help="Answer everything with the served model: no teacher, no escalation, "
        "no queue (to serve a big model as the teacher of another run).")] = False,
    set: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a spec field, e.g. --set serve.shadow_share=0.05. Repeatable.")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request line (never headers or keys).")] = False,
    adapter: Annotated[Optional[list[str]], typer.Option(
        "--adapter", help="Causal-LM student: serve another LoRA adapter on the same base, as "
        "NAME=DIR (clients send model NAME). Repeatable.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    allow_local_admin: Annotated[bool, typer.Option(
        "--allow-local-admin", help="With no admin key set: let callers on this machine (loopback) "
        "load/unload adapters and post feedback. Refused unless the server binds to loopback.")] = False,
    workers: Annotated[int, typer.Option(
        min=1, help="Server processes on the one port (uvicorn workers), each with its own model "
        "and micro-batcher, sharing the queue and cache (SQLite WAL, or PostgreSQL with "
        "POTSTILL_DATABASE_URL). Use as many as cores for throughput; each worker's model threads "
        "default to the cores left after one per worker (serve.threads).")] = 1,
):
    """Serve the student behind an OpenAI-compatible API, with the teacher as safety net.

    Inputs the student is unsure of, that look unlike its training data, or that it labels
    high-stakes go to the teacher; if the teacher fails, the student's answer goes out marked
    degraded. Every escalation is queued (`potstill queue list RUN_DIR`). API keys: the env var
    named by serve.api_keys_env (POTSTILL_API_KEYS), comma-separated; admin keys (adapters,
    feedback): serve.admin_keys_env (POTSTILL_ADMIN_KEYS). See the README's "Security model".
    """
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    cfg = ServeConfig(Path(run_dir), overrides=list(set or []),
                      teacher=None if (no_teacher or no_routing) else "auto",
                      teacher_share=teacher_share, model=model, routing=not no_routing,
                      adapters=parse_adapters(adapter or []), allow_local_admin=allow_local_admin)
    if allow_local_admin and host is not None and not _loopback(host):
        raise typer.BadParameter(f"--allow-local-admin needs a loopback bind address, not {host!r}; "
                                 "set admin keys instead")
    app = create_app(cfg)  # with --workers: calibrates / exports once here, before any worker
    svc: Service = app.state.potstill
    if workers > 1:  # serve/workers.py
        from .workers import run_workers

        run_workers(cfg, svc, host, port, workers, log_level=log_level, access_log=access_log)
        return
    freeze_gc()
    host = host or svc.spec.serve.host
    port = svc.spec.serve.port if port is None else port
    if allow_local_admin and not _loopback(host):  # serve.host from the spec
        raise typer.BadParameter(f"--allow-local-admin needs a loopback bind address, not {host!r}; "
                                 "set admin keys instead")
    if host not in ("127.0.0.1", "localhost", "::1") and not svc.api_keys:
        log.warning("binding %s without API keys: anyone who reaches this port can use the "
                    "server (set %s)", host, svc.spec.serve.api_keys_env)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log,
                timeout_graceful_shutdown=5)

