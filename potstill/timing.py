"""Batch-1 latency of several models, timed in turn on the same inputs.

Each model answers one input at a time, as a user's request would reach it. Timing one model
after another, minutes apart, measures the machine's drift as much as the models: on a shared
2-core machine two models of the same shape came out 18% apart that way. `time_interleaved`
gives input 1 to every model, then input 2, and so on (the order rotating from input to input),
so every model meets the same moments of the machine and the ratio of two p50s is comparable.
Each model is warmed up first (allocator, kernels) and is timed on its own number of inputs: a
generating model takes seconds an answer and is timed on a few, the first of the same inputs.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class Timer:
    """One model answering one input, the whole path a request takes (tokenise, forward, answer)."""

    call: Callable[[str], Any]
    samples: int
    """Inputs timed (the first `samples` of the shared seeded sample)."""
    warmup: int = 10
    """Untimed calls first."""
    units: Callable[[Any], int] | None = None
    """For a rate beside the latency: the units one answer produced (a generation's tokens)."""
    rate_key: str = ""
    """The rate's key in the result: units per second of timed calls."""


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


def calls(timers: dict[str, Timer]) -> int:
    """How many calls `time_interleaved` makes, warm-ups included (for a progress bar)."""
    n = max((t.samples for t in timers.values()), default=0)
    return sum(min(t.warmup, n) + t.samples for t in timers.values())


def time_interleaved(timers: dict[str, Timer], texts: Sequence[str], seed: int = 0,
                     advance: Callable[[], Any] | None = None) -> dict[str, dict[str, float]]:
    """{name: {latency_ms_p50, latency_ms_p95[, rate_key]}}: each model timed on the first
    `samples` of one seeded sample of `texts`, the models taking turns input by input.
    `advance()` after every call."""
    if not timers or not texts:
        return {}
    tick = advance or (lambda: None)
    rng = random.Random(seed)
    sample = [texts[rng.randrange(len(texts))] for _ in range(max(t.samples for t in timers.values()))]
    for t in timers.values():
        for x in sample[: t.warmup]:
            t.call(x)
            tick()
    names = list(timers)
    ms: dict[str, list[float]] = {n: [] for n in names}
    units: dict[str, int] = {n: 0 for n in names}
    for i, x in enumerate(sample):
        k = i % len(names)
        for n in names[k:] + names[:k]:
            t = timers[n]
            if i >= t.samples:
                continue
            t0 = time.perf_counter()
            out = t.call(x)
            ms[n].append((time.perf_counter() - t0) * 1000)
            tick()
            if t.units is not None:
                units[n] += t.units(out)
    res: dict[str, dict[str, float]] = {}
    for n, t in timers.items():
        res[n] = {"latency_ms_p50": round(_pct(ms[n], 50), 3), "latency_ms_p95": round(_pct(ms[n], 95), 3)}
        if t.units is not None and t.rate_key:
            res[n][t.rate_key] = round(units[n] / max(sum(ms[n]) / 1000, 1e-9), 1)
    return res


def time_alone(timer: Timer, texts: Sequence[str], seed: int = 0) -> dict[str, float]:
    """One model's latency figures, timed by itself (`time_interleaved` with one model)."""
    return time_interleaved({"model": timer}, texts, seed)["model"]
