"""The review queue and the request log, in the run's SQLite store (WAL).

Queue items are the cases a human or the next training round should look at, one row each:

| kind           | when                                                            | reason examples                 |
|----------------|-----------------------------------------------------------------|---------------------------------|
| `escalation`   | the router sent the input to the teacher and the teacher answered | `low_confidence`, `ood`, `high_stakes`, `invalid_output` (joined by `+`) |
| `degraded`     | the teacher was needed but failed or timed out; the student's answer went out, marked degraded | `teacher_timeout`, `teacher_error`, `no_teacher`, `breaker_open` (the teacher circuit breaker is open: not asked) |
| `disagreement` | a shadow check: the teacher, asked in the background, disagreed with the student's served answer | `shadow` |
| `feedback`     | `POST /v1/feedback`                                              | `wrong`, `corrected`            |

Each row keeps the input, the student's and the teacher's answers, the served answer, the route,
the confidence and OOD scores, the time, and the student version that answered. An item is
committed before the response that caused it goes out, so a killed server loses none; items
added while a write runs are committed together in the next one (group commit). A teacher
answer that arrives after its request gave up is written into the degraded item later
(`teacher_label`, `updated_at`). `used_in_round` is null until a training round takes the item.

The request log (`requests` table) keeps every answered request by id, written in small batches
off the request path (a kill loses at most the last flush interval of it, never queue items).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import MissingOutput, PotstillError
from ..store import Store
from .batching import MicroBatcher

KINDS = ("escalation", "degraded", "disagreement", "feedback")


class ReviewQueue:
    """Async face of the store's queue and request log for the server."""

    def __init__(self, store: Store, log_requests: bool = True, flush_ms: float = 50.0):
        self.store = store
        self.log_enabled = log_requests
        self.flush_s = flush_ms / 1000.0
        self._pending: list[dict[str, Any]] = []
        self._task: asyncio.Task | None = None
        self._depth: int | None = None
        self._depth_lock = threading.Lock()  # `add_now` counts from worker threads
        # group commit: items added while the previous write runs go in the next transaction
        # together, each request still answered only once its item is committed
        self._writer: MicroBatcher[dict[str, Any], int] = MicroBatcher(
            self.store.queue_add_many, max_batch_size=64, window_ms=0.0, name="queue-writer")

    async def start(self) -> None:
        self._depth = sum((await asyncio.to_thread(self.store.queue_counts)).values())
        if self.log_enabled and self._task is None:
            self._task = asyncio.create_task(self._flush_loop(), name="request-log")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()
        await self._writer.stop()

    @property
    def depth(self) -> int:
        """Items no training round has used yet (kept in memory; read from the store at start)."""
        if self._depth is None:
            self._depth = sum(self.store.queue_counts().values())
        return self._depth

    async def add(self, **item: Any) -> int:
        _check_kind(item)
        await self._writer.start()  # idempotent
        qid = await self._writer.submit_nowait(item)
        self._count(1)
        return qid

    def add_now(self, items: list[dict[str, Any]]) -> list[int]:
        """Commit `items` in one transaction from the calling (worker) thread; their ids. For a
        thread that already runs off the event loop (the student's batcher): an item written
        there costs its request no second trip through the loop, as `add` would."""
        for item in items:
            _check_kind(item)
        ids = self.store.queue_add_many(items)
        self._count(len(ids))
        return ids

    def _count(self, n: int) -> None:
        with self._depth_lock:
            self._depth = self.depth + n

    async def update(self, queue_id: int, **fields: Any) -> None:
        await asyncio.to_thread(self.store.queue_update, queue_id, **fields)

    # -- request log -------------------------------------------------------------------------------
    def log(self, row: dict[str, Any]) -> None:
        if self.log_enabled:
            self._pending.append(row)

    async def flush(self) -> None:
        rows, self._pending = self._pending, []
        if rows:
            try:
                await asyncio.to_thread(self.store.log_requests, rows)
            except asyncio.CancelledError:
                # `stop` cancels the flush loop; a write still queued for a worker thread is then
                # dropped with it. The rows go back for the final flush (a write that did start
                # finishes too; the request log is keyed by request id, so twice is the same).
                self._pending[:0] = rows
                raise

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception as e:  # noqa: BLE001 - a log write must never stop the server
                from ..progress import log

                log(f"request log: write failed ({type(e).__name__}: {e})")

    async def find_request(self, request_id: str) -> dict[str, Any] | None:
        """The logged request, else the newest queue item naming it (so feedback still works on
        escalated requests when the request log is off)."""
        await self.flush()
        row = await asyncio.to_thread(self.store.get_request, request_id)
        if row is not None:
            return row
        return await asyncio.to_thread(self.store.queue_request, request_id)


