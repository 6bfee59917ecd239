"""Serving under load: requests/s and p50/p99 latency of a potstill server on 127.0.0.1 at 1, 8,
64 and 256 concurrent clients, with and without micro-batching, on each runtime (PyTorch, ONNX
fp32, ONNX int8), each against the same model's offline inputs/s measured in the same run; and
the router's overhead against a bare forward pass of the student.

What runs where:

- offline: the served backend alone in this process (`predict` in batches of 64, the server's
  runtime and thread count), the reference for "share of offline";
- the server: `create_app` + uvicorn in a child process on 127.0.0.1 (a free port), one per
  runtime and batching mode, with its queue and request log in a temporary SQLite file (the run's own store
  is not touched); its teacher is `tests/fake_openai.py` in this process, answering after
  `--teacher-delay-ms` (an API's latency), unless `--real-teacher` keeps the spec's teacher;
- the clients: `--clients` asyncio workers in this process (bench/loadgen.py: one keep-alive
  connection each, requests encoded up front, so the client's CPU per request stays small), each sending
  `POST /v1/chat/completions` one after another with texts from the run's test split, until
  `--requests` requests were answered or `--seconds` passed (both bound every level); the first
  `--warmup` requests of each level are not counted;
- the overhead ladder, measured in this process before any server starts, one input at a time:
  bare forward pass (tokenize + model), the student backend's `predict` (+ temperature, scores,
  OOD distance), `Router.route` (+ micro-batcher hop, decision, request log), and HTTP end to end
  (+ uvicorn, JSON, the client), which is the p50 at 1 client without batching.

Clients and server share this machine's CPUs, so figures are lower bounds of what a server alone
gets. Results go to docs/bench_serve.{json,md}.

    .venv/bin/python bench/serve_load.py                   # a tiny model built on the spot
    .venv/bin/python bench/serve_load.py runs/clinc150     # a real run (calibrated or not)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

LAUNCH = """
import json, sys
from pathlib import Path
import uvicorn
from potstill.serve.app import ServeConfig, create_app, freeze_gc
cfg = json.loads(sys.argv[1])
app = create_app(ServeConfig(Path(cfg["run"]), overrides=cfg["overrides"], db_path=Path(cfg["db"]),
                             teacher=None if cfg["no_teacher"] else "auto"))
if cfg.get("workers", 1) > 1:  # as `potstill serve --workers N` does
    from potstill.serve.workers import run_workers
    run_workers(ServeConfig(Path(cfg["run"]), overrides=cfg["overrides"], db_path=Path(cfg["db"]),
                            teacher=None if cfg["no_teacher"] else "auto"),
                app.state.potstill, "127.0.0.1", cfg["port"], cfg["workers"], log_level="warning")
    sys.exit(0)
freeze_gc()  # as `potstill serve` does
uvicorn.run(app, host="127.0.0.1", port=cfg["port"], log_level="warning", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def tiny_run(work: Path) -> Path:
    """A tiny trained + calibrated run (the tests' fixture), for developing this script."""
    from conftest import build_tiny_bert
    from test_serve_support import build_run

    bert = build_tiny_bert(work / "bert")
    return build_run(work / "task", bert)


def test_texts(run: Path, n: int = 2000) -> list[str]:
    from potstill.data.inputs import read_jsonl

    rows = read_jsonl(run / "inputs" / "test.jsonl") or read_jsonl(run / "inputs" / "validation.jsonl")
    return [r["text"] for r in rows[:n]]


# -- in-process: the overhead ladder ---------------------------------------------------------------
def overhead(run: Path, texts: list[str], n: int, threads: int | None) -> dict[str, Any]:
    import torch

    from potstill.paths import RunPaths
    from potstill.serve.calibrate import load_run_spec
    from potstill.serve.classifier import build_student
    from potstill.serve.queue import ReviewQueue
    from potstill.serve.router import Policy, Router
    from potstill.store import Store

    if threads:
        torch.set_num_threads(threads)
    spec = load_run_spec(run)
    student, _cal, policy, _ = build_student(spec, RunPaths(run))
    sample = [texts[i % len(texts)] for i in range(n)]
    model, tok, L = student.model, student.tokenizer, spec.student.max_length

    def timed(fn) -> list[float]:
        for t in sample[:10]:
            fn(t)
        out = []
        for t in sample:
            t0 = time.perf_counter()
            fn(t)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    with torch.inference_mode():
        bare = timed(lambda t: model(**tok(t, return_tensors="pt", truncation=True, max_length=L)).logits.argmax(-1).item())
    predict = timed(lambda t: student.predict([t]))

    async def routed() -> list[float]:
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "q.db")
            queue = ReviewQueue(store)
            # no gates: every input takes the student path, which is what is being timed
            router = Router(student, Policy(), queue, None, batching=True,
                            window_ms=spec.serve.batch_window_ms,
                            adaptive_window=spec.serve.adaptive_window,
                            max_batch_size=spec.serve.max_batch_size)
            await queue.start()
            await router.start()
            out = []
            try:
                for i, t in enumerate(sample[:10] + sample):
                    t0 = time.perf_counter()
                    await router.route([t], [f"r{i}"])
                    if i >= 10:
                        out.append((time.perf_counter() - t0) * 1000)
            finally:
                await router.stop()
                await queue.stop()
                store.close()
            return out

    route = asyncio.run(routed())
    return {"samples": n, "bare_forward_ms_p50": pct(bare, 50), "predict_ms_p50": pct(predict, 50),
            "router_ms_p50": pct(route, 50), "router_window_ms": spec.serve.batch_window_ms,
            "bare_forward_ms_p99": pct(bare, 99), "router_ms_p99": pct(route, 99),
            "torch_threads": torch.get_num_threads()}


