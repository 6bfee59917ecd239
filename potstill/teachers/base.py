"""The one small interface every teacher fits, and the content-keyed cache that wraps any of them.

A teacher turns texts into `Answer`s. It says who it is (`identity`, part of every cache key)
and what a call for one text is (`request(text)`, a JSON-able dict with everything that changes
the answer: model, params, rendered prompt). The cache keys on identity + request + spec hash, so
a rerun pays nothing and a run killed halfway resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

from ..answers import Answer
from ..errors import PotstillError
from ..store import Store


class BudgetExceeded(PotstillError, RuntimeError):
    """The spending cap was reached; what was labelled before it is kept in the cache."""


class TeacherUnavailable(PotstillError):
    """The teacher cannot answer at all: its endpoint refused the API key (401/403), could not
    be reached for a run of attempts, or the key's environment variable is not set. Asking
    again for every remaining input would only take longer, so the run stops; answers that
    already finished are kept in the cache."""


@runtime_checkable
class Teacher(Protocol):
    identity: str
    """Stable name of the teacher (backend, model, endpoint) — part of every cache key."""

    labels: list[str]

    def request(self, text: str) -> dict[str, Any]:
        """Everything that determines the answer for `text` (model, params, rendered prompt)."""
        ...

    def answer(self, texts: Sequence[str]) -> Iterator[tuple[int, Answer]]:
        """Answer `texts`, yielding (index into texts, Answer) as each completes, in any order.

        Transient failures are retried inside; an input that still fails yields an Answer with
        `label=None` and `error` set. Raises BudgetExceeded when a spending cap stops the work.
        """
        ...


def cache_key(teacher: Teacher, text: str, spec_hash: str) -> str:
    blob = json.dumps(
        {"teacher": teacher.identity, "request": teacher.request(text), "spec": spec_hash},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def answer_cached(
    teacher: Teacher,
    texts: Sequence[str],
    store: Store,
    spec_hash: str,
    on_progress: Callable[[int], None] | None = None,
    chunk: int = 1024,
    stats: dict[str, int] | None = None,
) -> list[Answer]:
    """Answers for all `texts`, from the cache where present, else from the teacher.

    Each new answer is written to the store as soon as it arrives (errors are not cached, so a
    rerun retries them). `on_progress(n)` is called with the count of newly finished texts.
    `stats`, when given, is filled with `cached` (texts answered from the cache), `asked`
    (distinct texts sent to the teacher), `answered` and `failed` (of those asked). When the
    spending cap stops the work, BudgetExceeded says how many texts of the whole call were not
    labelled (not of one internal chunk).
    """
    keys = [cache_key(teacher, t, spec_hash) for t in texts]
    hits = store.get_calls(set(keys))
    out: list[Answer | None] = [None] * len(texts)
    todo: list[int] = []
    for i, k in enumerate(keys):
        if k in hits:
            out[i] = Answer.from_json(hits[k])
        else:
            todo.append(i)
    if on_progress and len(texts) - len(todo):
        on_progress(len(texts) - len(todo))
    # identical texts are asked once
    first: dict[str, int] = {}
    unique = []
    for i in todo:
        if keys[i] not in first:
            first[keys[i]] = i
            unique.append(i)
    st = stats if stats is not None else {}
    st.update(cached=len(texts) - len(todo), asked=len(unique), answered=0, failed=0)
    chunk = getattr(teacher, "answer_chunk", None) or chunk  # a batch teacher takes them all at once
    try:
        for start in range(0, len(unique), chunk):
            batch = unique[start : start + chunk]
            for j, ans in teacher.answer([texts[i] for i in batch]):
                i = batch[j]
                out[i] = ans
                if ans.error is None:
                    st["answered"] += 1
                    store.put_call(
                        keys[i], teacher.identity, ans.to_json(), ans.input_tokens,
                        ans.output_tokens, ans.cost_usd, ans.latency_ms,
                    )
                else:
                    st["failed"] += 1
                if on_progress:
                    on_progress(1)
    except BudgetExceeded as e:
        left = sum(out[i] is None for i in unique)
        raise BudgetExceeded(
            f"{e}; {left} of {len(unique)} texts to ask were not labelled ({st['answered']} answered "
            f"now, {st['cached']} of {len(texts)} from the cache; finished answers are kept)") from None
    for i in todo:
        if out[i] is None:  # a duplicate of an asked text
            out[i] = out[first[keys[i]]]
            if on_progress:
                on_progress(1)
    return out  # type: ignore[return-value]
