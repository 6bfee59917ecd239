"""How long the store takes to commit a group of review-queue items while other threads run Python.

In the server, queue items are committed by a writer thread while the event loop and the
student's thread keep the interpreter busy. The sqlite3 module releases the GIL around every
statement it runs, and taking it back can wait out the interpreter's switch interval (5 ms) when
another thread is running Python. So the number of statements per commit, not SQLite, sets the
time. Side by side in one run, on one SQLite file:

- `one statement per row`: what `Store._insert_many` did before (an INSERT per item, then COMMIT);
- `Store.queue_add_many`: what it does now (one multi-row INSERT per chunk, then COMMIT);

each with 0 and 1 busy Python threads beside it, for groups of 1, 16 and 64 items. Results go to
docs/bench_store_writes.{json,md}.

    .venv/bin/python bench/store_writes.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from potstill.store import QUEUE_COLUMNS, Store, _json_text, _marks  # noqa: E402


def items(n: int) -> list[dict[str, Any]]:
    return [{"kind": "degraded", "reason": "breaker_open", "request_id": f"r{i}",
             "input": f"what is the weather like in city {i} tomorrow", "student_label": "weather",
             "served_label": "weather", "route": "student", "confidence": 0.42,
             "detail": {"escalated_for": ["high_stakes"], "error": "teacher unavailable"}}
            for i in range(n)]


def per_row(store: Store, group: list[dict[str, Any]]) -> list[int]:
    """The old way: one INSERT statement per item, in one transaction."""
    cols = [k for k in QUEUE_COLUMNS if k != "id"]
    sql = f"INSERT INTO queue ({','.join(cols)}) VALUES ({_marks(len(cols))})"
    rows = []
    for it in group:
        row = {k: it.get(k) for k in cols}
        row["created_at"] = time.time()
        row["detail"] = _json_text(row["detail"])
        rows.append(tuple(row.values()))

    def go(c: Any) -> list[int]:
        ids = [int(c.execute(sql, r).lastrowid) for r in rows]
        c.commit()
        return ids

    return store._run(go)


def timed(fn: Callable[[], Any], seconds: float, most: int) -> list[float]:
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and len(out) < most:
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per cell")
    ap.add_argument("--groups", default="1,16,64")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    groups = [int(x) for x in args.groups.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "potstill.db", url="")
        for busy in (0, 1):
            stop = threading.Event()

            def burn() -> None:
                x = 0
                while not stop.is_set():
                    for i in range(1000):
                        x += i

            threads = [threading.Thread(target=burn, daemon=True) for _ in range(busy)]
            for t in threads:
                t.start()
            for n in groups:
                group = items(n)
                cell: dict[str, Any] = {"busy_threads": busy, "items": n}
                for name, fn in (("per_row", lambda: per_row(store, group)),
                                 ("multi_row", lambda: store.queue_add_many(group))):
                    fn()  # warm
                    ms = timed(fn, args.seconds, 2000)
                    cell[f"{name}_median_ms"] = statistics.median(ms)
                    cell[f"{name}_n"] = len(ms)
                cell["ratio"] = cell["per_row_median_ms"] / cell["multi_row_median_ms"]
                rows.append(cell)
                print(f"busy {busy}  items {n:3d}  one statement per row {cell['per_row_median_ms']:8.2f} ms"
                      f"  queue_add_many {cell['multi_row_median_ms']:7.2f} ms  ratio {cell['ratio']:6.1f}x")
            stop.set()
            for t in threads:
                t.join()
        store.close()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    meta = {"when": when, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}", "switch_interval_s": sys.getswitchinterval(),
            "load_average": os.getloadavg()[0], "command": "python bench/store_writes.py"}
    (args.out / "bench_store_writes.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Committing review-queue items while other threads run Python",
        "",
        f"From `.venv/bin/python bench/store_writes.py` ({when}, {meta['machine']}, load average "
        f"{meta['load_average']:.2f}). Median wall time to commit one group of queue items to a "
        "SQLite file (WAL, synchronous=NORMAL), with 0 or 1 busy Python threads in the same "
        "process (the server has two: its event loop and the student's thread).",
        "",
        "| busy threads | items | one statement per row, ms | `queue_add_many`, ms | ratio |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['busy_threads']} | {r['items']} | {r['per_row_median_ms']:.2f} | "
                     f"{r['multi_row_median_ms']:.2f} | {r['ratio']:.1f}x |")
    lines += ["", "Each statement releases the GIL while SQLite runs it; with another thread running "
              f"Python, taking it back can wait the switch interval ({meta['switch_interval_s'] * 1000:g} ms). "
              "`queue_add_many` (store.py, `_insert_many`) sends a group as one multi-row INSERT per "
              "chunk of up to 500 rows, so a commit costs a few hand-backs however many items it holds.", ""]
    (args.out / "bench_store_writes.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'bench_store_writes.md'}")


if __name__ == "__main__":
    main()