def offline(run: Path, texts: list[str], runtime: str, threads: int, batch_size: int = 64) -> dict[str, Any]:
    """Inputs/s of the served backend alone (tokenize, model, scores, OOD distance), in batches of
    `batch_size` over the test texts, with the server's runtime and thread count: the figure the
    server's requests/s is held against."""
    from potstill.paths import RunPaths
    from potstill.serve.calibrate import load_run_spec
    from potstill.serve.classifier import build_student

    spec = load_run_spec(run, [f"serve.runtime={runtime}", f"serve.threads={threads}"])
    student, _cal, _policy, _ = build_student(spec, RunPaths(run))  # exports ONNX when missing
    student.predict(texts[:batch_size])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(texts), batch_size):
        student.predict(texts[s : s + batch_size])
    el = time.perf_counter() - t0
    return {"runtime": runtime, "threads": threads, "batch_size": batch_size, "inputs": len(texts),
            "inputs_per_s": len(texts) / el}


# -- the load ------------------------------------------------------------------------------------
async def load_level(base: str, model: str, texts: list[str], clients: int, requests: int,
                     seconds: float, warmup: int) -> dict[str, Any]:
    import httpx
    from loadgen import LeanConnection, encode_post

    host, port = base.removeprefix("http://").rsplit(":", 1)
    raw = [encode_post("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": t}]})
           for t in texts]
    lat: list[float] = []
    lat_student: list[float] = []
    routes: dict[str, int] = {}
    errors = 0
    samples: list[str] = []
    sent = 0
    stop_at = [float("inf")]
    conns = [LeanConnection(host, int(port)) for _ in range(clients)]

    async def one(conn: LeanConnection, i: int) -> tuple[float, str | None]:
        t0 = time.perf_counter()
        status, body = await conn.request(raw[i % len(raw)])
        ms = (time.perf_counter() - t0) * 1000
        if status != 200 and len(samples) < 5:
            samples.append(f"HTTP {status}: {body[:200]!r}")
        return ms, (json.loads(body).get("route") if status == 200 else None)

    for i in range(warmup):  # connections, allocator, first batches
        await one(conns[i % clients], i)
    t_start = time.perf_counter()
    stop_at[0] = t_start + seconds

    async def worker(w: int) -> None:
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < stop_at[0]:
            i = sent
            sent += 1
            try:
                ms, route = await one(conns[w], warmup + i)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                errors += 1  # counted, the run goes on
                if len(samples) < 5:
                    samples.append(f"{type(e).__name__}: {e}")
                continue
            if route is None:
                errors += 1
                continue
            lat.append(ms)
            routes[route] = routes.get(route, 0) + 1
            if route == "student":
                lat_student.append(ms)

    await asyncio.gather(*[worker(w) for w in range(clients)])
    elapsed = time.perf_counter() - t_start
    for c in conns:
        c.close()
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        metrics = (await c.get("/metrics")).text
    n = len(lat)
    return {"clients": clients, "requests": n, "errors": errors, "seconds": round(elapsed, 3),
            "rps": n / elapsed if elapsed else 0.0,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "student_route_p50_ms": pct(lat_student, 50), "student_route_p99_ms": pct(lat_student, 99),
            "routes": routes, "mean_batch": _mean_batch(metrics), "error_samples": samples}


