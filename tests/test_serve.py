"""The server end to end: a real uvicorn server on 127.0.0.1 serving a tiny trained student, with
the stand-in OpenAI-compatible teacher (tests/fake_openai.py) as its teacher. Offline."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
from fake_openai import FakeOpenAI
from test_serve_support import (  # noqa: F401
    LABELS,
    free_port,
    fresh_run,
    live_server,
    queue_rows,
    start_server_process,
    tiny_run,
    wait_for,
)

from potstill.serve.app import ServeConfig, create_app
from potstill.serve.router import Policy
from potstill.spec import TaskSpec
from potstill.store import Store
from potstill.teachers.openai_compat import OpenAITeacher


def make_app(run: Path, teacher_url: str | None, db: Path, *overrides: str, **cfg):
    ov = ([f"teacher.base_url={teacher_url}"] if teacher_url else []) + list(overrides)
    return create_app(ServeConfig(run, overrides=ov, db_path=db, **cfg))


def chat(base: str, text: str, key: str | None = None, **extra) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": "tiny", "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=30)


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there any more


# -- routing -------------------------------------------------------------------------------------
def test_escalates_low_confidence_and_out_of_distribution(tiny_run, tmp_path):
    fake = FakeOpenAI(lambda t: "weather", labels=LABELS)
    with fake as url:
        app = make_app(tiny_run, url, tmp_path / "q.db")
        svc = app.state.potstill
        assert svc.policy.ood_threshold is not None  # calibrated with the out-of-scope rows
        clear = "what is my balance"
        candidates = ["send money", "now please", "money rain", "transfer weather", "ok please",
                      "balance transfer", "move cash"]
        outs = dict(zip(candidates, svc.student.predict(candidates)))
        (c_clear,) = (o.confidence for o in svc.student.predict([clear]))
        vague = min(candidates, key=lambda t: outs[t].confidence)
        assert outs[vague].confidence < c_clear
        svc.router.policy = dataclasses.replace(
            svc.policy, confidence_threshold=(outs[vague].confidence + c_clear) / 2)
        oos = "play the violin at the zoo"  # not one of the out-of-scope validation rows
        with live_server(app) as base:
            r_clear, r_vague, r_oos = (chat(base, t).json() for t in (clear, vague, oos))
    assert (r_clear["route"], r_clear["reasons"], r_clear["degraded"]) == ("student", [], False)
    assert r_clear["choices"][0]["message"]["content"] == "balance"
    assert r_vague["route"] == "teacher" and "low_confidence" in r_vague["reasons"]
    assert r_vague["choices"][0]["message"]["content"] == "weather"  # the teacher's answer
    assert r_oos["route"] == "teacher" and "ood" in r_oos["reasons"]
    assert r_oos["ood_score"] > svc.policy.ood_threshold
    assert [r.text for r in fake.requests] == [vague, oos]  # the clear input never reached it

    rows = queue_rows(tiny_run, tmp_path / "q.db")
    assert [(r["kind"], r["input"], r["teacher_label"], r["route"]) for r in rows] == [
        ("escalation", vague, "weather", "teacher"), ("escalation", oos, "weather", "teacher")]
    assert "low_confidence" in rows[0]["reason"] and "ood" in rows[1]["reason"]
    assert rows[0]["student_label"] == outs[vague].label and rows[0]["served_label"] == "weather"
    assert rows[0]["student_version"] == svc.student.identity and rows[0]["created_at"] > 0


def test_high_stakes_labels_always_go_to_the_teacher(tiny_run, tmp_path):
    run = fresh_run(tiny_run, tmp_path / "run")
    with FakeOpenAI(lambda t: "transfer", labels=LABELS) as url:
        # a calibration setting changed: the server recalibrates before it starts
        app = make_app(run, url, tmp_path / "q.db", "serve.high_stakes=[transfer]")
        assert app.state.potstill.calibration["settings"]["high_stakes"] == ["transfer"]
        with live_server(app) as base:
            r = chat(base, "send money to mom").json()
            b = chat(base, "what is my balance").json()
    assert r["route"] == "teacher" and r["reasons"][0] == "high_stakes"
    assert b["route"] == "student"


def test_teacher_down_gives_degraded_answers_and_fills_the_queue(tiny_run, tmp_path):
    app = make_app(tiny_run, closed_port_url(), tmp_path / "q.db", "serve.ood_threshold=-1",
                   "serve.confidence_threshold=0")
    with live_server(app) as base:
        t0 = time.monotonic()
        resp = [chat(base, t) for t in ("what is my balance", "will it rain tomorrow")]
        elapsed = time.monotonic() - t0
        m = httpx.get(f"{base}/metrics").text
    assert elapsed < 10
    for r, label in zip(resp, ("balance", "weather")):
        assert r.status_code == 200
        d = r.json()
        assert d["route"] == "degraded" and d["degraded"] is True and d["reasons"] == ["ood"]
        assert d["choices"][0]["message"]["content"] == label  # the student's answer
    rows = queue_rows(tiny_run, tmp_path / "q.db")
    assert [(r["kind"], r["reason"], r["input"]) for r in rows] == [
        ("degraded", "teacher_error", "what is my balance"),
        ("degraded", "teacher_error", "will it rain tomorrow")]
    assert "connection error" in rows[0]["detail"]["error"]
    assert rows[0]["detail"]["escalated_for"] == ["ood"] and rows[0]["teacher_label"] is None
    assert 'potstill_teacher_errors_total{kind="teacher_error"} 2.0' in m
    assert 'potstill_answers_total{route="degraded"} 2.0' in m
    assert "potstill_queue_depth 2.0" in m


def test_slow_teacher_times_out_then_its_late_answer_lands_in_the_queue(tiny_run, tmp_path):
    fake = FakeOpenAI(lambda t: "weather", labels=LABELS, delay_ms=1500)
    with fake as url:
        app = make_app(tiny_run, url, tmp_path / "q.db", "serve.ood_threshold=-1",
                       "serve.confidence_threshold=0", "serve.teacher_timeout_s=0.3")
        with live_server(app) as base:
            t0 = time.monotonic()
            d = chat(base, "what is my balance").json()
            elapsed = time.monotonic() - t0
            assert d["route"] == "degraded" and d["choices"][0]["message"]["content"] == "balance"
            assert 0.3 <= elapsed < 1.4  # did not wait for the teacher
            rows = queue_rows(tiny_run, tmp_path / "q.db")
            assert [(r["kind"], r["reason"]) for r in rows] == [("degraded", "teacher_timeout")]
            # the teacher answers after the request gave up: its label is kept with the item
            late = wait_for(lambda: queue_rows(tiny_run, tmp_path / "q.db")[0]["teacher_label"], 10)
            m = httpx.get(f"{base}/metrics").text
    assert late == "weather"
    assert 'potstill_teacher_errors_total{kind="teacher_timeout"} 1.0' in m


def test_shadow_checks_queue_disagreements(tiny_run, tmp_path):
    fake = FakeOpenAI(lambda t: "weather", labels=LABELS)
    with fake as url:
        app = make_app(tiny_run, url, tmp_path / "q.db", "serve.shadow_share=1.0",
                       "serve.ood_threshold=1e9", "serve.confidence_threshold=0")
        with live_server(app) as base:
            a = chat(base, "what is my balance").json()
            b = chat(base, "will it rain tomorrow").json()
            assert a["route"] == b["route"] == "student"  # the user never waits for the shadow
            rows = wait_for(lambda: [r for r in queue_rows(tiny_run, tmp_path / "q.db")
                                     if r["kind"] == "disagreement"], 10)
            wait_for(lambda: fake.count == 2)

            def metrics_after_both() -> str | None:
                t = httpx.get(f"{base}/metrics").text
                return t if 'potstill_shadow_checks_total{outcome="agree"} 1.0' in t else None

            m = wait_for(metrics_after_both)
    assert [(r["input"], r["student_label"], r["teacher_label"], r["reason"]) for r in rows] == [
        ("what is my balance", "balance", "weather", "shadow")]
    assert 'potstill_shadow_checks_total{outcome="disagree"} 1.0' in m


def test_classify_batch_feedback_and_health(tiny_run, tmp_path):
    app = make_app(tiny_run, None, tmp_path / "q.db", "serve.ood_threshold=1e9",
                   "serve.confidence_threshold=0", teacher=None, allow_local_admin=True)
    with live_server(app) as base:
        h = httpx.get(f"{base}/health").json()
        r = httpx.post(f"{base}/v1/classify", json={
            "inputs": ["what is my balance", "send money to mom", "is it sunny outside"], "top_k": 2}).json()
        ids = [d["id"] for d in r["data"]]
        f1 = httpx.post(f"{base}/v1/feedback", json={"request_id": ids[0], "answer": "wrong"})
        f2 = httpx.post(f"{base}/v1/feedback", json={"request_id": ids[1], "answer": "balance",
                                                     "comment": "it was about the balance"})
        f3 = httpx.post(f"{base}/v1/feedback", json={"request_id": "nope", "answer": "wrong"})
        f4 = httpx.post(f"{base}/v1/feedback", json={"request_id": ids[2], "answer": "sports"})
    assert h["status"] == "ok" and h["model"] == "tiny" and h["labels"] == 3 and h["teacher"] is None
    assert [d["label"] for d in r["data"]] == ["balance", "transfer", "weather"]
    assert all(d["route"] == "student" and len(d["top"]) == 2 for d in r["data"])
    assert abs(sum(t["prob"] for t in r["data"][0]["top"]) - 1) < 0.2
    assert f1.status_code == 200 and f1.json()["reason"] == "wrong"
    assert f2.json()["reason"] == "corrected"
    assert f3.status_code == 404 and f3.json()["error"]["code"] == "request_not_found"
    assert f4.status_code == 400 and f4.json()["error"]["param"] == "answer"
    rows = queue_rows(tiny_run, tmp_path / "q.db")
    assert [(r["kind"], r["input"], r["feedback"], r["served_label"]) for r in rows] == [
        ("feedback", "what is my balance", "wrong", "balance"),
        ("feedback", "send money to mom", "balance", "transfer")]
    assert rows[1]["detail"] == {"comment": "it was about the balance"}


def test_concurrent_requests_are_batched(tiny_run, tmp_path):
    app = make_app(tiny_run, None, tmp_path / "q.db", "serve.batch_window_ms=30",
                   "serve.adaptive_window=false", "serve.ood_threshold=1e9",
                   "serve.confidence_threshold=0", teacher=None)
    texts = [f"what is my balance {w}" for w in ("now", "please", "today", "thanks")] * 4

    async def burst(base: str) -> list[dict]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            rs = await asyncio.gather(*[c.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": t}]}) for t in texts])
        return [r.json() for r in rs]

    with live_server(app) as base:
        out = asyncio.run(burst(base))
        m = httpx.get(f"{base}/metrics").text
    assert all(o["choices"][0]["message"]["content"] == "balance" for o in out)
    b = app.state.potstill.router.batcher
    assert b.items == 16 and b.batches < 16 and b.largest > 1
    assert f"potstill_student_batch_size_count {float(b.batches)}" in m


# -- the server survives being killed ------------------------------------------------------------
def test_queue_survives_kill_and_restart(tiny_run, tmp_path):
    run = fresh_run(tiny_run, tmp_path / "run")
    key = "sk-potstill-test-SECRET-91"
    env = {"POTSTILL_API_KEYS": key}
    log_path = tmp_path / "server.log"
    with FakeOpenAI(lambda t: "weather", labels=LABELS) as url:
        ov = [f"teacher.base_url={url}", "serve.ood_threshold=-1", "serve.confidence_threshold=0"]
        port = free_port()
        p = start_server_process(run, port, ov, env, log_path)
        try:
            base = f"http://127.0.0.1:{port}"
            sent = ["what is my balance", "send money to mom", "is it sunny outside"]
            for t in sent:
                assert chat(base, t, key).json()["route"] == "teacher"
            p.send_signal(signal.SIGKILL)  # no shutdown hook runs
            p.wait(10)
        finally:
            if p.poll() is None:
                p.kill()
        rows = queue_rows(run)
        assert [r["input"] for r in rows] == sent and all(r["kind"] == "escalation" for r in rows)

        p = start_server_process(run, port, ov, env, log_path)
        try:
            assert httpx.get(f"{base}/health").json()["queue_depth"] == 3
            assert chat(base, "move cash to checking", key).json()["route"] == "teacher"
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
    rows = queue_rows(run)
    assert [r["id"] for r in rows] == [1, 2, 3, 4]
    assert [r["input"] for r in rows] == sent + ["move cash to checking"]
    # `potstill queue list RUN_DIR`
    import typer
    from typer.testing import CliRunner

    from potstill.serve.queue import queue_list_command

    cli = typer.Typer()
    cli.command()(queue_list_command)
    res = CliRunner().invoke(cli, [str(run)])
    assert res.exit_code == 0, res.output
    assert "4 item(s)" in res.output and "escalation 4" in res.output and "move cash" in res.output
    res = CliRunner().invoke(cli, [str(run), "--json", "--limit", "2"])
    assert [json.loads(l)["id"] for l in res.output.splitlines()] == [3, 4]
    # the key was used on every request and appears nowhere in the server's output
    out = log_path.read_text()
    assert "POST /v1/chat/completions" in out  # the access log was on
    assert key not in out


# -- safety --------------------------------------------------------------------------------------
def test_auth(tiny_run, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    keys = ["sk-one-SECRET-a1", "sk-two-SECRET-b2"]
    app = make_app(tiny_run, None, tmp_path / "q.db", teacher=None, api_keys=keys)
    with live_server(app) as base:
        none = chat(base, "what is my balance")
        wrong = chat(base, "what is my balance", key="sk-wrong")
        basic = httpx.post(f"{base}/v1/chat/completions", headers={"authorization": "Basic " + keys[0]},
                           json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        ok = [chat(base, "what is my balance", key=k) for k in keys]
        health = httpx.get(f"{base}/health")
        metrics = httpx.get(f"{base}/metrics")
        metrics_ok = httpx.get(f"{base}/metrics", headers={"authorization": f"Bearer {keys[1]}"})
        cls = httpx.post(f"{base}/v1/classify", json={"inputs": ["x"]})
        fb = httpx.post(f"{base}/v1/feedback", json={"request_id": "x", "answer": "wrong"})
    for r in (none, wrong, basic, metrics, cls, fb):
        assert r.status_code == 401, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
        assert r.headers["www-authenticate"] == "Bearer"
    assert all(r.status_code == 200 for r in ok)
    assert health.status_code == 200 and metrics_ok.status_code == 200
    for k in keys:
        assert k not in caplog.text


def test_model_endpoints_are_answered_past_fastapis_router(tiny_run, tmp_path):
    """POST on /v1/chat/completions and /v1/classify goes straight to its handler (app.py,
    `_HotRoutes`: FastAPI's routing layers were a third of the event loop's time per request);
    everything else still passes through FastAPI's router. Both paths keep the errors' OpenAI
    shape and the HTTP metrics."""
    app = make_app(tiny_run, None, tmp_path / "q.db", teacher=None, api_keys=["sk-k1"])
    routed: list[tuple[str, str]] = []

    class Counting:  # FastAPI's router, counting what reaches it
        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http":
                routed.append((scope["method"], scope["path"]))
            await self.inner(scope, receive, send)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    app.router = Counting(app.router)
    auth = {"authorization": "Bearer sk-k1"}
    with live_server(app) as base:
        ok = chat(base, "what is my balance", key="sk-k1")
        cls = httpx.post(f"{base}/v1/classify", json={"inputs": ["x", "y"]}, headers=auth)
        no_key = chat(base, "what is my balance")
        unknown = chat(base, "hi", key="sk-k1", model="nope")
        put = httpx.put(f"{base}/v1/classify", json={"inputs": ["x"]}, headers=auth)
        models = httpx.get(f"{base}/v1/models", headers=auth)
        metrics = httpx.get(f"{base}/metrics", headers=auth).text
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] in LABELS
    assert cls.status_code == 200 and len(cls.json()["data"]) == 2
    assert (no_key.status_code, no_key.json()["error"]["code"]) == (401, "invalid_api_key")
    assert no_key.headers["www-authenticate"] == "Bearer"
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "model_not_found")
    assert (put.status_code, put.json()["error"]["code"]) == (405, "method_not_allowed")
    assert models.status_code == 200
    assert not [r for r in routed if r[0] == "POST"]  # the four POSTs never reached the router
    assert ("PUT", "/v1/classify") in routed and ("GET", "/v1/models") in routed
    assert 'potstill_http_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in metrics
    assert 'potstill_http_requests_total{endpoint="/v1/chat/completions",status="401"} 1.0' in metrics
    assert 'potstill_http_requests_total{endpoint="/v1/classify",status="200"} 1.0' in metrics


BAD = [
    # (name, method, path, body bytes or JSON, headers, status, code)
    ("invalid json", "POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [', {}, 400, "invalid_json"),
    ("empty body", "POST", "/v1/chat/completions", b"", {}, 400, "invalid_json"),
    ("not an object", "POST", "/v1/chat/completions", [1, 2], {}, 400, "invalid_type"),
    ("bad utf-8", "POST", "/v1/chat/completions",
     b'{"model": "tiny", "messages": [{"role": "user", "content": "caf\xe9"}]}', {}, 400, "invalid_encoding"),
    ("lone surrogate", "POST", "/v1/chat/completions",
     b'{"model": "tiny", "messages": [{"role": "user", "content": "x\\ud800"}]}', {}, 400, "invalid_encoding"),
    ("messages not a list", "POST", "/v1/chat/completions", {"model": "tiny", "messages": "hi"}, {}, 400, "invalid_value"),
    ("no messages", "POST", "/v1/chat/completions", {"model": "tiny"}, {}, 400, "missing_field"),
    ("empty messages", "POST", "/v1/chat/completions", {"model": "tiny", "messages": []}, {}, 400, "invalid_value"),
    ("content a number", "POST", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "user", "content": 5}]}, {}, 400, "invalid_value"),
    ("model a number", "POST", "/v1/chat/completions",
     {"model": 3, "messages": [{"role": "user", "content": "hi"}]}, {}, 400, "invalid_value"),
    ("logprobs a string", "POST", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logprobs": "yes"}, {}, 400, "invalid_value"),
    ("top_logprobs too many", "POST", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 99}, {}, 400, "invalid_value"),
    ("no user message", "POST", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "system", "content": "be nice"}]}, {}, 400, "missing_user_message"),
    ("empty input", "POST", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "user", "content": "   "}]}, {}, 400, "empty_input"),
    ("oversized input", "POST", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "user", "content": "a" * 4001}]}, {}, 400, "input_too_long"),
    ("oversized body", "POST", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "user", "content": "a" * 1_000_001}]}, {}, 413, "body_too_large"),
    ("unknown model", "POST", "/v1/chat/completions",
     {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, {}, 404, "model_not_found"),
    ("classify empty list", "POST", "/v1/classify", {"inputs": []}, {}, 400, "invalid_value"),
    ("classify wrong type", "POST", "/v1/classify", {"inputs": ["ok", 7]}, {}, 400, "invalid_type"),
    ("classify unknown field", "POST", "/v1/classify", {"inputs": ["ok"], "topk": 3}, {}, 400, "invalid_value"),
    ("classify too many", "POST", "/v1/classify", {"inputs": ["ok"] * 257}, {}, 400, "too_many_inputs"),
    ("classify unknown model", "POST", "/v1/classify", {"inputs": ["ok"], "model": "other"}, {}, 404, "model_not_found"),
    ("feedback missing id", "POST", "/v1/feedback", {"answer": "wrong"}, {}, 400, "missing_field"),
    ("unknown route", "POST", "/v1/completions", {"prompt": "hi"}, {}, 404, "not_found"),
    ("wrong method", "GET", "/v1/chat/completions", None, {}, 405, "method_not_allowed"),
    ("oversized chunked body", "POST", "/v1/classify",
     lambda: (b'{"inputs": ["' + b"a" * 65536 for _ in range(20)), {}, 413, "body_too_large"),
]


def test_bad_requests_get_openai_shaped_4xx(tiny_run, tmp_path):
    app = make_app(tiny_run, None, tmp_path / "q.db", teacher=None, allow_local_admin=True)
    results = []
    with live_server(app) as base:
        with httpx.Client(base_url=base, timeout=30) as c:
            for name, method, path, body, headers, status, code in BAD:
                if body is None or isinstance(body, bytes):
                    content = body
                elif callable(body):
                    content = body()  # an iterator: sent chunked, without a Content-Length
                else:
                    content = json.dumps(body).encode()
                try:
                    r = c.request(method, path, content=content,
                                  headers={"content-type": "application/json", **headers})
                except httpx.HTTPError as e:  # the server may close on a lying content-length
                    results.append((name, "closed", str(e)))
                    continue
                results.append((name, r.status_code, r.json()))
            # the server still answers after all that
            assert c.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "what is my balance"}]}).status_code == 200
    for (name, method, path, body, headers, status, code), (_, got, doc) in zip(BAD, results):
        assert got == status, (name, got, doc)
        err = doc["error"]
        assert set(err) == {"message", "type", "param", "code"}, name
        assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"], (name, err)
    assert queue_rows(tiny_run, tmp_path / "q.db") == []


# -- clients -------------------------------------------------------------------------------------
def test_the_openai_client_works_unchanged(tiny_run, tmp_path):
    app = make_app(tiny_run, None, tmp_path / "q.db", "serve.ood_threshold=1e9",
                   "serve.confidence_threshold=0", teacher=None, api_keys=["sk-client-key"])
    with live_server(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-client-key", max_retries=0)
        c = client.chat.completions.create(
            model="tiny", messages=[{"role": "system", "content": "classify"},
                                    {"role": "user", "content": "how much money is in my account"}],
            logprobs=True, top_logprobs=3)
        assert [m.id for m in client.models.list()] == ["tiny"]
        stream = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "will it rain tomorrow"}], stream=True)
        streamed = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        parts = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": [{"type": "text", "text": "send money to mom"}]}])
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="sk-bad", max_retries=0).chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.NotFoundError) as nf:
            client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError) as br:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": ""}])
    assert c.choices[0].message.content == "balance" and c.choices[0].finish_reason == "stop"
    assert c.route == "student" and 0 < c.confidence <= 1  # extra fields reach the client
    top = c.choices[0].logprobs.content[0].top_logprobs
    assert len(top) == 3 and top[0].token == "balance"
    assert c.choices[0].logprobs.content[0].logprob == pytest.approx(top[0].logprob)
    assert streamed == "weather" and parts.choices[0].message.content == "transfer"
    assert nf.value.code == "model_not_found" and br.value.code == "empty_input"


def test_a_potstill_server_is_a_valid_openai_teacher(tiny_run, tmp_path):
    """The `openai` teacher backend labels through a potstill server (prompt -> {text}); here
    the server serves the run's teacher/ model, without routing, as `potstill serve RUN
    --model teacher --no-routing` does."""
    import shutil

    run = fresh_run(tiny_run, tmp_path / "run")
    shutil.copytree(run / "student", run / "teacher")  # stands in for a big local model
    app = make_app(run, None, tmp_path / "q.db", model="teacher", routing=False)
    assert not (run / "calibration.teacher.json").exists()  # no routing: nothing to calibrate
    assert app.state.potstill.policy == Policy() and app.state.potstill.teacher_identity is None
    texts = ["what is my balance", "transfer fifty dollars to savings", "how cold is it today",
             "show my account balance please"]
    with live_server(app) as base:
        spec = TaskSpec(name="downstream", labels=LABELS, data={"train": "unused.jsonl"},
                        teacher={"kind": "openai", "model": "tiny", "base_url": f"{base}/v1",
                                 "max_retries": 0, "top_logprobs": 3, "concurrency": 2})
        teacher = OpenAITeacher(spec, LABELS)
        got = dict(teacher.answer(texts))
        direct = httpx.post(f"{base}/v1/classify", json={"inputs": texts, "top_k": 3}).json()["data"]
    for i, d in enumerate(direct):
        a = got[i]
        assert a.error is None and a.label == d["label"], (a, d)
        assert a.probs is not None and abs(sum(a.probs) - 1) < 1e-6
        assert LABELS[max(range(3), key=lambda k: a.probs[k])] == d["label"]
        # one token per label: the teacher reads the server's distribution back
        want = {t["label"]: t["prob"] for t in d["top"]}
        for k, l in enumerate(LABELS):
            assert a.probs[k] == pytest.approx(want[l] / sum(want.values()), abs=1e-4)
    assert len(got) == len(texts)  # (which labels a tiny model gives varies; that they match the server's is the point)
    assert all(d["route"] == "student" for d in direct)
    assert queue_rows(run, tmp_path / "q.db") == []  # nothing is queued without routing


def test_label_over_http_through_a_potstill_server(tiny_run, tmp_path, monkeypatch):
    """`teacher.over_http`: `potstill label` serves the local teacher with `potstill serve
    --model teacher --no-routing` in a child process and labels through the openai backend; the
    soft labels match the model's own, and a rerun takes everything from the cache, no server."""
    import json
    import shutil

    import numpy as np

    from potstill.config import load_spec, run_paths
    from potstill.stages.label import label
    from potstill.teachers.hf_local import HFTeacher
    from potstill.teachers.served import ServedTeacher

    run_dir = fresh_run(tiny_run, tmp_path / "run")
    big = tmp_path / "big-teacher"
    shutil.copytree(run_dir / "student", big)
    spec_file = tiny_run.parent.parent / "potstill.yaml"
    spec = load_spec(spec_file, ["teacher.kind=hf", f"teacher.model={big}", "teacher.over_http=true",
                                 "teacher.top_logprobs=3"])
    run = run_paths(spec, run_dir)
    summary = label(spec, run)
    assert summary["new_calls"] == summary["inputs"] > 0 and summary["errors"] == 0
    records = [json.loads(l) for l in (run.labels / "records.jsonl").read_text().splitlines()]
    soft = np.load(run.labels / "soft.npy")
    direct = dict(HFTeacher(str(big), LABELS).answer([r["text"] for r in records[:20]]))
    for i in range(20):
        assert records[i]["label"] == direct[i].label
        np.testing.assert_allclose(soft[i], direct[i].probs, atol=1e-4)
    with Store(run.db) as store:
        assert store.spend()["calls"] == summary["inputs"]
        ident = store._db.execute("SELECT DISTINCT teacher FROM calls").fetchall()
    assert ident == [(f"served:hf:big-teacher@{ident[0][0].rsplit('@', 1)[1]}",)]

    def no_server(self):
        raise AssertionError("a rerun with every answer cached must not start the server")

    monkeypatch.setattr(ServedTeacher, "_start", no_server)
    again = label(spec, run)
    assert again["new_calls"] == 0 and again["cached"] == summary["inputs"]


def test_no_teacher_and_no_calibration_refused_without_recalibrate(tiny_run, tmp_path):
    run = fresh_run(tiny_run, tmp_path / "run")
    (run / "calibration.json").unlink()
    with pytest.raises(ValueError, match="potstill calibrate"):
        create_app(ServeConfig(run, db_path=tmp_path / "q.db", recalibrate=False, teacher=None))
    os.environ.pop("POTSTILL_API_KEYS", None)
    app = create_app(ServeConfig(run, db_path=tmp_path / "q.db", teacher=None))
    assert (run / "calibration.json").exists() and app.state.potstill.api_keys == []
    with Store(tmp_path / "q.db") as s:
        assert s.queue_counts() == {}