def _check_kind(item: dict[str, Any]) -> None:
    if item.get("kind") not in KINDS:
        raise PotstillError(f"queue kind must be one of {KINDS}, got {item.get('kind')!r}")


# -- `potstill queue list RUN_DIR` ---------------------------------------------------------------
def queue_list_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (holds potstill.db).")],
    kind: Annotated[Optional[str], typer.Option(
        help="Only this kind: escalation, degraded, disagreement or feedback.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many, newest last.")] = 50,
    all_rounds: Annotated[bool, typer.Option(
        "--all", help="Also items a training round already used.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
):
    """What was escalated, degraded, disagreed on or corrected, and why (newest last)."""
    from ..db import database_url
    from ..paths import RunPaths

    run = RunPaths(Path(run_dir))
    if not run.db.exists() and database_url() is None:  # with PostgreSQL there is no file
        raise MissingOutput(f"{run.db}: no store in this run directory")
    if kind is not None and kind not in KINDS:
        raise typer.BadParameter(f"--kind must be one of {', '.join(KINDS)}")
    with Store(run.db) as store:
        counts = store.queue_counts(unused_only=not all_rounds)
        total = sum(counts.values()) if kind is None else counts.get(kind, 0)
        items = store.queue_items(kind=kind, unused_only=not all_rounds, last=limit)
    if as_json:
        for it in items:
            typer.echo(json.dumps(it, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    c = Console()
    if not c.is_terminal:
        c = Console(width=200)
    by_kind = ", ".join(f"{k} {counts.get(k, 0)}" for k in KINDS)
    if not items:
        c.print(f"queue of {run.root}: empty" + (f" ({kind})" if kind else ""))
        return
    t = Table(title=f"queue of {run.root}: {total} item(s) ({by_kind}); showing the last {len(items)}")
    for col in ("id", "time", "kind", "reason", "input", "student", "teacher", "served", "route",
                "conf", "ood", "feedback"):
        t.add_column(col, overflow="fold")
    for it in items:
        t.add_row(str(it["id"]), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(it["created_at"])),
                  it["kind"], it["reason"], _short(it["input"]), it["student_label"] or "—",
                  it["teacher_label"] or "—", it["served_label"] or "—", it["route"] or "—",
                  _num(it["confidence"], ROUND_FLOOR), _num(it["ood_score"], ROUND_CEILING),
                  it["feedback"] or "")
    c.print(t)


def _short(s: str | None, n: int = 60) -> str:
    s = " ".join((s or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _num(x: float | None, rounding: str = ROUND_HALF_EVEN, digits: int = 3) -> str:
    """`x` to `digits` significant digits, rounded the given way. A confidence is rounded down
    and an OOD score up, so neither is shown past a threshold it did not pass: 0.8996 under a
    0.90 confidence threshold was escalated, and shows as 0.899, not 0.9."""
    if x is None:
        return "—"
    if not math.isfinite(x):
        return str(x)
    d = Decimal(repr(float(x)))  # the shortest decimal that is this float: no binary noise
    if d == 0:
        return "0"
    q = d.quantize(Decimal(1).scaleb(d.adjusted() - digits + 1), rounding=rounding)
    return f"{q:g}"