def _mean_batch(metrics: str) -> float | None:
    vals = {}
    for line in metrics.splitlines():
        for k in ("potstill_student_batch_size_sum", "potstill_student_batch_size_count"):
            if line.startswith(k + " "):
                vals[k] = float(line.split()[1])
    if vals.get("potstill_student_batch_size_count"):
        return vals["potstill_student_batch_size_sum"] / vals["potstill_student_batch_size_count"]
    return None


def start_server(run: Path, overrides: list[str], db: Path, no_teacher: bool, log: Path,
                 workers: int = 1):
    import httpx

    port = free_port()
    cfg = {"run": str(run), "overrides": overrides, "db": str(db), "port": port, "no_teacher": no_teacher,
           "workers": workers}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = open(log, "ab")
    p = subprocess.Popen([sys.executable, "-c", LAUNCH, json.dumps(cfg)], env=env, stdout=out,
                         stderr=subprocess.STDOUT, cwd=ROOT)
    out.close()  # the child holds its own copy
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        if p.poll() is not None:
            raise SystemExit(f"server exited ({p.returncode}); see {log}:\n{log.read_text()[-3000:]}")
        try:
            h = httpx.get(f"{base}/health", timeout=2)
            if h.status_code == 200:
                return p, base, h.json()
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > 300:
            p.kill()
            raise SystemExit("server did not start in 300 s")
        time.sleep(0.25)


def stop_server(p) -> None:
    p.terminate()
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


