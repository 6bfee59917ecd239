"""Serving under hostile input and a failing teacher (issue 11): each test failed before its fix."""

from __future__ import annotations

import json
import random
import re
import string
import time
import types
from pathlib import Path

import httpx
import openai
import pytest
import typer
from test_serve_support import LABELS, free_port, live_server, queue_rows, tiny_run  # noqa: F401

from potstill.serve.app import ServeConfig, create_app, extract_input, serve_command, template_pattern
from potstill.serve.causal import CausalLMStudent
from potstill.spec import DEFAULT_TEMPLATE


def make_app(run: Path, db: Path, *overrides: str, **cfg):
    return create_app(ServeConfig(run, overrides=list(overrides), db_path=db, **cfg))


def chat_body(text: str) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}]}


# -- the template match: linear, and the same answers as the regex it replaced --------------------
def old_regex(template: str) -> re.Pattern[str]:
    """The matcher the server used before issue 11 (it backtracks), as the reference."""
    rx, seen = "", False
    for literal, name, _s, _c in string.Formatter().parse(template):
        rx += re.escape(literal)
        if name is None:
            continue
        if name == "text":
            rx += "(?P=text)" if seen else "(?P<text>.*)"
            seen = True
        else:
            rx += ".*?"
    return re.compile(rx, re.S)


TEMPLATES = [DEFAULT_TEMPLATE, "Q: {text}\nA:", "{text}", "[{a}] {text} <{b}> end", "{a}|{text}|{b}|{c}",
             "x{text}y{text}z"]


def test_template_match_agrees_with_the_old_regex_on_random_messages():
    rng = random.Random(0)
    pieces = ["\n\n", "Labels: ", "Text: ", "Q: ", "\nA:", "[", "]", "<", ">", " end", "|", "x", "y", "z",
              "hello", " ", "Answer with the label only, or as JSON {\"label\": \"...\"}."]
    checked = matched = 0
    for template in TEMPLATES:
        ref, new = old_regex(template), template_pattern(template)
        fields = {"instruction": "Classify.", "labels": "a, b", "a": "1", "b": "2", "c": "3"}
        for _ in range(400):
            if rng.random() < 0.5:  # a rendered prompt whose text holds separator-like pieces
                text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
                msg = template.format(text=text, **fields)
            else:
                msg = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
            m_ref, m_new = ref.fullmatch(msg), new.fullmatch(msg)
            assert (m_ref is None) == (m_new is None), (template, msg)
            if m_ref is not None:
                assert m_ref.group("text") == m_new.group("text"), (template, msg)
                matched += 1
            checked += 1
    assert matched > 300 and checked == 400 * len(TEMPLATES)


def test_crafted_prompts_match_in_linear_time():
    # the separators of the default template, repeated: the old regex backtracked for seconds
    crafted = ("x\n\nLabels: \n\nText: " * 220)[:3990]
    pats = [template_pattern(DEFAULT_TEMPLATE)]
    t0 = time.perf_counter()
    for _ in range(256):  # a full /v1/classify batch of them
        assert extract_input(crafted, pats) == crafted
    assert time.perf_counter() - t0 < 0.5


# -- the server ------------------------------------------------------------------------------------
def test_hostile_bodies_get_4xx_and_do_not_block_health(tiny_run, tmp_path):
    app = make_app(tiny_run, tmp_path / "q.db", teacher=None)
    crafted = ("x\n\nLabels: \n\nText: " * 220)[:3990]
    huge_int = b'{"model": "tiny", "n": ' + b"9" * 5000 + b', "messages": [{"role": "user", "content": "hi"}]}'
    with live_server(app) as base, httpx.Client(base_url=base, timeout=60) as c:
        r_int = c.post("/v1/chat/completions", content=huge_int, headers={"content-type": "application/json"})
        r_nan = c.post("/v1/chat/completions", content=b'{"model": "tiny", "n": NaN, "messages": []}')
        # the same pooled connection still works after those
        ok = c.post("/v1/chat/completions", json=chat_body("what is my balance"))
        import threading

        worst = [0.0]
        stop = threading.Event()

        def probe():
            with httpx.Client(base_url=base, timeout=30) as h:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    h.get("/health")
                    worst[0] = max(worst[0], time.perf_counter() - t0)
                    time.sleep(0.005)

        th = threading.Thread(target=probe)
        th.start()
        t0 = time.perf_counter()
        r_cls = c.post("/v1/classify", json={"inputs": [crafted] * 30})
        took = time.perf_counter() - t0
        stop.set()
        th.join()
    for r in (r_int, r_nan):
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert len(r.text) < 1000
    assert ok.status_code == 200
    assert r_cls.status_code == 200 and len(r_cls.json()["data"]) == 30
    assert took < 5  # was 11.8 s (issue 11); the student's forward pass is most of it now
    assert worst[0] < 1.0  # loose here (shared CPU); bench/faults.py measures it properly


