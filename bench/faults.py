"""The fault suite (issue 11): labelling and serving under injected faults, a dead teacher and
hostile callers, on 127.0.0.1, with bounded loops. Prints a table and writes docs/RELIABILITY.md
(+ docs/reliability.json).

What runs where (everything offline; models are tiny, built from a config on the spot):

- the teacher: `tests/fake_openai.py` (a real HTTP/1.1 OpenAI-compatible server) in this
  process, with faults injected by a seeded script; its own request log is the ground truth for
  what was asked and answered;
- `potstill label` and the server (`create_app` + uvicorn) run in child processes, as a user
  runs them;
- the clients run in this process (the serving load on bench/loadgen.py: one keep-alive connection
  per client, cheap per request; the rest on httpx); the /health probe runs in its own child
  process so its timings do not share this process's GIL.

Parts:

1. label, 20% faults, kill -9, resume: the teacher answers 20% of requests with a fault (429
   with Retry-After, 500, a truncated body, a body without choices, a dropped connection);
   `potstill label` is killed with SIGKILL once the endpoint has seen 40% of the inputs, then
   rerun to the end. Counted from the endpoint's log: rows lost, answers paid twice, and those of
   them that were in flight at the kill (answered by the endpoint, never stored); SQLite
   `integrity_check` after the kill and at the end.
2. label against a dead teacher (connection refused) and a refused key (401): wall time, exit
   code, the reason printed; and a teacher whose answers name no label (exit code).
3. serving, 64 clients, every input escalated (serve.ood_threshold=-1, each text distinct so the
   teacher cache never answers): the teacher fails half the time, then goes down. Latency of
   escalated requests once the circuit breaker is open, 5xx count, and every degraded answer
   matched against the queue (exactly one item per degraded request id).
4. a corpus of malformed and hostile requests (bad JSON, huge integers, NaN, deep nesting, wrong
   types, bad UTF-8, lone surrogates, oversized bodies and fields, bad keys, a model key on admin
   endpoints, unknown routes...), each of which must get a 4xx in OpenAI's error shape, with a
   small body; plus valid but hostile requests (prompts crafted against the template matcher,
   full-size batches) that must be answered. /health is probed every 10 ms throughout.

    nice -n 10 .venv/bin/python bench/faults.py              # about 2-6 minutes on 2 cores, depending on load
    nice -n 10 .venv/bin/python bench/faults.py --quick      # smaller counts, for development
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from serve_load import LAUNCH, free_port, pct  # noqa: E402  (one copy of the server launcher)

LABELS = ["balance", "transfer", "weather"]

PROBE = """
import http.client, sys, time, os
port, out, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
with open(out, "w") as f:
    while not os.path.exists(stop):
        t0 = time.time()
        c.request("GET", "/health")
        r = c.getresponse(); r.read()
        f.write(f"{t0:.6f} {time.time() - t0:.6f} {r.status}\\n"); f.flush()
        time.sleep(0.01)