# -- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path, help="run directory (default: a tiny model built now)")
    ap.add_argument("--clients", default="1,8,64,256", help="concurrency levels, comma-separated")
    ap.add_argument("--requests", type=int, default=1000, help="most requests counted per level")
    ap.add_argument("--seconds", type=float, default=15.0, help="most seconds per level")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--overhead-samples", type=int, default=200)
    ap.add_argument("--teacher-delay-ms", type=float, default=100.0)
    ap.add_argument("--real-teacher", action="store_true", help="keep the spec's teacher")
    ap.add_argument("--threads", type=int, default=None,
                    help="model threads in each server process (default: serve.threads' own default, "
                    "the cores left after one per process)")
    ap.add_argument("--runtimes", default="torch,onnx,onnx_int8",
                    help="serve.runtime values to measure, comma-separated (classifier students)")
    ap.add_argument("--offline-inputs", type=int, default=1024,
                    help="test inputs for each runtime's offline inputs/s")
    ap.add_argument("--set", action="append", default=[], help="extra spec overrides for the server")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--workers", type=int, default=1, help="server processes (potstill serve --workers)")
    ap.add_argument("--batching", default="on,off", help="batching modes to measure: on, off or both")
    ap.add_argument("--name", default="bench_serve", help="output file stem under --out")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    if args.requests > 100_000 or args.seconds > 600:
        raise SystemExit("keep it bounded: --requests <= 100000 and --seconds <= 600")

    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="potstill-bench-") as tmp:
        tmp = Path(tmp)
        run = args.run.resolve() if args.run else tiny_run(tmp / "tiny")
        texts = test_texts(run)
        print(f"overhead ladder: {args.overhead_samples} single inputs in-process ...", flush=True)
        from potstill.serve.workers import worker_threads

        threads = args.threads or worker_threads(args.workers)
        over = overhead(run, texts, args.overhead_samples, threads)
        runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
        offline_rows = {}
        for rt in runtimes:
            print(f"offline, {rt}: {args.offline_inputs} inputs in batches ...", flush=True)
            offline_rows[rt] = offline(run, texts[: args.offline_inputs], rt, threads)

        from fake_openai import FakeOpenAI

        from potstill.serve.calibrate import load_run_spec

        spec = load_run_spec(run)
        labels = json.loads((run / "inputs" / "labels.json").read_text())
        fake = FakeOpenAI(lambda t: labels[sum(map(ord, t)) % len(labels)], labels=labels,
                          delay_ms=args.teacher_delay_ms, record_bodies=False)
        results = []
        with fake as url:
            teacher = [] if args.real_teacher else [
                "teacher.kind=openai", "teacher.over_http=false", "teacher.model=bench-teacher", f"teacher.base_url={url}",
                "teacher.max_retries=0", "teacher.logprobs=false", "teacher.concurrency=64"]
            if args.threads:
                teacher.append(f"serve.threads={args.threads}")
            modes = [m.strip() == "on" for m in args.batching.split(",") if m.strip()]
            for rt in runtimes:
                for batching in modes:
                    ov = teacher + [f"serve.runtime={rt}", f"serve.batching={'true' if batching else 'false'}"] \
                        + args.set
                    p, base, health = start_server(run, ov, tmp / f"q-{rt}-{batching}.db", False,
                                                   tmp / "server.log", args.workers)
                    try:
                        for c in levels:
                            print(f"{rt}, batching {'on ' if batching else 'off'}, {c:3d} clients ...", flush=True)
                            r = asyncio.run(load_level(base, health["model"], texts, c, args.requests,
                                                       args.seconds, args.warmup))
                            r.update(batching=batching, runtime=rt, threads=health.get("threads"),
                                     offline_share=r["rps"] / offline_rows[rt]["inputs_per_s"])
                            results.append(r)
                    finally:
                        stop_server(p)
        base_row = next((r for r in results if r["clients"] == 1 and not r["batching"]
                         and r["runtime"] == runtimes[0]), None)
        if base_row:
            over["http_ms_p50"] = base_row["p50_ms"] if base_row["routes"].get("student") is None \
                else base_row["student_route_p50_ms"]
        cmd = "python bench/serve_load.py" + ("" if argv is None and len(sys.argv) == 1
                                              else " " + " ".join(map(str, argv or sys.argv[1:])))
        result = {
            "command": cmd,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "run": str(args.run) if args.run else "tiny model built by the script (2-layer BERT, 64 wide)",
            "task": spec.name, "labels": len(labels),
            "server": {"workers": args.workers, "overrides": args.set,
                       "batch_window_ms": spec.serve.batch_window_ms,
                       "max_batch_size": spec.serve.max_batch_size,
                       "routing": health.get("routing"),
                       "teacher": "spec's own" if args.real_teacher else
                       f"tests/fake_openai.py, {args.teacher_delay_ms:g} ms per call"},
            "bounds": {"requests": args.requests, "seconds": args.seconds, "warmup": args.warmup},
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "platform": platform.platform(), "loadavg_before": load_before,
                        "loadavg_after": list(os.getloadavg())},
            "threads": threads,
            "overhead": over,
            "offline": list(offline_rows.values()),
            "load": results,
            "goal": goal_rows(results),
        }
    write_reports(result, args.out, args.name)
    print(md_tables(result))
    return result


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


GOAL_CLIENTS, GOAL_SHARE, GOAL_P99_MS = 64, 0.70, 250.0  # issue 12's serving goal


def goal_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per runtime, the batching-on row at 64 clients against the goal: at least 70% of the
    same model's offline inputs/s, with p99 under 250 ms. The p99 judged is the student route's:
    an escalated request also waits for the teacher (the stand-in's fixed delay, an API's latency
    in production), which is not the server's; the p99 over every request is reported beside it."""
    out = []
    for r in results:
        if r["clients"] == GOAL_CLIENTS and r["batching"]:
            p99 = r["student_route_p99_ms"]
            out.append({"runtime": r["runtime"], "rps": r["rps"], "offline_share": r["offline_share"],
                        "p99_ms": r["p99_ms"], "student_route_p99_ms": p99,
                        "share_met": r["offline_share"] >= GOAL_SHARE,
                        "p99_met": p99 is not None and p99 < GOAL_P99_MS})
    return out