def test_models_retrieve_works_with_the_openai_sdk(tiny_run, tmp_path):
    app = make_app(tiny_run, tmp_path / "q.db", teacher=None)
    with live_server(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        m = client.models.retrieve("tiny")
        with pytest.raises(openai.NotFoundError) as e:
            client.models.retrieve("gpt-4o")
    assert (m.id, m.object, m.owned_by) == ("tiny", "model", "potstill")
    assert e.value.body["code"] == "model_not_found"


def test_feedback_is_deduplicated_limited_and_never_echoes_a_huge_answer(tiny_run, tmp_path):
    app = make_app(tiny_run, tmp_path / "q.db", "serve.max_feedback_per_request=2", teacher=None,
                   allow_local_admin=True)
    with live_server(app) as base:
        rid = httpx.post(f"{base}/v1/classify", json={"inputs": ["what is my balance"]}).json()["data"][0]["id"]
        fb = lambda answer: httpx.post(f"{base}/v1/feedback", json={"request_id": rid, "answer": answer})  # noqa: E731
        first, again, other, third = fb("wrong"), fb("wrong"), fb("transfer"), fb("weather")
        huge = fb("z" * 900_000)
    assert first.json()["status"] == "queued"
    assert again.status_code == 200 and again.json() == {
        "object": "feedback", "request_id": rid, "queue_id": first.json()["queue_id"], "status": "duplicate"}
    assert other.json()["status"] == "queued"
    assert third.status_code == 409 and third.json()["error"]["code"] == "feedback_limit"
    assert huge.status_code == 400 and len(huge.content) < 1000
    rows = queue_rows(tiny_run, tmp_path / "q.db")
    assert [(r["kind"], r["feedback"]) for r in rows] == [("feedback", "wrong"), ("feedback", "transfer")]


def test_admin_endpoints_need_an_admin_key_or_the_local_flag(tiny_run, tmp_path):
    rid_body = {"inputs": ["what is my balance"]}
    # 1. no admin key, no flag: refused even from loopback
    with live_server(make_app(tiny_run, tmp_path / "a.db", teacher=None)) as base:
        rid = httpx.post(f"{base}/v1/classify", json=rid_body).json()["data"][0]["id"]
        off = httpx.post(f"{base}/v1/feedback", json={"request_id": rid, "answer": "wrong"})
    assert off.status_code == 403 and off.json()["error"]["code"] == "admin_disabled"
    assert "POTSTILL_ADMIN_KEYS" in off.json()["error"]["message"]
    # 2. model keys and admin keys are different roles
    app = make_app(tiny_run, tmp_path / "b.db", teacher=None, api_keys=["sk-model"], admin_keys=["sk-admin"])
    with live_server(app) as base:
        h = lambda k: {"authorization": f"Bearer {k}"}  # noqa: E731
        rid = httpx.post(f"{base}/v1/classify", json=rid_body, headers=h("sk-model")).json()["data"][0]["id"]
        by_admin_key = httpx.post(f"{base}/v1/classify", json=rid_body, headers=h("sk-admin"))
        fb = lambda k: httpx.post(f"{base}/v1/feedback", json={"request_id": rid, "answer": "wrong"},  # noqa: E731
                                  headers=h(k) if k else {})
        model_key, no_key, admin_key = fb("sk-model"), fb(None), fb("sk-admin")
        adapters = httpx.post(f"{base}/v1/adapters", json={"name": "a", "path": "/tmp"}, headers=h("sk-model"))
    assert by_admin_key.status_code == 200
    assert model_key.status_code == 403 and model_key.json()["error"]["code"] == "admin_required"
    assert no_key.status_code == 401
    assert admin_key.status_code == 200 and admin_key.json()["status"] == "queued"
    assert adapters.status_code == 403
    # 3. the flag is refused on a non-loopback bind address (before anything is built)
    with pytest.raises(typer.BadParameter, match="loopback"):
        serve_command(tiny_run, host="0.0.0.0", port=free_port(), teacher_share=None, no_teacher=True,
                      model="student", no_routing=False, set=[], access_log=False, adapter=None,
                      log_level="warning", allow_local_admin=True)


def test_adapter_config_that_is_not_an_object_is_a_clear_error(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(["not", "an", "object"]))
    host = types.SimpleNamespace(adapters={}, _peft=True, model_dir=tmp_path)
    with pytest.raises(ValueError, match="adapter_config.json: expected a JSON object, got list"):
        CausalLMStudent.load_adapter(host, "bee", tmp_path)
    (tmp_path / "adapter_config.json").write_bytes(b"\xff{")
    with pytest.raises(ValueError, match="not valid JSON"):
        CausalLMStudent.load_adapter(host, "bee", tmp_path)


# -- the teacher down: real errors, within the deadline, then the breaker --------------------------
def test_teacher_down_opens_the_breaker_and_escalations_answer_at_once(tiny_run, tmp_path):
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    app = make_app(tiny_run, tmp_path / "q.db", f"teacher.base_url={down}", "teacher.max_retries=20",
                   "serve.ood_threshold=-1", "serve.confidence_threshold=0", "serve.teacher_timeout_s=3",
                   "serve.teacher_breaker_failures=2", "serve.teacher_breaker_cooldown_s=30")
    with live_server(app) as base, httpx.Client(base_url=base, timeout=30) as c:
        times, docs = [], []
        for text in ("what is my balance", "will it rain tomorrow", "send money to mom", "balance please"):
            t0 = time.perf_counter()
            docs.append(c.post("/v1/chat/completions", json=chat_body(text)).json())
            times.append(time.perf_counter() - t0)
        health = c.get("/health").json()
        metrics = c.get("/metrics").text
    assert all(d["route"] == "degraded" for d in docs)
    # 20 retries would take minutes: they stop before the 3 s deadline, with the real error
    assert times[0] < 3 and times[1] < 3
    assert max(times[2:]) < 0.5  # the breaker is open: no wait at all
    rows = queue_rows(tiny_run, tmp_path / "q.db")
    assert [r["reason"] for r in rows] == ["teacher_error", "teacher_error", "breaker_open", "breaker_open"]
    assert "connection error" in rows[0]["detail"]["error"] and "deadline" in rows[0]["detail"]["error"]
    assert "timeout" not in rows[0]["reason"]
    assert "connection error" in rows[2]["detail"]["error"]  # the breaker names why it opened
    assert health["status"] == "degraded" and health["teacher_state"]["state"] == "open"
    assert health["teacher_state"]["consecutive_failures"] == 2
    assert 'potstill_teacher_state{state="open"} 1.0' in metrics
    assert 'potstill_teacher_errors_total{kind="breaker_open"} 2.0' in metrics


def test_bodies_that_would_hold_the_parser_for_long_are_refused_cheaply():
    from potstill.serve.app import ApiError, parse_json_body

    for body, code in ((b"[" + b"0," * 400_000 + b"0]", "invalid_json"),     # 400k numbers
                       (b"[" + b"[]," * 300_000 + b"[]]", "too_complex"),    # 300k lists
                       (b"[" * 100_000 + b"]" * 100_000, "invalid_json")):  # nested too deep
        t0 = time.perf_counter()
        with pytest.raises(ApiError) as e:
            parse_json_body(body.decode())
        assert e.value.status == 400 and e.value.code == code
        assert time.perf_counter() - t0 < 0.2  # was 150-300 ms of held GIL per MB
    # an ordinary full-size batch still parses
    big = json.dumps({"inputs": ["balance, transfer [or] {weather}? " * 100] * 240})
    assert len(parse_json_body(big)["inputs"]) == 240


def test_too_many_messages_are_refused_before_validation(tiny_run, tmp_path):
    app = make_app(tiny_run, tmp_path / "q.db", "serve.max_messages=8", teacher=None)
    with live_server(app) as base:
        many = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}] * 9}
        r = httpx.post(f"{base}/v1/chat/completions", json=many)
        ok = httpx.post(f"{base}/v1/chat/completions", json={**many, "messages": many["messages"][:8]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_messages"
    assert ok.status_code == 200


def test_a_large_classify_batch_matches_its_template_off_the_event_loop(tiny_run, tmp_path, monkeypatch):
    """256 inputs of 4,000 characters are a million characters of template matching: it ran on
    the event loop (the /health probe waited 64 ms behind 200 of them in bench/faults.py)."""
    import threading

    import potstill.serve.app as serve_app

    seen: list[str] = []
    real = serve_app.extract_input

    def spy(message, patterns):
        seen.append(threading.current_thread().name)
        return real(message, patterns)

    monkeypatch.setattr(serve_app, "extract_input", spy)
    app = make_app(tiny_run, tmp_path / "q.db", teacher=None)
    with live_server(app) as base, httpx.Client(base_url=base, timeout=60) as c:
        assert c.post("/v1/classify", json={"inputs": ["what is my balance"]}).status_code == 200
        small = set(seen)
        seen.clear()
        assert c.post("/v1/classify", json={"inputs": ["what is my balance " * 200] * 30}).status_code == 200
    assert small == {"test-uvicorn"}  # a small body: no thread hop
    assert "test-uvicorn" not in seen and len(seen) == 30


def test_the_served_classifier_tokenizes_only_what_the_model_reads(tiny_run):
    """A fast tokenizer tokenizes a whole text before it truncates: 4,000 characters cost ~60x
    the work of the 64 tokens the model reads. The served student cuts texts first, with the same
    result."""
    from potstill.serve.router import ClassifierStudent
    from potstill.students.hf import CHARS_PER_TOKEN_BOUND

    st = ClassifierStudent(tiny_run / "student", max_length=16)
    tok, lengths = st.tokenizer, []

    class Spy:
        def __call__(self, texts, **kw):
            lengths.extend(len(t) for t in texts)
            return tok(texts, **kw)

    long = "what is my balance please " * 160  # 4,160 characters
    full = tok([long], truncation=True, max_length=16)["input_ids"]
    st.tokenizer = Spy()
    logits, _ = st.forward([long, "send money to mom"])
    assert max(lengths) <= 16 * CHARS_PER_TOKEN_BOUND  # was 4,160
    st.tokenizer = tok
    assert tok([long[: 16 * CHARS_PER_TOKEN_BOUND]], truncation=True, max_length=16)["input_ids"] == full
    assert (st.forward([long, "send money to mom"])[0] == logits).all()
