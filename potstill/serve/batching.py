"""Micro-batching: concurrent requests grouped into small batches before a model runs.

`MicroBatcher(fn)` takes items from any number of concurrent coroutines (`await submit(items)`),
groups them and runs `fn(batch) -> results` in its own worker thread(s); each waiting coroutine
gets its result through its future. A batch starts when it is full (`max_batch_size`) or when its
first item has waited `window_ms` since it arrived; items that queued up while the previous batch
ran have already waited and are taken at once, so under load batches fill without extra waiting.
`max_concurrent` worker threads take batches (1 for a CPU model: torch already uses the cores).

Why the grouping happens in the worker thread, not in the event loop: when the event loop is
saturated with HTTP work, a batch formed there starts only when the loop gets round to it, and
the model waits idle in between (measured in bench/serve_load.py: fewer requests/s with batching
than without at 64 clients). Here the worker blocks on a thread-safe queue, so the next batch
starts the moment the previous one ends; the event loop only puts items in and reads results.

Adaptive window (`adaptive=True`, the default): when the previous batch held a single item and
nothing else is queued, there is no sign of company coming, and the item goes at once instead of
waiting the window; as soon as requests overlap (a batch of two or more, or a queue), the window
applies again. A lone client then pays no batching latency.

`stream_fn(batch, emit)` instead of `fn`: the function calls `emit(i, result)` as each item
finishes, so one slow item (a teacher call) does not hold back the others of its batch.

With `enabled=False` every `submit` runs its own items as one call on the worker pool, without
grouping: the "no batching" baseline of bench/serve_load.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from typing import Any, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]] | None = None,
        *,
        stream_fn: Callable[[list[T], Callable[[int, R], None]], None] | None = None,
        max_batch_size: int = 32,
        window_ms: float = 3.0,
        max_concurrent: int = 1,
        enabled: bool = True,
        adaptive: bool = True,
        on_batch: Callable[[int], None] | None = None,
        name: str = "batcher",
    ):
        if (fn is None) == (stream_fn is None):
            raise ValueError("give exactly one of fn and stream_fn")
        self.fn, self.stream_fn = fn, stream_fn
        self.max_batch_size = max(1, int(max_batch_size))
        self.window_s = max(0.0, window_ms) / 1000.0
        self.max_concurrent = max(1, int(max_concurrent))
        self.enabled = enabled
        self.adaptive = adaptive
        self.on_batch = on_batch
        self.name = name
        self.batches = 0
        self.items = 0
        self.largest = 0
        self._last_size = 0
        self._q: queue.SimpleQueue = queue.SimpleQueue()  # (item, future, arrival) or _STOP
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._busy = 0

    # -- lifecycle (inside the event loop) ---------------------------------------------------------
    async def start(self) -> None:
        """Start the workers on the running loop (again when an earlier loop ended without
        `stop`, as each `asyncio.run` of a caller does); a no-op when already started on it."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:  # the workers of the loop that went away end
            for _ in self._threads:  # on their own queue, so no new worker takes their stop
                self._q.put(_STOP)
            self._q = queue.SimpleQueue()
            self._threads = []
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
        self._loop = loop
        if self.enabled:
            for k in range(self.max_concurrent):
                t = threading.Thread(target=self._worker, name=f"{self.name}-{k}", daemon=True)
                t.start()
                self._threads.append(t)
        else:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self.max_concurrent, thread_name_prefix=self.name)

    async def stop(self, wait_s: float = 5.0) -> None:
        """Stop the workers once the batches they run finish (up to `wait_s`); items still
        queued fail with RuntimeError."""
        if self._loop is None:
            return
        for _ in self._threads:
            self._q.put(_STOP)
        t0 = time.monotonic()
        for t in self._threads:
            await asyncio.to_thread(t.join, max(0.0, wait_s - (time.monotonic() - t0)))
        stragglers = sum(t.is_alive() for t in self._threads)  # stuck in a slow call
        self._threads = []
        while True:
            try:
                x = self._q.get_nowait()
            except queue.Empty:
                break
            if x is not _STOP:
                _fail(x[1], RuntimeError(f"{self.name} stopped"))
        for _ in range(stragglers):  # so that each ends when its call returns
            self._q.put(_STOP)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._loop = None

    # -- submitting --------------------------------------------------------------------------------
    def submit_nowait(self, item: T) -> asyncio.Future[R]:
        """A future for one item (batching must be enabled and started)."""
        if self._loop is None or not self.enabled:
            raise RuntimeError(f"{self.name} is not started (or batching is off)")
        fut: asyncio.Future[R] = self._loop.create_future()
        self._q.put((item, fut, time.monotonic()))
        return fut

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Results for `items`, in order. Raises what the function raised for their batch."""
        items = list(items)
        if not items:
            return []
        if not self.enabled:
            return await self._direct(items)
        futs = [self.submit_nowait(x) for x in items]
        return list(await asyncio.gather(*futs))

    async def _direct(self, items: list[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            raise RuntimeError(f"{self.name} is not started")
        out: list[Any] = []
        for s in range(0, len(items), self.max_batch_size):
            chunk = items[s : s + self.max_batch_size]
            futs = [loop.create_future() for _ in chunk]
            await loop.run_in_executor(self._executor, self._call, chunk, futs, loop)
            out += await asyncio.gather(*futs)
        return out

    # -- the worker threads ------------------------------------------------------------------------
    def _worker(self) -> None:
        assert self._loop is not None
        loop = self._loop
        q = self._q
        stop = False
        while not stop:
            first = q.get()
            if first is _STOP:
                return
            batch = [first]
            lone = self.adaptive and self._last_size <= 1 and q.empty() and self._busy == 0
            deadline = first[2] + (0.0 if lone else self.window_s)
            while len(batch) < self.max_batch_size:
                left = deadline - time.monotonic()
                try:
                    x = q.get(timeout=left) if left > 0 else q.get_nowait()
                except queue.Empty:
                    break
                if x is _STOP:
                    stop = True
                    break
                batch.append(x)
            self._last_size = len(batch)
            self._call([x for x, _, _ in batch], [f for _, f, _ in batch], loop)

    def _call(self, items: list[T], futs: list[asyncio.Future], loop: asyncio.AbstractEventLoop) -> None:
        """Run one batch in this thread and hand the results to the event loop."""
        self._busy += 1
        self.batches += 1
        self.items += len(items)
        self.largest = max(self.largest, len(items))
        try:
            if self.on_batch is not None:
                self.on_batch(len(items))
            if self.fn is not None:
                try:
                    res = list(self.fn(items))
                    if len(res) != len(items):
                        raise RuntimeError(f"{self.name}: {len(res)} results for {len(items)} items")
                except Exception as e:  # noqa: BLE001 - handed to every waiter of the batch
                    _threadsafe(loop, _fail_all, futs, e)
                else:
                    _threadsafe(loop, _resolve_all, futs, res)
            else:
                def emit(i: int, r: Any) -> None:
                    _threadsafe(loop, _resolve, futs[i], r)

                err: BaseException = RuntimeError("no result for this item")
                try:
                    self.stream_fn(items, emit)
                except Exception as e:  # noqa: BLE001
                    err = e
                # queued after every emit of this thread, so results already emitted win
                _threadsafe(loop, _fail_all, futs, err)
        finally:
            self._busy -= 1


def _threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _resolve(f: asyncio.Future, r: Any) -> None:
    if not f.done():
        f.set_result(r)


def _resolve_all(futs: list[asyncio.Future], res: list[Any]) -> None:
    for f, r in zip(futs, res):
        if not f.done():
            f.set_result(r)


def _fail(f: asyncio.Future, e: BaseException) -> None:
    if not f.done():
        f.set_exception(e)


def _fail_all(futs: list[asyncio.Future], e: BaseException) -> None:
    for f in futs:
        if not f.done():
            f.set_exception(e)


__all__ = ["MicroBatcher"]