def md_tables(result: dict[str, Any]) -> str:
    lines = ["| runtime | offline inputs/s (batches of {b}, {t} thread(s)) |".format(
                 b=result["offline"][0]["batch_size"] if result["offline"] else "—", t=result.get("threads")),
             "|---|---:|"]
    lines += [f"| {o['runtime']} | {o['inputs_per_s']:.1f} |" for o in result["offline"]]
    lines += ["", "| runtime | batching | clients | requests | req/s | share of offline | p50 ms | p99 ms "
              "| student-route p50 / p99 ms | mean batch | routes | errors |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in result["load"]:
        routes = ", ".join(f"{k} {v}" for k, v in sorted(r["routes"].items()))
        mb = "—" if r["mean_batch"] is None else f"{r['mean_batch']:.2f}"
        lines.append(f"| {r['runtime']} | {'on' if r['batching'] else 'off'} | {r['clients']} | {r['requests']} | "
                     f"{r['rps']:.1f} | {r['offline_share']:.0%} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | "
                     f"{_ms(r['student_route_p50_ms'])} / {_ms(r['student_route_p99_ms'])} | "
                     f"{mb} | "
                     f"{routes} | {r['errors']} |")
    if result.get("goal"):
        lines += ["", f"Goal at {GOAL_CLIENTS} clients, batching on: at least {GOAL_SHARE:.0%} of the "
                  f"same model's offline inputs/s, p99 under {GOAL_P99_MS:g} ms on the student route "
                  "(escalated requests also wait for the teacher; their p99 is in the all-requests column).", "",
                  "| runtime | req/s | share of offline | student-route p99 ms | p99 ms, all requests | goal |",
                  "|---|---:|---:|---:|---:|---|"]
        for g in result["goal"]:
            met = "met" if g["share_met"] and g["p99_met"] else "not met (" + ", ".join(
                x for x, ok in (("share", g["share_met"]), ("p99", g["p99_met"])) if not ok) + ")"
            lines.append(f"| {g['runtime']} | {g['rps']:.1f} | {g['offline_share']:.0%} | "
                         f"{_ms(g['student_route_p99_ms'])} | {_ms(g['p99_ms'])} | {met} |")
    o = result["overhead"]
    lines += ["", f"The first runtime ({result['load'][0]['runtime'] if result['load'] else '—'}), "
              "one input at a time:", "",
              "| one input, p50 | ms | added by this step |", "|---|---:|---:|"]
    prev = None
    for key, name in (("bare_forward_ms_p50", "bare forward pass (tokenize + model)"),
                      ("predict_ms_p50", "student backend: + temperature, scores, OOD distance"),
                      ("router_ms_p50", f"router: + batcher hop (window {o['router_window_ms']:g} ms), decision, log"),
                      ("http_ms_p50", "HTTP end to end, 1 client, no batching: + uvicorn, JSON, client")):
        v = o.get(key)
        add = "—" if v is None or prev is None else f"{v - prev:+.2f}"
        lines.append(f"| {name} | {_ms(v)} | {add} |")
        prev = v if v is not None else prev
    return "\n".join(lines)


def write_reports(result: dict[str, Any], out: Path, name: str = "bench_serve") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    m = result["machine"]
    md = f"""# Serving under load

Produced by `{result['command']}` on {result['when']}
(Python {m['python']}, {m['cpus']} CPUs, {m['platform']}; load average
{m['loadavg_before'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after).

Run: {result['run']} (task `{result['task']}`, {result['labels']} labels). Server: a child process
on 127.0.0.1 ({result['server'].get('workers', 1)} worker process(es), overrides
{result['server'].get('overrides') or 'none'}), batch window {result['server']['batch_window_ms']:g} ms, at most
{result['server']['max_batch_size']} inputs a batch; teacher: {result['server']['teacher']}.
Routing: {json.dumps(result['server']['routing'])}. Each level counts at most
{result['bounds']['requests']} requests or {result['bounds']['seconds']:g} s, after
{result['bounds']['warmup']} warm-up requests. Clients (bench/loadgen.py: asyncio, one keep-alive
connection each) run on the same machine, so they take CPU from the server: read these as lower
bounds. "share of offline" is requests/s over the same runtime's offline inputs/s measured in this
run (the served backend alone, batches of {result['offline'][0]['batch_size'] if result['offline'] else '—'}, the server's thread count). Escalated requests wait for the
teacher, so the student-route columns show what the student path alone costs.

{md_tables(result)}
"""
    (out / f"{name}.md").write_text(md)


if __name__ == "__main__":
    main()
