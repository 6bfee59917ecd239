"""Labelling throughput of OpenAITeacher against the fake OpenAI-compatible endpoint.

What is measured, each through `answer_cached` with a fresh Store (so the cost of writing every
answer to SQLite is included), against `tests/fake_openai.py` (an asyncio HTTP server in a
background thread of this same process):

- ceiling: 0 ms service time, concurrency 64 — the most requests/s this client + this endpoint
  reach on this machine (both share the CPU and the GIL);
- 50 ms service time at concurrency 16 and 64 — requests/s, against the ideal
  (concurrency / 50 ms) and against the ceiling; the goal is >= 90% of min(ideal, ceiling);
- replay: the largest run again on its warm store — every answer from the cache, zero requests.

Each run is sized to last about `--seconds` (bounded by `--max-requests`), repeated `--repeat`
times; the median run is reported. Results go to docs/bench_label_throughput.{json,md}.

    .venv/bin/python bench/label_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402

from potstill.spec import TaskSpec  # noqa: E402
from potstill.store import Store  # noqa: E402
from potstill.teachers.base import answer_cached  # noqa: E402
from potstill.teachers.openai_compat import OpenAITeacher  # noqa: E402

LABELS = ["activate_my_card", "balance", "card_arrival", "card_declined", "exchange_rate",
          "lost_or_stolen_card", "pending_transfer", "refund_not_showing_up"]
GOAL = 0.90


def make_spec(base_url: str, concurrency: int) -> TaskSpec:
    return TaskSpec(
        name="bench",
        labels=LABELS,
        data={"train": "unused.jsonl"},
        teacher={
            "kind": "openai", "model": "fake-teacher", "base_url": base_url,
            "concurrency": concurrency, "logprobs": True, "top_logprobs": 5,
            "price_in": 0.15, "price_out": 0.6, "timeout_s": 30,
        },
    )


def label_of(text: str) -> str:
    # deterministic and cheap; spreads the answers over every label
    return LABELS[sum(map(ord, text)) % len(LABELS)]


def make_texts(n: int, run: str) -> list[str]:
    return [f"{run} request {i}: my card payment was declined at the shop" for i in range(n)]


def one_run(delay_ms: float, concurrency: int, n: int, run: str, replay: bool = False) -> dict[str, Any]:
    """Label `n` fresh texts; with `replay`, then answer them all again from the warm store."""
    fake = FakeOpenAI(label_of, labels=LABELS, delay_ms=delay_ms, record_bodies=False)
    texts = make_texts(n, run)
    with fake as base_url, tempfile.TemporaryDirectory() as tmp:
        spec = make_spec(base_url, concurrency)
        store = Store(Path(tmp) / "calls.sqlite")
        teacher = OpenAITeacher(spec, LABELS)
        t0 = time.perf_counter()
        answers = answer_cached(teacher, texts, store, spec.spec_hash())
        seconds = time.perf_counter() - t0
        errors = sum(a.error is not None for a in answers)
        wrong = sum(a.label != label_of(t) for a, t in zip(answers, texts))
        if errors or wrong or fake.count != n:
            raise SystemExit(f"bench run {run} is not clean: {errors} errors, {wrong} wrong "
                             f"labels, {fake.count} requests for {n} texts")
        out: dict[str, Any] = {
            "delay_ms": delay_ms, "concurrency": concurrency, "requests": n,
            "seconds": round(seconds, 3), "rps": n / seconds,
            "max_in_flight": fake.max_in_flight,
        }
        if replay:
            before = fake.count
            again = OpenAITeacher(spec, LABELS)
            t0 = time.perf_counter()
            cached = answer_cached(again, texts, store, spec.spec_hash())
            rs = time.perf_counter() - t0
            if fake.count != before or [a.label for a in cached] != [a.label for a in answers]:
                raise SystemExit("replay made requests or changed answers")
            out["replay"] = {"records": n, "seconds": round(rs, 3), "records_per_s": n / rs,
                             "new_requests": fake.count - before}
        store.close()
    return out


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["rps"])
    best = dict(ordered[len(ordered) // 2])
    best["rps_all"] = [round(r["rps"], 1) for r in runs]
    return best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="target length of each run")
    ap.add_argument("--max-requests", type=int, default=12000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per setting; the median is kept")
    ap.add_argument("--delay-ms", type=float, default=50.0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args(argv)

    def size(rate: float) -> int:
        return max(200, min(args.max_requests, int(rate * args.seconds)))

    load_before = list(os.getloadavg())  # other work on the machine shares the CPU with both ends
    one_run(0, 64, 300, "warmup")  # imports, first connections, SQLite pages
    # the ceiling's size comes from a short probe, so that each of its runs lasts ~--seconds too
    probe = one_run(0, 64, 1000, "probe")
    ceiling = median_run([one_run(0, 64, size(probe["rps"]), f"ceil{k}")
                          for k in range(args.repeat)])
    rows = []
    for conc in (16, 64):
        ideal = conc / (args.delay_ms / 1000)
        target = min(ideal, ceiling["rps"])
        runs = [one_run(args.delay_ms, conc, size(target), f"d{conc}-{k}", replay=(conc == 64))
                for k in range(args.repeat)]
        r = median_run(runs)
        r.update(ideal_rps=ideal, frac_ideal=r["rps"] / ideal, frac_ceiling=r["rps"] / ceiling["rps"],
                 frac_goal_base=r["rps"] / target, meets_goal=r["rps"] >= GOAL * target)
        rows.append(r)
    replay = rows[-1].pop("replay")
    for r in rows:
        r.pop("replay", None)

    result = {
        "command": "python bench/label_throughput.py" + ("" if argv is None and len(sys.argv) == 1
                                                        else " " + " ".join(argv or sys.argv[1:])),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "loadavg_before": load_before,
                    "loadavg_after": list(os.getloadavg())},
        "endpoint": "tests/fake_openai.py, in-process (background thread), HTTP/1.1 keep-alive",
        "teacher": {"logprobs": True, "top_logprobs": 5, "labels": len(LABELS)},
        "repeat": args.repeat,
        "goal": f">= {GOAL:.0%} of min(ideal, ceiling)",
        "ceiling": {k: ceiling[k] for k in ("concurrency", "requests", "seconds", "rps", "rps_all")},
        "runs": rows,
        "replay": replay,
    }
    write_reports(result, args.out)
    print_table(result)
    return result


def md_table(result: dict[str, Any]) -> str:
    c = result["ceiling"]
    lines = [
        "| setting | requests | seconds | req/s (median) | ideal req/s | % of ideal | % of ceiling | goal met |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        f"| 0 ms, concurrency {c['concurrency']} (ceiling) | {c['requests']} | {c['seconds']:.2f} "
        f"| {c['rps']:.0f} | – | – | 100% | – |",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['delay_ms']:g} ms, concurrency {r['concurrency']} | {r['requests']} | "
            f"{r['seconds']:.2f} | {r['rps']:.0f} | {r['ideal_rps']:.0f} | {r['frac_ideal']:.0%} | "
            f"{r['frac_ceiling']:.0%} | {'yes' if r['meets_goal'] else 'no'} "
            f"({r['frac_goal_base']:.0%} of min) |"
        )
    rp = result["replay"]
    lines.append(f"| replay from cache | {rp['records']} | {rp['seconds']:.2f} | "
                 f"{rp['records_per_s']:.0f} records/s | – | – | – | {rp['new_requests']} requests |")
    return "\n".join(lines)


def write_reports(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_label_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    runs_all = "; ".join(
        [f"ceiling: {result['ceiling']['rps_all']}"]
        + [f"{r['delay_ms']:g} ms/c{r['concurrency']}: {r['rps_all']}" for r in result["runs"]]
    )
    m = result["machine"]
    busy = max(m["loadavg_before"][0], m["loadavg_after"][0]) > 0.5 * (m["cpus"] or 1)
    note = (
        "**The machine was busy with other work during this run** (load average above half "
        "the CPU count): client and endpoint got less CPU than an idle machine would give, so "
        "these figures are lower bounds; rerun on an idle machine to compare.\n"
        if busy else ""
    )
    md = f"""# Labelling throughput: OpenAITeacher against the fake endpoint