"""


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("POTSTILL_API_KEYS", "POTSTILL_ADMIN_KEYS")}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")}, **extra)
    return env


def potstill_cmd(*args: Any) -> list[str]:
    return [sys.executable, "-m", "potstill", *map(str, args)]


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as c:
        return c.execute("PRAGMA integrity_check").fetchone()[0]


def stored_calls(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT COUNT(*) FROM calls").fetchone()[0]


# -- tasks -----------------------------------------------------------------------------------------
def label_task(root: Path, url: str, n: int, **teacher: Any) -> Path:
    from conftest import make_rows, write_jsonl

    seeds = -(-n // 300)
    rows = [r for s in range(1, seeds + 1) for r in make_rows(300, s)][:n]
    write_jsonl(root / "data/train.jsonl", rows)
    write_jsonl(root / "data/validation.jsonl", make_rows(30, 6))
    t = {"kind": "openai", "model": "fake", "base_url": url, "concurrency": 8, "max_retries": 6,
         "timeout_s": 2.0, "logprobs": False, **teacher}
    (root / "potstill.yaml").write_text(
        f"name: faults\nlabels: {json.dumps(LABELS)}\n"
        "data: {train: data/train.jsonl, validation: data/validation.jsonl}\n"
        f"teacher: {json.dumps(t)}\n")
    return root / "potstill.yaml"


def gold_of(root: Path) -> dict[str, str]:
    return {json.loads(l)["text"]: json.loads(l)["label"]
            for l in (root / "data/train.jsonl").read_text().splitlines()}


# -- 1. labelling under faults, kill -9, resume --------------------------------------------------------
def label_kill_resume(work: Path, n: int, fault_share: float) -> dict[str, Any]:
    from fake_openai import FakeOpenAI, Fault

    root = work / "label-faults"
    root.mkdir(parents=True)
    rng = random.Random(11)
    lock = threading.Lock()
    kinds = [Fault("429", retry_after=0.2), Fault("500"), Fault("malformed"), Fault("no_choices"),
             Fault("drop")]

    def fault_fn(no: int, text: str | None, attempt: int):
        with lock:
            return rng.choice(kinds) if rng.random() < fault_share else None

    gold: dict[str, str] = {}
    fake = FakeOpenAI(lambda t: gold.get(t), labels=LABELS, fault_fn=fault_fn, delay_ms=15,
                      record_bodies=False)
    with fake as url:
        spec = label_task(root, url, n)
        gold.update(gold_of(root))
        db = root / "runs/faults/potstill.db"
        log1 = open(root / "first.log", "wb")
        t0 = time.monotonic()
        p = subprocess.Popen(potstill_cmd("label", spec), env=child_env(), stdout=log1,
                             stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while fake.count < 0.4 * n and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(p.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        p.wait()
        log1.close()
        time.sleep(0.3)  # let the endpoint finish what was in flight (its log is the truth)
        after_kill = {"integrity": integrity(db), "stored": stored_calls(db)}
        before = list(fake.requests)
        ok_before = [r for r in before if r.t_arrival <= t_kill and r.status == 200 and r.fault is None]
        texts_ok_before = {r.text for r in ok_before}
        t1 = time.monotonic()
        p2 = subprocess.run(potstill_cmd("label", spec), env=child_env(), capture_output=True,
                            text=True, timeout=600)
        resume_s = time.monotonic() - t1
        reqs = list(fake.requests)
    records = [json.loads(l) for l in (root / "runs/faults/labels/records.jsonl").read_text().splitlines()]
    ok = [r for r in reqs if r.status == 200 and r.fault is None]
    per_text: dict[str, int] = {}
    for r in ok:
        per_text[r.text] = per_text.get(r.text, 0) + 1
    paid_twice = sum(c - 1 for c in per_text.values())
    in_flight = len(texts_ok_before) - after_kill["stored"]  # answered by the endpoint, never stored
    faults: dict[str, int] = {}
    for r in reqs:
        if r.fault:
            faults[r.fault] = faults.get(r.fault, 0) + 1
    m = re.search(r"\((\d+) from cache, (\d+) new calls, (\d+) failed", p2.stderr)
    return {
        "inputs": n, "fault_share": fault_share, "requests": len(reqs), "faults_played": faults,
        "killed_after_requests": len(before), "killed_at_s": round(t_kill - t0, 2),
        "stored_at_kill": after_kill["stored"], "integrity_after_kill": after_kill["integrity"],
        "resume_exit": p2.returncode, "resume_s": round(resume_s, 1),
        "resume_reported": m.groups() if m else None,
        "rows": len(records), "rows_labelled": sum(r["label"] is not None for r in records),
        "rows_right": sum(r["label"] == gold.get(r["text"]) for r in records),
        "rows_lost": n - sum(r["label"] is not None for r in records),
        "paid_twice": paid_twice, "in_flight_at_kill": in_flight,
        "paid_twice_unexplained": paid_twice - in_flight,
        "stored_end": stored_calls(db), "integrity_end": integrity(db),
    }


# -- 2. labelling against a dead teacher / a refused key -------------------------------------------------
def label_fail_fast(work: Path) -> list[dict[str, Any]]:
    from fake_openai import FakeOpenAI

    # what the command costs before it labels anything (interpreter, imports: torch via the CLI)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import potstill.cli, potstill.pipeline, potstill.stages.label"],
                   env=child_env(), check=True, timeout=600)
    startup = time.monotonic() - t0
    out = []
    cases = [("connection refused", None), ("HTTP 401 (key refused)", "401"),
             ("answers name no label", "nolabel")]
    for name, mode in cases:
        root = work / f"fail-{len(out)}"
        root.mkdir(parents=True)
        fake = None
        if mode is None:
            url = f"http://127.0.0.1:{free_port()}/v1"
        else:
            fake = FakeOpenAI(lambda t: None, labels=LABELS,
                              fault_fn=(lambda no, t, k: "401") if mode == "401" else None)
            url = fake.__enter__()
        try:
            spec = label_task(root, url, 64, max_retries=5)
            t0 = time.monotonic()
            p = subprocess.run(potstill_cmd("label", spec), env=child_env(), capture_output=True,
                               text=True, timeout=600)
            wall = time.monotonic() - t0
        finally:
            if fake is not None:
                fake.__exit__(None, None, None)
        lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
        reason = lines[-1] if lines else ""
        m = re.search(r"failed over ([0-9.]+)s", p.stderr)
        out.append({"case": name, "exit": p.returncode, "wall_s": round(wall, 1),
                    "startup_s": round(startup, 1), "after_startup_s": round(wall - startup, 1),
                    "gave_up_after_s": float(m.group(1)) if m else None,
                    "requests": fake.count if fake is not None else None,
                    "reason": reason[:300]})
    return out


# -- servers ---------------------------------------------------------------------------------------------
def start_server(run: Path, overrides: list[str], db: Path, no_teacher: bool, log: Path,
                 env: dict[str, str] | None = None):
    import httpx

    port = free_port()
    cfg = {"run": str(run), "overrides": overrides, "db": str(db), "port": port,
           "no_teacher": no_teacher}
    out = open(log, "ab")
    p = subprocess.Popen([sys.executable, "-c", LAUNCH, json.dumps(cfg)], env=child_env(**(env or {})),
                         stdout=out, stderr=subprocess.STDOUT)
    out.close()
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"server exited {p.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return p, base
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > 180:
            p.kill()
            raise RuntimeError("server did not come up")
        time.sleep(0.2)


def stop_server(p) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


# -- 3. serving with the teacher failing, then down --------------------------------------------------------
def serve_teacher_down(run: Path, work: Path, clients: int, phase1_s: float, phase2_s: float,
                       light_s: float) -> dict[str, Any]:
    """64 clients; inputs the student labels `weather` are high-stakes (always escalated), the
    others are answered by the student: the two routes are measured side by side, in the same
    load. Phases: teacher failing half the time, teacher down (64 clients), teacher down (one
    client, sequential: the latency a request pays when the machine is not saturated)."""
    import httpx
    from fake_openai import FakeOpenAI
    from loadgen import LeanConnection, encode_post

    rng = random.Random(5)
    lock = threading.Lock()

    def half(no: int, text: str | None, attempt: int):
        with lock:
            return "500" if rng.random() < 0.5 else None

    fake = FakeOpenAI(lambda t: "weather", labels=LABELS, fault_fn=half, delay_ms=10,
                      record_bodies=False)
    url = fake.__enter__()
    db = work / "serve-down.db"
    ov = [f"teacher.base_url={url}", "teacher.max_retries=2", "teacher.timeout_s=2",
          "serve.high_stakes=[weather]", "serve.ood_threshold=1e9", "serve.confidence_threshold=0",
          "serve.teacher_timeout_s=2", "serve.teacher_breaker_failures=5",
          "serve.teacher_breaker_cooldown_s=2", "serve.shadow_share=0"]
    p, base = start_server(run, ov, db, False, work / "serve-down.log")
    texts = [json.loads(l)["text"] for l in (run / "inputs/test.jsonl").read_text().splitlines()]
    results: list[dict[str, Any]] = []
    states: list[tuple[float, str]] = []
    phase = ["warmup"]
    t_down: list[float | None] = [None]
    counter = [0]

    host, port = base.removeprefix("http://").rsplit(":", 1)

    async def one(conn: LeanConnection, ph: str) -> None:
        i = counter[0]
        counter[0] += 1
        text = f"{texts[i % len(texts)]} {i}"  # distinct: the teacher cache never answers
        raw = encode_post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": text}]})
        t0 = time.monotonic()
        try:
            status, body = await conn.request(raw)
            try:
                d = json.loads(body)
            except ValueError:
                d = None
            d = d if isinstance(d, dict) else {}
            results.append({"t0": t0, "ms": (time.monotonic() - t0) * 1000, "phase": ph,
                            "status": status, "id": d.get("id"), "route": d.get("route"),
                            "escalated": bool(d.get("reasons")), "degraded": d.get("degraded")})
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            results.append({"t0": t0, "ms": (time.monotonic() - t0) * 1000, "phase": ph,
                            "status": type(e).__name__, "id": None, "route": None,
                            "escalated": None, "degraded": None})

    async def drive() -> str:
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:  # /health, /metrics
            # the load: one keep-alive connection per client (bench/loadgen.py: httpx's own CPU per
            # request would be taken from the server on these 2 cores)
            warm = LeanConnection(host, int(port))
            for _ in range(24):  # warm-up, sequential, teacher up (failing half the time)
                await one(warm, "warmup")
            warm.close()
            t_start = time.monotonic()
            stop = t_start + phase1_s + phase2_s
            phase[0] = "failing"

            async def worker() -> None:
                conn = LeanConnection(host, int(port))
                while time.monotonic() < stop:
                    await one(conn, phase[0])
                conn.close()

            async def watch() -> None:
                while time.monotonic() < stop + light_s + 1:
                    try:
                        h = (await c.get("/health")).json()
                        st = (h.get("teacher_state") or {}).get("state")
                        if not states or states[-1][1] != st:
                            states.append((time.monotonic(), st))
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.05)

            async def take_down() -> None:
                await asyncio.sleep(phase1_s)
                await asyncio.to_thread(fake.stop)  # connection refused from here on
                t_down[0] = time.monotonic()
                phase[0] = "down"

            async def light() -> None:
                await asyncio.sleep(phase1_s + phase2_s + 0.5)
                phase[0] = "down_light"
                end = time.monotonic() + light_s
                conn = LeanConnection(host, int(port))
                while time.monotonic() < end:
                    await one(conn, "down_light")
                conn.close()

            await asyncio.gather(*[worker() for _ in range(clients)], watch(), take_down(), light())
            return (await c.get("/metrics")).text

    try:
        metrics = asyncio.run(drive())
    finally:
        stop_server(p)
        fake.stop()
    with sqlite3.connect(db) as cdb:
        q = cdb.execute("SELECT request_id, kind, reason FROM queue").fetchall()
    queued: dict[str, list[tuple[str, str]]] = {}
    for rid, kind, reason in q:
        queued.setdefault(rid, []).append((kind, reason))
    degraded = [r for r in results if r["degraded"]]
    teacher = [r for r in results if r["route"] == "teacher"]
    t_open = next((t for t, s in states if s == "open" and t_down[0] and t >= t_down[0]), None)

    def lat(ph: str, escalated: bool, after: float | None = None) -> list[float]:
        return [r["ms"] for r in results if r["phase"] == ph and r["escalated"] is escalated
                and (after is None or r["t0"] >= after)]

    reasons: dict[str, int] = {}
    for _, kind, reason in q:
        if kind == "degraded":
            reasons[reason] = reasons.get(reason, 0) + 1
    opens = re.search(r"^potstill_teacher_breaker_opens (\S+)", metrics, re.M)
    out: dict[str, Any] = {
        "clients": clients, "phase1_s": phase1_s, "phase2_s": phase2_s, "light_s": light_s,
        "requests": len(results),
        "status_5xx": sum(1 for r in results if isinstance(r["status"], int) and r["status"] >= 500),
        "status_other": sum(1 for r in results if r["status"] != 200),
        "other_statuses": sorted({str(r["status"]) for r in results if r["status"] != 200}),
        "escalated": sum(1 for r in results if r["escalated"]),
        "answered_by_teacher": len(teacher), "degraded": len(degraded),
        "degraded_queued_once": sum(1 for r in degraded if len(queued.get(r["id"], [])) == 1
                                    and queued[r["id"]][0][0] == "degraded"),
        "degraded_not_queued": sum(1 for r in degraded if r["id"] not in queued),
        "degraded_queued_twice": sum(1 for r in degraded if len(queued.get(r["id"], [])) > 1),
        "teacher_answers_queued_once": sum(1 for r in teacher if len(queued.get(r["id"], [])) == 1),
        "student_answers_queued": sum(1 for r in results if r["route"] == "student" and r["id"] in queued),
        "queue_items": len(q), "degraded_reasons": reasons,
        "breaker_states": [(round(t - (t_down[0] or t), 2), s) for t, s in states],
        "breaker_opened_s_after_down": round(t_open - t_down[0], 2) if t_open and t_down[0] else None,
        "breaker_opens": float(opens.group(1)) if opens else None,
    }
    for name, ph, after in (("failing", "failing", None), ("open", "down", t_open),
                            ("light", "down_light", None)):
        for route, esc in (("escalated", True), ("student", False)):
            xs = lat(ph, esc, after)
            out[f"{name}_{route}_n"] = len(xs)
            out[f"{name}_{route}_p50_ms"] = pct(xs, 50)
            out[f"{name}_{route}_p99_ms"] = pct(xs, 99)
            out[f"{name}_{route}_max_ms"] = max(xs) if xs else None
    return out


# -- 4. the hostile corpus ----------------------------------------------------------------------------------
MK, AK = "sk-bench-model", "sk-bench-admin"


def corpus() -> list[tuple[str, str, str, Any, dict[str, str]]]:
    """(name, method, path, body (bytes, JSON-able or None), headers) of requests that must get a 4xx."""
    def chat(**kw: Any) -> dict[str, Any]:
        return {"model": "tiny", "messages": [{"role": "user", "content": "what is my balance"}], **kw}

    c: list[tuple[str, str, str, Any, dict[str, str]]] = []
    add = lambda name, method, path, body=None, headers=None: c.append(  # noqa: E731
        (name, method, path, body, headers if headers is not None else {"authorization": f"Bearer {MK}"}))
    cc = "/v1/chat/completions"
    # bodies that are not a JSON object
    add("empty body", "POST", cc, b"")
    add("whitespace body", "POST", cc, b"   \n ")
    add("bad JSON", "POST", cc, b'{"model": "tiny",')
    add("JSON array", "POST", cc, b"[1, 2, 3]")
    add("JSON string", "POST", cc, b'"hello"')
    add("JSON null", "POST", cc, b"null")
    add("5,000-digit integer", "POST", cc, b'{"model": "tiny", "n": ' + b"9" * 5000 + b', "messages": []}')
    add("100,000-digit integer in classify", "POST", "/v1/classify", b'{"inputs": ["x"], "top_k": ' + b"1" * 100000 + b"}")
    add("NaN", "POST", cc, b'{"model": "tiny", "n": NaN, "messages": []}')
    add("Infinity", "POST", "/v1/classify", b'{"inputs": ["x"], "top_k": Infinity}')
    add("-Infinity", "POST", "/v1/classify", b'{"inputs": ["x"], "top_k": -Infinity}')
    add("1e400 (overflows to inf)", "POST", "/v1/classify", b'{"inputs": ["x"], "top_k": 1e400}')
    add("nested 100,000 deep", "POST", cc, b"[" * 100000 + b"]" * 100000)
    add("nested objects 50,000 deep", "POST", "/v1/classify", b'{"a":' * 50000 + b"1" + b"}" * 50000)
    add("not UTF-8", "POST", cc, b'{"model": "tiny", "messages": [{"role": "user", "content": "caf\xe9"}]}')
    add("UTF-16 body", "POST", cc, json.dumps(chat()).encode("utf-16"))
    add("lone surrogate", "POST", cc, b'{"model": "tiny", "messages": [{"role": "user", "content": "x\\udc00"}]}')
    add("1 MB of numbers", "POST", "/v1/classify", b'{"inputs": ["x"], "n": [' + b"0," * 499_990 + b"0]}")
    add("1 MB of empty lists", "POST", "/v1/classify", b'{"inputs": ["x"], "n": [' + b"[]," * 333_000 + b"[]]}")
    add("99,000 empty lists (just under the bracket bound)", "POST", "/v1/classify",
        b'{"inputs": ["x"], "n": [' + b"[]," * 98_990 + b"[]]}")
    add("1 MB of empty strings", "POST", "/v1/classify", b'{"inputs": ["x"], "n": [' + b'"",' * 333_000 + b'""]}')
    add("1,025 messages", "POST", cc, chat(messages=[{"role": "user", "content": "a"}] * 1025))
    add("oversized body", "POST", cc, json.dumps(chat(messages=[{"role": "user", "content": "a" * 1_100_000}])).encode())
    add("oversized input", "POST", cc, json.dumps(chat(messages=[{"role": "user", "content": "a" * 4001}])).encode())
    add("oversized input in parts", "POST", cc, json.dumps(chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "a" * 3000}, {"type": "text", "text": "b" * 3000}]}])).encode())
    add("content whitespace only", "POST", cc, chat(messages=[{"role": "user", "content": "   \n\t"}]))
    add("content parts without text", "POST", cc, chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]))
    add("content a number", "POST", cc, chat(messages=[{"role": "user", "content": 5}]))
    add("content an object", "POST", cc, chat(messages=[{"role": "user", "content": {"text": "hi"}}]))
    add("messages a string", "POST", cc, {"model": "tiny", "messages": "hi"})
    add("messages empty", "POST", cc, {"model": "tiny", "messages": []})
    add("messages missing", "POST", cc, {"model": "tiny"})
    add("message without role", "POST", cc, {"model": "tiny", "messages": [{"content": "hi"}]})
    add("no user message", "POST", cc, chat(messages=[{"role": "system", "content": "be nice"}]))
    add("model missing", "POST", cc, {"messages": [{"role": "user", "content": "hi"}]})
    add("model a number", "POST", cc, chat(model=3))
    add("unknown model", "POST", cc, chat(model="gpt-4o"))
    add("model name 100,000 chars", "POST", cc, chat(model="m" * 100_000))
    add("n = 0", "POST", cc, chat(n=0))
    add("n = 17", "POST", cc, chat(n=17))
    add("n = true", "POST", cc, chat(n=True))
    add("n a float", "POST", cc, chat(n=2.5))
    add("logprobs a string", "POST", cc, chat(logprobs="yes"))
    add("logprobs = 1", "POST", cc, chat(logprobs=1))
    add("top_logprobs = 99", "POST", cc, chat(top_logprobs=99))
    add("top_logprobs = -1", "POST", cc, chat(top_logprobs=-1))
    add("stream a string", "POST", cc, chat(stream="yes"))
    add("classify inputs missing", "POST", "/v1/classify", {"model": "tiny"})
    add("classify inputs empty", "POST", "/v1/classify", {"inputs": []})
    add("classify inputs a string", "POST", "/v1/classify", {"inputs": "hi"})
    add("classify null input", "POST", "/v1/classify", {"inputs": [None]})
    add("classify number input", "POST", "/v1/classify", {"inputs": ["ok", 7]})
    add("classify 257 inputs", "POST", "/v1/classify", {"inputs": ["ok"] * 257})
    add("classify unknown field", "POST", "/v1/classify", {"inputs": ["ok"], "topk": 3})
    add("classify top_k = 101", "POST", "/v1/classify", {"inputs": ["ok"], "top_k": 101})
    add("classify unknown model", "POST", "/v1/classify", {"inputs": ["ok"], "model": "x"})
    # auth
    add("no key", "POST", cc, chat(), {})
    add("wrong key", "POST", cc, chat(), {"authorization": "Bearer sk-wrong"})
    add("Basic scheme", "POST", cc, chat(), {"authorization": f"Basic {MK}"})
    add("empty bearer", "POST", cc, chat(), {"authorization": "Bearer"})
    add("8 KB key", "POST", cc, chat(), {"authorization": "Bearer " + "k" * 8000})
    add("non-ASCII key", "POST", cc, chat(), {"authorization": "Bearer sk-\u00e9\u00e8".encode("latin-1")})
    add("metrics without key", "GET", "/metrics", None, {})
    add("models without key", "GET", "/v1/models", None, {})
    # admin endpoints
    add("feedback with a model key", "POST", "/v1/feedback", {"request_id": "x", "answer": "wrong"})
    add("adapter load with a model key", "POST", "/v1/adapters", {"name": "a", "path": "/etc"})
    add("adapter unload with a model key", "DELETE", "/v1/adapters/tiny", None)
    adm = {"authorization": f"Bearer {AK}"}
    add("feedback unknown request", "POST", "/v1/feedback", {"request_id": "nope", "answer": "wrong"}, adm)
    add("feedback id missing", "POST", "/v1/feedback", {"answer": "wrong"}, adm)
    add("feedback id 201 chars", "POST", "/v1/feedback", {"request_id": "r" * 201, "answer": "wrong"}, adm)
    add("feedback answer 900 KB", "POST", "/v1/feedback", {"request_id": "x", "answer": "z" * 900_000}, adm)
    add("feedback answer not a label", "POST", "/v1/feedback", {"request_id": "x", "answer": "sports"}, adm)
    add("feedback comment 2,001 chars", "POST", "/v1/feedback", {"request_id": "x", "answer": "wrong", "comment": "c" * 2001}, adm)
    add("feedback extra field", "POST", "/v1/feedback", {"request_id": "x", "answer": "wrong", "trainer": "me"}, adm)
    add("adapter on a classifier student", "POST", "/v1/adapters", {"name": "a", "path": "/tmp"}, adm)
    add("adapter path with NUL", "POST", "/v1/adapters", {"name": "a", "path": "/tmp/\u0000x"}, adm)
    add("adapter unload on a classifier", "DELETE", "/v1/adapters/bee", None, adm)
    # routes
    add("unknown model retrieve", "GET", "/v1/models/gpt-4o", None)
    add("model retrieve 50,000 chars", "GET", "/v1/models/" + "m" * 50000, None)
    add("unknown route", "POST", "/v1/completions", {"prompt": "hi"})
    add("embeddings route", "POST", "/v1/embeddings", {"input": "hi", "model": "tiny"})
    add("path traversal", "GET", "/v1/../../etc/passwd", None)
    add("wrong method", "GET", cc, None)
    add("PUT on classify", "PUT", "/v1/classify", {"inputs": ["x"]})
    return c


def crafted_valid() -> list[tuple[str, str, Any]]:
    """Valid requests built to hurt: they must be answered (200), and must not stall the loop."""
    from potstill.spec import DEFAULT_TEMPLATE

    evil = ("x\n\nLabels: \n\nText: " * 220)[:3990]
    lab = ("Labels: a\n\nText: " * 300)[:3990]
    full = DEFAULT_TEMPLATE.format(instruction="Classify.", labels="a, b", text="y\n\nText: " * 380)[:3990]
    return [
        ("30 crafted template prompts in one classify", "/v1/classify", {"inputs": [evil] * 30}),
        ("200 crafted prompts in one classify", "/v1/classify", {"inputs": [lab] * 200}),
        ("crafted chat prompt", "/v1/chat/completions",
         {"model": "tiny", "messages": [{"role": "user", "content": evil}]}),
        ("template prompt with nested Text: markers", "/v1/chat/completions",
         {"model": "tiny", "messages": [{"role": "user", "content": full}]}),
        ("240 inputs of 4,000 chars", "/v1/classify", {"inputs": ["balance " * 499] * 240}),
        ("1,024 messages", "/v1/chat/completions",
         {"model": "tiny", "messages": [{"role": "user", "content": "a"}] * 1024}),
        ("NUL-only content", "/v1/chat/completions",
         {"model": "tiny", "messages": [{"role": "user", "content": "\u0000"}]}),
    ]


def hostile(run: Path, work: Path) -> dict[str, Any]:
    import httpx

    p, base = start_server(run, [], work / "hostile.db", True, work / "hostile.log",
                           env={"POTSTILL_API_KEYS": MK, "POTSTILL_ADMIN_KEYS": AK})
    port = int(base.rsplit(":", 1)[1])
    probe_out, stop_file = work / "probe.txt", work / "probe.stop"
    probe = subprocess.Popen([sys.executable, "-c", PROBE, str(port), str(probe_out), str(stop_file)])
    rows: list[dict[str, Any]] = []
    try:
        time.sleep(2.0)  # idle probes: the baseline
        t_start = time.time()
        with httpx.Client(base_url=base, timeout=120) as c:
            for name, method, path, body, headers in corpus():
                content = body if (body is None or isinstance(body, bytes)) else json.dumps(body).encode()
                t0 = time.perf_counter()
                try:
                    r = c.request(method, path, content=content,
                                  headers={"content-type": "application/json", **headers})
                    status, text = r.status_code, r.text
                except Exception as e:  # noqa: BLE001 - recorded as not a 4xx
                    status, text = type(e).__name__, ""
                ms = (time.perf_counter() - t0) * 1000
                try:
                    err = json.loads(text)["error"]
                    shaped = (set(err) == {"message", "type", "param", "code"} and bool(err["message"])
                              and err["type"] == "invalid_request_error")
                    code = err.get("code")
                except (ValueError, KeyError, TypeError):
                    shaped, code = False, None
                rows.append({"name": name, "status": status, "code": code, "shaped": shaped,
                             "bytes": len(text), "ms": round(ms, 1), "t0": time.time() - ms / 1000,
                             "t1": time.time()})
            valid = []
            for name, path, body in crafted_valid():
                t0 = time.perf_counter()
                r = c.post(path, json=body, headers={"authorization": f"Bearer {MK}"})
                ms = (time.perf_counter() - t0) * 1000
                valid.append({"name": name, "status": r.status_code, "ms": round(ms, 1),
                              "t0": time.time() - ms / 1000, "t1": time.time()})
        t_end = time.time()
        time.sleep(0.3)
    finally:
        stop_file.write_text("stop")
        probe.wait(30)
        stop_server(p)
    probes = [tuple(map(float, l.split())) for l in probe_out.read_text().splitlines() if l.strip()]
    idle = [d * 1000 for t, d, s in probes if t < t_start]
    during = [d * 1000 for t, d, s in probes if t_start <= t <= t_end]
    bad_status = [r for r in rows if not (isinstance(r["status"], int) and 400 <= r["status"] < 500)]
    # the slowest /health probes, and the requests in flight while they waited
    worst = sorted(((d, t) for t, d, s in probes if t_start <= t <= t_end), reverse=True)[:3]
    blame = [{"health_ms": round(d * 1000, 1),
              "in_flight": [r["name"] for r in rows + valid if r["t0"] <= t + d and r["t1"] >= t]}
             for d, t in worst]
    return {
        "requests": len(rows), "answered_4xx": len(rows) - len(bad_status),
        "openai_shaped": sum(r["shaped"] for r in rows), "largest_error_body": max(r["bytes"] for r in rows),
        "not_4xx": [(r["name"], r["status"]) for r in bad_status],
        "not_shaped": [r["name"] for r in rows if not r["shaped"]],
        "rows": rows, "valid_hostile": valid,
        "health_probes_during": len(during), "health_during_p50_ms": pct(during, 50),
        "health_during_p99_ms": pct(during, 99), "health_during_max_ms": max(during) if during else None,
        "health_idle_p50_ms": pct(idle, 50), "health_idle_max_ms": max(idle) if idle else None,
        "corpus_s": round(t_end - t_start, 1), "slowest_health": blame,
    }


# -- report ---------------------------------------------------------------------------------------------
def fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def report(res: dict[str, Any], cmd: str) -> str:
    L = res["label_kill_resume"]
    F = res["label_fail_fast"]
    S = res["serve_teacher_down"]
    H = res["hostile"]
    goal = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    lines = [
        "# Reliability: faults, bad input and hostile callers",
        "",
        f"From `{cmd}` ({res['when']}, {res['machine']}; took {res['took_s']:.0f} s; load average "
        f"{res.get('load_before', '?')} when it started: latencies move with other work on the "
        "machine, and a loaded machine gives upper bounds). Models are tiny (built from a config); the teacher is "
        "`tests/fake_openai.py` with injected faults; `potstill label` and the server run as child "
        "processes on 127.0.0.1. Raw figures: `docs/reliability.json`."
        + ("".join(f" Part(s) {', '.join(r['parts'])} rerun alone with `--only` at {r['when']}."
                   for r in res.get("reruns", []))),
        "",
        "## Goals",
        "",
        "| goal | measured | |",
        "|---|---|---|",
        f"| labelling, {L['fault_share']:.0%} faults + `kill -9` + resume: 0 rows lost | {L['rows_lost']} of {L['inputs']} lost | {goal(L['rows_lost'] == 0)} |",
        f"| ... 0 calls paid twice except answers in flight at the kill | {L['paid_twice']} paid twice, {L['in_flight_at_kill']} of them in flight at the kill, {L['paid_twice_unexplained']} otherwise | {goal(L['paid_twice_unexplained'] == 0)} |",
        f"| ... 0 corrupt stores | integrity_check: `{L['integrity_after_kill']}` after the kill, `{L['integrity_end']}` at the end | {goal(L['integrity_after_kill'] == 'ok' and L['integrity_end'] == 'ok')} |",
    ]
    for f in F[:2]:
        inner = f"; the labelling gave up after {f['gave_up_after_s']} s" if f.get("gave_up_after_s") else ""
        lines.append(f"| teacher {f['case']}: fails within 10 s, with the reason, non-zero exit | exit {f['exit']} after {f['wall_s']} s wall, of which {f.get('startup_s')} s is start-up (imports){inner} | {goal(f['exit'] != 0 and f.get('after_startup_s', f['wall_s']) < 10)} (after start-up) |")
    lines += [
        f"| serving, teacher down: p99 of escalated requests < 100 ms once the breaker is open | {S['clients']} clients: p99 {fmt(S['open_escalated_p99_ms'])} ms (student-answered beside it: {fmt(S['open_student_p99_ms'])} ms); one client: p99 {fmt(S['light_escalated_p99_ms'])} ms (student-answered: {fmt(S['light_student_p99_ms'])} ms) | {goal(all(S[k] is not None and S[k] < 100 for k in ('open_escalated_p99_ms', 'light_escalated_p99_ms')))} |",
        f"| ... 0 5xx over the run | {S['status_5xx']} 5xx of {S['requests']} ({S['status_other']} not 200) | {goal(S['status_5xx'] == 0)} |",
        f"| ... every degraded answer marked and queued exactly once | {S['degraded_queued_once']} of {S['degraded']} queued once ({S['degraded_not_queued']} missing, {S['degraded_queued_twice']} twice) | {goal(S['degraded_queued_once'] == S['degraded'])} |",
        f"| hostile corpus: 100% 4xx in OpenAI's error shape | {H['answered_4xx']}/{H['requests']} 4xx, {H['openai_shaped']}/{H['requests']} shaped, largest error body {H['largest_error_body']} B | {goal(H['answered_4xx'] == H['requests'] == H['openai_shaped'])} |",
        f"| no request blocks the event loop > 50 ms (/health during the corpus) | max {fmt(H['health_during_max_ms'])} ms, p99 {fmt(H['health_during_p99_ms'])} ms over {H['health_probes_during']} probes (idle: max {fmt(H['health_idle_max_ms'])} ms) | {goal(H['health_during_max_ms'] is not None and H['health_during_max_ms'] < 50)} |",
        "",
        "Reading the table: the labelling goals are about the command as a user runs it: "
        "`potstill label` starts with the check before spending (`potstill check`), which makes "
        f"one test call and stops there ({F[1]['requests']} request(s) reached the endpoint on the "
        f"401); start-up ({fmt(F[0].get('startup_s'))} s) is importing the CLI and the stages. The "
        f"serving latency goal is judged at {S['clients']} clients and at one; under that load an "
        "escalated request answered degraded costs what a student-answered one costs (section 3 "
        "has both side by side, and what changed). The "
        "/health probe's worst case and the requests in flight at that moment are in section 4.",
        "",
        "## 1. Labelling under faults, `kill -9`, resume",
        "",
        f"{L['inputs']} inputs, concurrency 8, max_retries 6; the endpoint answered {L['requests']} requests "
        f"with faults {L['faults_played']}. Killed (SIGKILL) {L['killed_at_s']} s in, after "
        f"{L['killed_after_requests']} requests, with {L['stored_at_kill']} answers stored; the rerun "
        f"(exit {L['resume_exit']}, {L['resume_s']} s) reported (from cache, new calls, failed) = "
        f"{L['resume_reported']}. Final: {L['rows_labelled']}/{L['rows']} rows labelled, "
        f"{L['rows_right']} equal to the endpoint's label; {L['stored_end']} answers stored. "
        "`paid twice` counts texts the endpoint answered successfully more than once (its own log); "
        "`in flight at the kill` counts texts it answered before the kill that the killed run never "
        "stored.",
        "",
        "## 2. Labelling against a teacher that cannot answer (64 inputs, max_retries 5)",
        "",
        "| case | exit | wall s | start-up s | labelling gave up after s | requests seen | last line of stderr |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in F:
        reason = f["reason"].replace("|", "\\|")
        lines.append(f"| {f['case']} | {f['exit']} | {f['wall_s']} | {fmt(f.get('startup_s'))} | {fmt(f['gave_up_after_s'])} | {fmt(f['requests'])} | {reason} |")
    lines += [
        "",
        "Start-up is `python -c \"import potstill.cli, potstill.pipeline, potstill.stages.label\"` timed "
        "alone. `labelling gave up after` is the labelling stage's own figure when it is the one "
        "that stops (—: the check stopped the command before labelling began). The last stderr "
        "line is the CLI's one-line `error:` with the reason.",
        "",
        f"## 3. Serving: {S['clients']} clients, teacher failing half the time ({S['phase1_s']:g} s), then down ({S['phase2_s']:g} s)",
        "",
        "Inputs the student labels `weather` are high-stakes (always escalated), the others are "
        "answered by the student; each text distinct (the teacher cache never answers); teacher "
        "max_retries 2, serve.teacher_timeout_s 2, breaker: 5 failures, 2 s cool-down; the "
        "endpoint answers 500 to half the requests, then is stopped (connection refused).",
        "",
        "Escalated (high-stakes `weather` inputs) and student-answered requests, side by side in the "
        "same load:",
        "",
        "| phase | route | requests | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
        *[f"| {ph} | {rt} | {S[f'{key}_{rt}_n']} | {fmt(S[f'{key}_{rt}_p50_ms'])} | {fmt(S[f'{key}_{rt}_p99_ms'])} | {fmt(S[f'{key}_{rt}_max_ms'])} |"
          for key, ph in (("failing", f"teacher failing half the time, {S['clients']} clients"),
                          ("open", f"teacher down, breaker open, {S['clients']} clients"),
                          ("light", "teacher down, breaker open, 1 client"))
          for rt in ("escalated", "student")],
        "",
        f"With {S['clients']} clients on 2 shared cores (the clients run on them too) the server's "
        "event loop is the bottleneck: one thread at 90-100% of a core (`top -H` during the breaker-"
        "open phase, before and after the changes below) while a third to a half of the machine "
        "is idle, so the latency there is queueing for that thread. The escalated/student ratio is what the teacher path adds. One client shows what "
        "a request pays when nothing queues.",
        "",
        "Once the breaker is open, a degraded answer needs its queue item committed before it goes "
        "out, so a killed server loses none (serve/queue.py). Until 2026-11-29 that write was a "
        "second trip from the event loop to a writer thread and back, and under this load each trip "
        "waits its turn behind every other request: escalated p99 124 ms against 97 ms for "
        "student-answered requests in the same run. Two changes since (both in serve/):",
        "",
        "- the router decides in the student's batcher thread, right after the forward pass; when "
        "the teacher is not to be asked (no teacher, or its breaker open), the batch's degraded "
        "answers are written there, in one transaction, before the batch's results go back "
        "(router.py, `Router._predict`): no second trip;",
        "- POST on /v1/chat/completions and /v1/classify goes straight to its handler, past "
        "FastAPI's router and dependency layers (app.py, `_HotRoutes`): py-spy on the server under "
        "this load put a third of the event loop's time per request in those layers.",
        "",
        "Measured before committing, alternating the variants on the same machine (`python "
        "bench/faults.py --only serve --failing-s 4 --down-s 20 --light-s 2`, two rounds, breaker "
        "open, 64 clients; escalated / student-answered p99 ms, requests answered in the 20 s):",
        "",
        "| variant | round 1 | round 2 |",
        "|---|---|---|",
        "| before | 163.5 / 133.7, 14,728 | 139.9 / 112.6, 15,440 |",
        "| the write in the batcher's thread | 113.2 / 113.3, 16,349 | 117.3 / 117.2, 15,645 |",
        "| both changes | 94.2 / 94.4, 19,495 | 86.9 / 86.9, 20,939 |",
        "",
        "The first change closes the gap between the routes (escalated requests now cost what "
        "student-answered ones cost, at every percentile); the second makes every request cheaper "
        "(about 1.3x the requests in the same 20 s with this tiny model, whose forward pass is "
        "cheap; with the CLINC150 student, a few percent: docs/RESULTS.md). Earlier attempts, for the record: one "
        "multi-row INSERT per group of items (kept: store.py); the item written on the event loop "
        "itself (not kept: the gap closed by slowing every request); a shorter interpreter switch "
        "interval (no change beyond the run-to-run spread of about 10 ms at p99).",
        "",
        f"Answered by the teacher: {S['answered_by_teacher']} (each queued once: {S['teacher_answers_queued_once']}); "
        f"degraded: {S['degraded']}, by queue reason {S['degraded_reasons']}; queue items {S['queue_items']}. "
        f"Breaker opened {fmt(S['breaker_opened_s_after_down'], 2)} s after the teacher went down; "
        f"it opened {fmt(S['breaker_opens'], 0)} times in all (each cool-down ends in one trial call). "
        f"States seen by /health (s from the teacher going down): {S['breaker_states']}.",
        "",
        f"## 4. Hostile corpus ({H['requests']} requests that must get a 4xx)",
        "",
        f"Sent one after another in {H['corpus_s']} s to a server with model and admin keys set; "
        f"/health probed every 10 ms from a separate process: {H['health_probes_during']} probes "
        f"during the corpus, p50 {fmt(H['health_during_p50_ms'])} ms, p99 {fmt(H['health_during_p99_ms'])} ms, "
        f"max {fmt(H['health_during_max_ms'])} ms (idle before: p50 {fmt(H['health_idle_p50_ms'])} ms).",
        "",
        "The slowest /health probes during the corpus, and the requests in flight meanwhile: "
        + "; ".join(f"{b['health_ms']} ms ({', '.join(b['in_flight']) or 'none'})" for b in H["slowest_health"]) + ".",
        "",
        "| request | status | code | OpenAI shape | body bytes | ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in H["rows"]:
        lines.append(f"| {r['name']} | {r['status']} | {r['code']} | {'yes' if r['shaped'] else '**no**'} | {r['bytes']} | {r['ms']} |")
    lines += ["", "Valid but hostile requests (must be answered, and not stall /health):", "",
              "| request | status | ms |", "|---|---|---|"]
    for r in H["valid_hostile"]:
        lines.append(f"| {r['name']} | {r['status']} | {r['ms']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label-inputs", type=int, default=900)
    ap.add_argument("--fault-share", type=float, default=0.2)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--failing-s", type=float, default=20.0)
    ap.add_argument("--down-s", type=float, default=20.0)
    ap.add_argument("--light-s", type=float, default=8.0)
    ap.add_argument("--quick", action="store_true", help="smaller counts, for development")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    ap.add_argument("--only", default="label,fail,serve,hostile")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, stores)")
    ap.add_argument("--render", action="store_true", help="only rewrite the markdown from docs/reliability.json")
    args = ap.parse_args()
    if args.render:
        res = json.loads((args.out.parent / "reliability.json").read_text())
        args.out.write_text(report(res, res["command"]))
        print(f"wrote {args.out}")
        return
    if args.quick:
        args.label_inputs, args.failing_s, args.down_s, args.light_s = 300, 8.0, 8.0, 4.0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.monotonic()
    res: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                           "load_before": round(os.getloadavg()[0], 2)}
    only = set(args.only.split(","))
    with (contextlib.nullcontext(tempfile.mkdtemp(prefix="potstill-faults-")) if args.keep
          else tempfile.TemporaryDirectory(prefix="potstill-faults-")) as tmp:
        work = Path(tmp)
        print(f"work folder: {work}", flush=True)
        if "label" in only:
            print("1. labelling under faults, kill -9, resume ...", flush=True)
            res["label_kill_resume"] = label_kill_resume(work, args.label_inputs, args.fault_share)
            print(json.dumps(res["label_kill_resume"]), flush=True)
        if "fail" in only:
            print("2. labelling against a dead teacher / a refused key ...", flush=True)
            res["label_fail_fast"] = label_fail_fast(work)
            print(json.dumps(res["label_fail_fast"]), flush=True)
        if only & {"serve", "hostile"}:
            from conftest import build_tiny_bert
            from test_serve_support import build_run

            print("   building a tiny trained run ...", flush=True)
            run = build_run(work / "serve-task", build_tiny_bert(work / "bert"))
            if "serve" in only:
                print(f"3. serving, {args.clients} clients, teacher failing then down ...", flush=True)
                res["serve_teacher_down"] = serve_teacher_down(run, work, args.clients, args.failing_s,
                                                               args.down_s, args.light_s)
                print(json.dumps({k: v for k, v in res["serve_teacher_down"].items()}), flush=True)
            if "hostile" in only:
                print("4. hostile corpus ...", flush=True)
                res["hostile"] = hostile(run, work)
                h = res["hostile"]
                print(json.dumps({k: v for k, v in h.items() if k != "rows"}), flush=True)
    res["took_s"] = time.monotonic() - t0
    saved = args.out.parent / "reliability.json"
    if only != {"label", "fail", "serve", "hostile"} and saved.exists():
        # a partial rerun: replace those parts in the saved figures and render again
        old = json.loads(saved.read_text())
        old.update({k: v for k, v in res.items() if k not in ("when", "took_s", "machine")})
        old.setdefault("reruns", []).append({"parts": sorted(only), "when": res["when"]})
        saved.write_text(json.dumps(old, indent=1, default=str))
        args.out.write_text(report(old, old["command"]))
        print(f"updated {saved} and {args.out}")
    if only == {"label", "fail", "serve", "hostile"}:
        res["command"] = ".venv/bin/python bench/faults.py" + (" --quick" if args.quick else "")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        (args.out.parent / "reliability.json").write_text(json.dumps(res, indent=1, default=str))
        md = report(res, res["command"])
        args.out.write_text(md)
        print(md)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
