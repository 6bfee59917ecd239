"""Two `potstill serve` processes on different ports sharing one PostgreSQL queue under load, one of
them killed with SIGKILL mid-load: are escalations lost or recorded twice?

What runs: a throwaway PostgreSQL server (tests/pgserver.py: Debian's initdb/pg_ctl, 127.0.0.1),
the tests' tiny trained run (built on the spot), the stand-in teacher (tests/fake_openai.py), and
two servers started as `python -m potstill serve RUN --port P` with POTSTILL_DATABASE_URL set.
`serve.high_stakes` names one of the three labels, so about a third of the inputs escalate to the
teacher. Clients (asyncio, httpx) send `--requests` distinct inputs, half to each server; once
`--kill-after` of them were answered, server B is killed with SIGKILL, and B's remaining inputs
go to A (a load balancer's retry). Then the queue is read back and compared with the answers:

- lost: an answer with route `teacher` whose request id has no escalation row;
- duplicated: a request id with more than one escalation row;
- (an input B had accepted when it was killed may have a row without an answer, and, retried on
  A, a second row under A's request id: both counted, allowed).

    .venv/bin/python bench/pg_shared_queue.py --requests 5000
Writes docs/bench_pg_queue.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def start(run: Path, port: int, ov: list[str], env: dict, log: Path) -> subprocess.Popen:
    import httpx

    args = [sys.executable, "-m", "potstill", "serve", str(run), "--port", str(port)]
    for o in ov:
        args += ["--set", o]
    out = open(log, "ab")
    p = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    out.close()
    t0 = time.monotonic()
    while True:
        if p.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > 300:
            p.kill()
            raise SystemExit("server did not start")
        time.sleep(0.3)


async def drive(ports: tuple[int, int], texts: list[str], clients: int, kill_after: int,
                victim: subprocess.Popen) -> tuple[dict[str, dict], int, float, dict]:
    import httpx

    answers: dict[str, dict] = {}
    failures: collections.Counter = collections.Counter()
    retried = 0
    killed_at = [None]
    pending = collections.deque(enumerate(texts))
    lim = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=lim) as c:
        async def post(port: int, t: str) -> dict | None:
            who = "A" if port == ports[0] else "B"
            try:
                r = await c.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={
                    "model": "tiny", "messages": [{"role": "user", "content": t}]})
            except httpx.HTTPError as e:
                failures[f"{who}: {type(e).__name__}"] += 1
                return None
            if r.status_code != 200:
                failures[f"{who}: HTTP {r.status_code}"] += 1
                return None
            return r.json()

        async def worker() -> None:
            nonlocal retried
            while pending:
                i, t = pending.popleft()
                port = ports[i % 2] if killed_at[0] is None else ports[0]
                got = await post(port, t)
                if got is None and port == ports[1]:  # B died under it: the balancer retries on A
                    retried += 1
                    got = await post(ports[0], t)
                if got is not None:
                    answers[t] = got
                if killed_at[0] is None and len(answers) >= kill_after:
                    killed_at[0] = time.monotonic()
                    victim.send_signal(signal.SIGKILL)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
    return answers, retried, time.monotonic() - t0, dict(failures)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--kill-after", type=int, default=None, help="default: 40%% of --requests")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from conftest import build_tiny_bert, make_rows
    from fake_openai import FakeOpenAI
    from pgserver import PgServer, find_bindir
    from test_serve_support import LABELS, build_run, free_port

    from potstill.store import Store

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL binaries (apt-get install postgresql)")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="potstill-pgq-") as tmp:
        tmp = Path(tmp)
        run = build_run(tmp / "task", build_tiny_bert(tmp / "bert"))
        pg = PgServer(bindir).start()
        try:
            url = pg.create_database()
            env = {**os.environ, "POTSTILL_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
            base = [r["text"] for r in make_rows(300, 1)]
            texts = [f"{base[i % len(base)]} #{i}" for i in range(a.requests)]  # all distinct
            with FakeOpenAI(lambda t: LABELS[sum(map(ord, t)) % 3], labels=LABELS,
                            record_bodies=False) as turl:
                ov = [f"teacher.base_url={turl}", "serve.high_stakes=[weather]",
                      "serve.ood_threshold=1e9", "serve.confidence_threshold=0", "serve.threads=1"]
                pa, pb = free_port(), free_port()
                sa = start(run, pa, ov, env, tmp / "a.log")
                sb = start(run, pb, ov, env, tmp / "b.log")
                try:
                    answers, retried, secs, failures = asyncio.run(drive(
                        (pa, pb), texts, a.clients, a.kill_after or int(0.4 * a.requests), sb))
                finally:
                    for p in (sa, sb):
                        if p.poll() is None:
                            p.terminate()
                            p.wait(30)
            with Store(None, url=url) as s:
                rows = s.queue_items()
        finally:
            pg.stop()
    esc = [r for r in rows if r["kind"] == "escalation"]
    per_input = collections.Counter(r["input"] for r in esc)
    teacher_answers = {t for t, g in answers.items() if g["route"] == "teacher"}
    per_request = collections.Counter(r["request_id"] for r in esc)
    dup = {r: n for r, n in per_request.items() if n > 1}  # one request recorded twice: a bug
    # an input B recorded, then died before answering, retried on A: two requests, two rows
    both = {t: n for t, n in per_input.items() if n > 1}
    answered_ids = {g["id"] for g in answers.values()}
    lost = sorted(t for t in teacher_answers if answers[t]["id"] not in per_request)
    unanswered_rows = sorted(set(per_input) - set(answers))
    result = {
        "command": "python bench/pg_shared_queue.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load_before:.1f} "
                   f"before, {os.getloadavg()[0]:.1f} after (shared with other work)",
        "requests": a.requests, "answered": len(answers), "seconds": round(secs, 1),
        "escalated_answers": len(teacher_answers),
        "escalated_share": round(len(teacher_answers) / max(len(answers), 1), 3),
        "escalation_rows": len(esc), "lost": len(lost), "duplicated": len(dup),
        "rows_without_answer": len(unanswered_rows), "retried_on_a_after_kill": retried,
        "inputs_recorded_by_both_after_retry": len(both),
        "rows_whose_request_was_answered": sum(1 for r in esc if r["request_id"] in answered_ids),
        "client_failures": failures,
        "other_rows": dict(collections.Counter(r["kind"] for r in rows if r["kind"] != "escalation")),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_pg_queue.json").write_text(json.dumps(result, indent=2))
    table = "\n".join(["| figure | value |", "|---|---:|"] +
                      [f"| {k} | {v} |" for k, v in result.items() if k not in ("command", "when", "machine")])
    (a.out / "bench_pg_queue.md").write_text(
        "# Two servers, one PostgreSQL queue, one of them killed mid-load\n\n"
        f"Command: `{result['command']}` ({result['when']}; {result['machine']}).\n\n"
        "Server B was killed with SIGKILL after 40% of the answers; its in-flight and later inputs "
        "were sent to server A. lost = answered by the teacher but its request id is not in the "
        "queue; duplicated = a request id with two escalation rows.\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