Produced by `{result['command']}` on {result['when']}
(Python {result['machine']['python']}, {result['machine']['cpus']} CPUs, {result['machine']['platform']};
load average {result['machine']['loadavg_before'][0]:.2f} before, {result['machine']['loadavg_after'][0]:.2f} after).

Each run labels fresh texts through `answer_cached` with a fresh SQLite store (so every answer is
also written to the cache), against `tests/fake_openai.py` running in a background thread of the
same process, with logprobs (top 5) over {result['teacher']['labels']} labels. Ideal = concurrency /
service time; the ceiling is the same endpoint with 0 ms service time at concurrency 64 (client
and endpoint then share this process's CPU and GIL). Goal: {result['goal']}.
Median of {result['repeat']} runs per setting (all runs, req/s: {runs_all}).

{note}
{md_table(result)}
"""
    (out / "bench_label_throughput.md").write_text(md)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c, rp = result["ceiling"], result["replay"]
    table = Table(title="OpenAITeacher labelling throughput (fake endpoint, in-process)")
    for col in ("setting", "requests", "s", "req/s", "ideal", "% ideal", "% ceiling", "goal"):
        table.add_column(col, justify="left" if col in ("setting", "goal") else "right")
    table.add_row(f"0 ms, c={c['concurrency']} (ceiling)", str(c["requests"]),
                  f"{c['seconds']:.2f}", f"{c['rps']:.0f}", "–", "–", "100%", "–")
    for r in result["runs"]:
        table.add_row(
            f"{r['delay_ms']:g} ms, c={r['concurrency']}", str(r["requests"]), f"{r['seconds']:.2f}",
            f"{r['rps']:.0f}", f"{r['ideal_rps']:.0f}", f"{r['frac_ideal']:.0%}",
            f"{r['frac_ceiling']:.0%}",
            f"{'met' if r['meets_goal'] else 'missed'} ({r['frac_goal_base']:.0%} of min)",
        )
    table.add_row("replay from cache", str(rp["records"]), f"{rp['seconds']:.2f}",
                  f"{rp['records_per_s']:.0f} rec/s", "–", "–", "–", f"{rp['new_requests']} requests")
    Console(width=max(110, Console().width)).print(table)


if __name__ == "__main__":
    main()
