"""A teacher behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, ...).

`OpenAITeacher.answer(texts)` sends one chat completion per text with at most
`teacher.concurrency` requests in flight, and yields `(index, Answer)` as calls complete. The
calls run on the teacher's own asyncio event loop in a background thread, started on the first
call and kept (with one pooled `AsyncOpenAI` client, its connection pool sized to the concurrency,
so connections stay open between calls); the generator is plain sync code, and closing it early,
or an exception in the consumer, cancels the calls in flight and waits for them to end. The loop
runs at most `2 * concurrency` answers ahead of the consumer, so a consumer that stops reading
without closing the generator stops the spending too.

Retries. The SDK's own retries are switched off (`max_retries=0`) because this module also
retries malformed bodies, checks the spending cap before every attempt and counts attempts.
429, 408, 409, 5xx, timeouts (`teacher.timeout_s` for the whole request) and connection errors
are retried up to `teacher.max_retries` times, waiting `Retry-After` (or `retry-after-ms`) when
the server sends it, plus up to 10% jitter, else exponential backoff with jitter
(`backoff_base_s * 2**attempt` capped at `backoff_max_s`; a uniformly random wait between half
and all of it). A 200 whose body is not a usable completion (bad JSON, no choices, no text) is
retried the same way. Other 4xx are not retried. An input that still fails yields
`Answer(label=None, error=...)`; it never raises for one bad input.

Labels are parsed with `answers.parse_label`. `Answer.raw` is the content text, `Answer.probs` a
distribution aligned with `labels`:

How labels of several tokens are handled (logprobs -> probs). The tokens of the answer are
concatenated and the chosen label (the parsed one) is located in that text by character offsets
(first whole-word, case-insensitive occurrence, `_`/`-`/space interchangeable), so an answer
like `{"label": "card_arrival"}` works and a label may start in the middle of a token (` "card`).
The chosen label gets p = the product of the probabilities of every generated token that
overlaps its characters — exact along the generated path. For the other labels only the
alternatives at the label's first token position (`top_logprobs` there) are known. Each
alternative token other than the generated one is compared, after removing the characters that
precede the label in the generated token (` "` in ` "card`) when it starts with them, then
stripping whitespace and quotes, case-insensitively, as a prefix of every label's text: its
probability goes to the labels it is a prefix of, split evenly between them, except the chosen
label, whose share is already exact. The mass left unlisted at that position (1 minus the
generated token's and the alternatives' probabilities; `top_logprobs` lists at most 20) is split
evenly over the labels that no listed token named, so a task with more labels than listed
alternatives keeps a tail for distillation rather than zeros. Alternatives that name no label are
dropped; the vector is then renormalised to sum to 1. When the label cannot be located in the tokens, probs is one-hot.

Without logprobs (not asked for, or the endpoint returned none): with `teacher.samples` n > 1
the request asks for `n` choices (and makes further calls if the endpoint returns fewer, e.g.
because it ignores `n`); the vote shares are the probs and the counts go to `Answer.votes`.
With logprobs and n > 1 the per-sample distributions are averaged and the votes still recorded;
the label is the one with most votes. With n == 1 and no logprobs, probs is one-hot of the
parsed label. An answer naming no label has label=None, probs=None, no `error` (it is an answer, and
cached) and says why in `extra["parse_error"]`.

Usage and cost come from `response.usage` (summed over every call made for the input):
cost = input_tokens * price_in / 1e6 + output_tokens * price_out / 1e6. `latency_ms` is the
duration of the successful call (the last one, for several samples calls).

Spending cap: `teacher.max_spend_usd`. `spent_usd` starts at the value given to the constructor
and grows with every call's cost. No new call (first attempt, retry or extra sample) starts once
it reaches the cap; calls in flight finish and are yielded, then `BudgetExceeded` is raised.

The API key is read from the environment variable `teacher.api_key_env` on every `answer()`
call; the pooled client is made again when it changes. It is kept only inside that client (the
teacher compares a hash) and never enters `identity`, `request()` or any answer.
Unset, it is an error naming the variable (`TeacherUnavailable`), except for an endpoint on this
machine or `api_key_env: null`, which get a placeholder key.

Fail fast: a 401/403, or a run of connection failures (`unreachable_after_attempts` in a row, or
3+ in a row over `unreachable_after_s`), raises `TeacherUnavailable` from `answer()` after the
answers already finished: every remaining input would fail the same way. An input that fails
after every retry keeps each attempt's error, short (`HTTP 500: ... (x2); then timed out ...`).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import math
import os
import queue
import random
import re
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import openai

from ..answers import TokenLP, parse_label
from ..errors import PotstillError
from ..spec import TaskSpec
from .base import Answer, BudgetExceeded, TeacherUnavailable

DEFAULT_BASE_URL = "https://api.openai.com/v1"
PLACEHOLDER_KEY = "not-needed"
RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx
_COMPLETIONS_PATH = "/chat/completions"



class OpenAITeacher:
    """Teacher protocol over an OpenAI-compatible chat-completions endpoint (see module doc)."""

    min_labels: int = 2
    """A label answer needs a choice; the extract and generate subclasses set 0."""
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    max_retry_after_s: float = 120.0
    """A Retry-After longer than this is cut to it (the input fails later rather than never)."""
    unreachable_after_attempts: int = 16
    unreachable_after_s: float = 3.0
    """The endpoint counts as unreachable (TeacherUnavailable, the run stops) after this many
    connection failures in a row across all workers, or after at least 3 in a row spanning
    `unreachable_after_s` seconds with no response of any kind in between: with the default
    backoff that is within about 8 s at any concurrency, not after every input's retries."""
    deadline_s: float | None = None
    """When set (the server sets it from serve.teacher_timeout_s), no retry starts whose wait
    would push it past this many seconds from the call's start: the call gives up with the real
    error while the request still waits for it (an attempt in flight is not cut short, so a slow
    answer can still land in the queue late)."""

    def __init__(
        self,
        spec: TaskSpec,
        labels: list[str],
        spent_usd: float = 0.0,
        *,
        backoff_base_s: float | None = None,
        backoff_max_s: float | None = None,
        api_key: str | None = None,
    ):
        t = spec.teacher
        if not t.model:
            raise PotstillError("teacher.model is required for an OpenAI-compatible teacher")
        if len(labels) < self.min_labels:
            raise PotstillError("at least two labels are needed")
        self.spec = spec
        self.labels = list(labels)
        self.spent_usd = float(spent_usd)
        self.base_url = (t.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.identity = f"openai:{t.model}@{self.base_url}"
        self._api_key = api_key  # given by the caller instead of teacher.api_key_env; never logged
        self._streak = _Streak()
        self._bg: _Background | None = None  # the event loop and pooled client of every call
        self._loop_lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None
        if backoff_base_s is not None:
            self.backoff_base_s = backoff_base_s
        if backoff_max_s is not None:
            self.backoff_max_s = backoff_max_s

    def __repr__(self) -> str:
        return f"OpenAITeacher({self.identity!r}, labels={len(self.labels)})"

    # -- what a call is -------------------------------------------------------------------------
    def request(self, text: str) -> dict[str, Any]:
        """The chat-completions parameters for `text` (also the cache key's request part)."""
        t = self.spec.teacher
        return {
            "model": t.model,
            "messages": [{"role": "user", "content": self.spec.render_prompt(text, self.labels)}],
            "temperature": t.temperature,
            "max_tokens": t.max_tokens,
            "n": t.samples,
            "logprobs": t.logprobs,
            "top_logprobs": t.top_logprobs if t.logprobs else None,
        }

    def _call_kwargs(self, text: str, n: int) -> dict[str, Any]:
        kw = self.request(text)
        # optional parameters are left out rather than sent as defaults: some compatible
        # servers reject `n` or `top_logprobs` they do not support even at their default values
        if n > 1:
            kw["n"] = n
        else:
            kw.pop("n")
        if not kw["logprobs"]:
            kw.pop("logprobs")
            kw.pop("top_logprobs")
        return kw

    @property
    def over_budget(self) -> bool:
        cap = self.spec.teacher.max_spend_usd
        return cap is not None and self.spent_usd >= cap

    # -- the sync face --------------------------------------------------------------------------
    def answer(self, texts: Sequence[str]) -> Iterator[tuple[int, Answer]]:
        """Yield (index, Answer) for `texts` as calls complete; see the Teacher protocol.

        Raises BudgetExceeded, after yielding every answer already in flight, when the spending
        cap stopped the work before all texts were answered.
        """
        texts = list(texts)
        if not texts:
            return
        self.api_key()  # a missing key fails here, before any thread starts
        self._streak = _Streak()
        results: queue.Queue[Any] = queue.Queue()
        loop = self._background_loop()
        # the loop may run this many answers ahead of the consumer; consumed answers give
        # their credits back
        credits = asyncio.Semaphore(2 * self.spec.teacher.concurrency)
        # answers finished in the same loop iteration cross to the consumer as one batch: one
        # thread wake-up (and GIL hand-over) per batch rather than per answer
        batch: list[tuple[int, Answer]] = []

        def flush() -> None:
            if batch:
                results.put(batch[:])
                batch.clear()

        def emit(item: tuple[int, Answer]) -> None:
            if not batch:
                loop.call_soon(flush)
            batch.append(item)

        def give_back(n: int) -> None:
            for _ in range(n):
                credits.release()

        holder: list[asyncio.Task] = []
        started, done = threading.Event(), threading.Event()

        def on_done(task: asyncio.Task) -> None:  # in the loop's thread, however the task ended
            flush()
            if task.cancelled():
                results.put(_Failed(asyncio.CancelledError()))
            elif task.exception() is not None:
                results.put(_Failed(task.exception()))
            results.put(_DONE)
            done.set()

        def start() -> None:
            task = loop.create_task(self._answer_all(texts, emit, credits))
            task.add_done_callback(on_done)
            holder.append(task)
            started.set()

        loop.call_soon_threadsafe(start)
        started.wait()
        try:
            while True:
                item = results.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failed):
                    if isinstance(item.exc, asyncio.CancelledError):
                        break
                    raise item.exc
                yield from item
                _call_threadsafe(loop, functools.partial(give_back, len(item)))
        finally:
            # early close, consumer exception, or normal end: stop the calls and wait for them
            _call_threadsafe(loop, holder[0].cancel)
            done.wait()

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        """This teacher's event loop (_Background), running from the first call until the
        teacher is closed or collected."""
        with self._loop_lock:
            if self._bg is None or self._bg.pid != os.getpid():  # a forked child has no such thread
                self._bg = _Background()
                self._finalizer = weakref.finalize(self, self._bg.stop)
            return self._bg.loop

    def close(self) -> None:
        """Close the pooled client and end the background thread (also done when the teacher
        is garbage-collected, and at exit)."""
        if self._finalizer is not None:
            self._finalizer()

    def _pooled_client(self) -> openai.AsyncOpenAI:
        """The client every call of this teacher shares (its pool keeps connections open); made
        again when the API key in the environment changes. Runs on the background loop only."""
        assert self._bg is not None
        key = self.api_key()
        tag = hashlib.sha256(key.encode()).hexdigest()  # the key itself stays in the client only
        if self._bg.client is None or self._bg.tag != tag:
            old = self._bg.client
            self._bg.tag, self._bg.client = tag, self._client()
            if old is not None:  # calls still using it keep their own reference
                asyncio.get_running_loop().call_later(60, lambda: asyncio.ensure_future(old.close()))
        return self._bg.client

    # -- the async core -------------------------------------------------------------------------
    async def _answer_all(self, texts: list[str], emit: Any, credits: asyncio.Semaphore) -> None:
        pending = iter(range(len(texts)))
        stopped: list[int] = []  # inputs the cap left unanswered (at most one per worker)

        async def work(client: openai.AsyncOpenAI) -> None:
            for i in pending:
                await credits.acquire()
                ans = await self._answer_one(client, texts[i])
                if ans is None:
                    stopped.append(i)
                    return
                emit((i, ans))

        client = self._pooled_client()
        n_workers = min(self.spec.teacher.concurrency, len(texts))
        workers = [asyncio.ensure_future(work(client)) for _ in range(n_workers)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        if stopped:
            cap = self.spec.teacher.max_spend_usd
            # how many texts were left is said by the caller, who knows the whole run
            # (answer_cached): this call may be one chunk of it
            raise BudgetExceeded(
                f"spending cap reached: spent ${self.spent_usd:.4f} of max_spend_usd "
                f"${cap:.4f} for {self.identity}"
            )

    def api_key(self) -> str:
        """The key to send: the one given, else `teacher.api_key_env`'s value. Unset: an error
        naming the variable, except for an endpoint on this machine (a local vLLM, llama.cpp,
        Ollama or potstill server) or `teacher.api_key_env: null` (an endpoint without auth),
        which get a placeholder. A placeholder is never sent to a remote endpoint silently."""
        if self._api_key:
            return self._api_key
        env = self.spec.teacher.api_key_env
        if env and os.environ.get(env):
            return os.environ[env]
        if not env or _is_loopback_url(self.base_url):
            return PLACEHOLDER_KEY
        raise TeacherUnavailable(
            f"teacher.api_key_env: the environment variable {env} is not set (the API key for "
            f"{self.base_url}); export it, or set teacher.api_key_env: null for an endpoint "
            "without auth")

    def _client(self) -> openai.AsyncOpenAI:
        t = self.spec.teacher
        key = self.api_key()
        http = _http_client(t.concurrency, t.timeout_s)
        return openai.AsyncOpenAI(
            api_key=key,
            base_url=self.base_url,
            max_retries=0,  # retried here: see module doc
            timeout=t.timeout_s,
            http_client=http,
        )

    async def _answer_one(self, client: openai.AsyncOpenAI, text: str) -> Answer | None:
        """The Answer for one text, or None when the spending cap stopped it before it finished."""
        want = self.spec.teacher.samples
        contents: list[str] = []
        logprobs: list[list[TokenLP] | None] = []
        tin = tout = attempts = 0
        cost = 0.0
        latency_ms: float | None = None
        # bounded: every successful call returns at least one choice
        while len(contents) < want:
            res = await self._call(client, text, want - len(contents))
            if res is None:
                return None
            attempts += res.attempts
            tin, tout, cost = tin + res.input_tokens, tout + res.output_tokens, cost + res.cost_usd
            if res.error is not None:
                return Answer(label=None, error=res.error, input_tokens=tin, output_tokens=tout,
                              cost_usd=cost, extra={"attempts": attempts})
            contents += res.contents
            logprobs += res.logprobs
            latency_ms = res.latency_ms
        ans = self._to_answer(contents[:want], logprobs[:want])
        ans.input_tokens, ans.output_tokens, ans.cost_usd = tin, tout, cost
        ans.latency_ms = latency_ms
        ans.extra["attempts"] = attempts
        return ans

    async def _call(self, client: openai.AsyncOpenAI, text: str, n: int) -> _Call | None:
        """One chat completion with retries; None when the cap forbids starting an attempt."""
        t = self.spec.teacher
        kwargs = self._call_kwargs(text, n)
        error = "no attempt made"
        errors: list[str] = []
        end = None if self.deadline_s is None else time.monotonic() + self.deadline_s
        for attempt in range(t.max_retries + 1):
            if self.over_budget:
                return None
            wait: float | None = None
            t0 = time.perf_counter()
            limit = t.timeout_s  # an attempt in flight may finish late: its answer is still kept
            try:
                async with _deadline(limit):
                    # the SDK's documented raw POST: same auth, base URL, timeouts and error
                    # types as `chat.completions.create`, without its per-call params
                    # transform and response-model construction, which cost more CPU than
                    # the rest of a call (see bench/label_throughput.py)
                    data = await client.post(_COMPLETIONS_PATH, cast_to=object, body=kwargs)
                self._streak.reset()
                call = self._read(data, attempt + 1)
                call.latency_ms = (time.perf_counter() - t0) * 1000
                return call
            except openai.APIStatusError as e:
                status = e.status_code
                error = f"HTTP {status}: {_short(e.message)}"
                self._streak.reset()
                if status in (401, 403):  # every other input would be refused the same way
                    raise TeacherUnavailable(
                        f"{self.identity} refused the API key ({error}); check the key in "
                        f"{t.api_key_env or 'the teacher settings'}") from None
                if status not in RETRY_STATUSES and status < 500:
                    return _Call.failed(_attempt_errors(errors + [error]), attempt + 1, status)
                wait = _retry_after(e.response.headers)
            except (openai.APITimeoutError, asyncio.TimeoutError, TimeoutError):
                error = f"timed out after {limit:g}s"
            except openai.APIConnectionError as e:
                error = f"connection error: {_short(str(e.__cause__ or e))}"
                if self._streak.failed(self.unreachable_after_attempts, self.unreachable_after_s):
                    raise TeacherUnavailable(
                        f"{self.identity} is unreachable: {self._streak.count} connection attempts "
                        f"in a row failed over {self._streak.seconds():.1f}s (last: {error})") from None
            except (ValueError, TypeError, AttributeError, KeyError,
                    openai.APIResponseValidationError) as e:
                # JSONDecodeError is a ValueError; _read raises _Malformed (a ValueError) and
                # KeyError/TypeError/AttributeError for bodies of the wrong shape
                error = f"malformed response: {_short(str(e))}"
            errors.append(error)
            if attempt < t.max_retries:
                pause = self._backoff(attempt, wait)
                if end is not None and time.monotonic() + pause >= end:
                    return _Call.failed(f"{_attempt_errors(errors)} (gave up after {attempt + 1} "
                                        f"attempt(s): the {self.deadline_s:g}s deadline would pass)",
                                        attempt + 1, kind=_kind(error))
                await asyncio.sleep(pause)
        return _Call.failed(f"{_attempt_errors(errors)} (gave up after {t.max_retries + 1} attempts)",
                            t.max_retries + 1, kind=_kind(error))

    def _read(self, data: Any, attempts: int) -> _Call:
        """Contents, logprobs and usage of a completion body; _Malformed if it is not usable."""
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices:
            raise _Malformed("no choices")
        contents: list[str] = []
        lps: list[list[TokenLP] | None] = []
        for ch in choices:
            content = (ch.get("message") or {}).get("content")
            if not isinstance(content, str):
                raise _Malformed("a choice has no text content")
            contents.append(content)
            lps.append(_token_logprobs(ch.get("logprobs")))
        usage = data.get("usage") or {}
        tin = int(usage.get("prompt_tokens") or 0)
        tout = int(usage.get("completion_tokens") or 0)
        t = self.spec.teacher
        cost = tin * t.price_in / 1e6 + tout * t.price_out / 1e6
        # charged as soon as it is known, so workers starting their next call see it
        self.spent_usd += cost
        return _Call(contents=contents, logprobs=lps, input_tokens=tin, output_tokens=tout,
                     cost_usd=cost, attempts=attempts)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # honour the server's wait; a little jitter on top keeps a crowd of workers that
            # were all told the same wait from coming back in the same instant
            return min(retry_after, self.max_retry_after_s) * (1 + 0.1 * random.random())
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)

    # -- from choices to an Answer --------------------------------------------------------------
    def _to_answer(self, contents: list[str], logprobs: list[list[TokenLP] | None]) -> Answer:
        parsed = [parse_label(c, self.labels) for c in contents]
        dists: list[list[float]] = []
        use_lp = self.spec.teacher.logprobs and all(lp is not None for lp in logprobs)
        for label, lp in zip(parsed, logprobs):
            if label is None:
                continue
            d = label_probs(lp, self.labels, label) if use_lp and lp is not None else None
            dists.append(d if d is not None else _one_hot(self.labels, label))

        if len(contents) == 1:
            label = parsed[0]
            if label is None:
                # a real answer, cached like any other: the filter drops it as `no_label`
                return Answer(label=None, raw=contents[0],
                              extra={"parse_error": f"answer names no known label: {_short(contents[0])}"})
            return Answer(label=label, probs=dists[0], raw=contents[0])

        votes = Counter(l for l in parsed if l is not None)
        if not votes:
            return Answer(label=None, raw=contents[0], votes={},
                          extra={"samples_raw": contents,
                                 "parse_error": f"no sample named a known label, e.g. {_short(contents[0])}"})
        total = sum(votes.values())
        if use_lp:
            probs = [sum(d[k] for d in dists) / len(dists) for k in range(len(self.labels))]
        else:
            probs = [votes.get(l, 0) / total for l in self.labels]
        # most votes wins; ties go to the higher probability, then to label order
        label = max(self.labels, key=lambda l: (votes.get(l, 0), probs[self.labels.index(l)],
                                                -self.labels.index(l)))
        raw = contents[parsed.index(label)]
        return Answer(label=label, probs=probs, votes={l: votes[l] for l in self.labels if votes[l]},
                      raw=raw, extra={"samples_raw": contents})


# -- logprobs -> label distribution ----------------------------------------------------------------
def label_probs(tokens: list[TokenLP], labels: list[str], chosen: str) -> list[float] | None:
    """The distribution over `labels` implied by the logprobs of an answer naming `chosen`.

    Implements the rule in the module docstring ("how labels of several tokens are handled").
    None when the chosen label cannot be located in the tokens or no probability mass is left.
    """
    text = "".join(tok for tok, _, _ in tokens)
    span = locate_label(text, chosen)
    if span is None:
        return None
    start, end = span
    probs = [0.0] * len(labels)
    first: int | None = None
    logp = 0.0
    pos = 0
    for k, (tok, lp, _) in enumerate(tokens):
        t_start, pos = pos, pos + len(tok)
        if t_start < end and pos > start:  # the token overlaps the label's characters
            if first is None:
                first, first_start = k, t_start
            logp += lp
    if first is None:
        return None
    probs[labels.index(chosen)] = math.exp(logp)

    gen_tok, _, alts = tokens[first]
    lead = text[first_start:start]  # what the generated token holds before the label, e.g. ' "'
    keys = [_norm(l) for l in labels]
    for alt, alt_lp in alts:
        if alt == gen_tok:
            continue  # the generated path: the chosen label's share is already exact
        core = alt[len(lead):] if lead and alt.startswith(lead) else alt
        core = _norm(core)
        if not core:
            continue
        hit = [k for k, key in enumerate(keys) if key.startswith(core) and labels[k] != chosen]
        for k in hit:
            probs[k] += math.exp(alt_lp) / len(hit)
    # the mass no listed token carries (top_logprobs lists at most 20): spread evenly over the
    # labels nothing named, so a distillation target keeps its tail instead of zeros
    seen = math.exp(tokens[first][1]) + sum(math.exp(a_lp) for a, a_lp in alts if a != gen_tok)
    unseen = [k for k, p in enumerate(probs) if p == 0.0]
    if unseen and seen < 1.0:
        for k in unseen:
            probs[k] = (1.0 - seen) / len(unseen)
    total = sum(probs)
    if not total > 0:
        return None
    return [p / total for p in probs]


def _token_logprobs(block: Any) -> list[TokenLP] | None:
    """A choice's `logprobs.content` as TokenLP tuples; None when absent or not well formed
    (logprobs are an extra: a broken block falls back to votes or one-hot, it fails nothing)."""
    try:
        out: list[TokenLP] = []
        for x in block["content"]:
            alts = [(a["token"], float(a["logprob"])) for a in (x.get("top_logprobs") or [])]
            if not isinstance(x["token"], str) or not all(isinstance(a, str) for a, _ in alts):
                return None
            out.append((x["token"], float(x["logprob"]), alts))
        return out or None
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


def locate_label(text: str, label: str) -> tuple[int, int] | None:
    """Character span of the first occurrence of `label` in `text`: whole word first, then
    anywhere; case-insensitive; `_`, `-` and whitespace match each other."""
    parts = [re.escape(p) for p in re.split(r"[_\s-]+", label.strip()) if p]
    if not parts:
        return None
    pat = r"[_\s-]+".join(parts)
    m = re.search(rf"(?<!\w){pat}(?!\w)", text, re.I) or re.search(pat, text, re.I)
    return m.span() if m else None


def _norm(s: str) -> str:
    return s.strip().strip("\"'`").strip().lower()


def _one_hot(labels: list[str], label: str) -> list[float]:
    return [1.0 if l == label else 0.0 for l in labels]


# -- plumbing --------------------------------------------------------------------------------------
@dataclass
class _Call:
    contents: list[str]
    logprobs: list[list[TokenLP] | None]
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float | None = None
    attempts: int = 1
    error: str | None = None
    status: int | None = None
    """HTTP status of a failed call that was not retried (a 4xx), else None."""

    kind: str | None = None
    """For a failed call: "auth" (401/403), "connection", "timeout", "http", "malformed"."""

    @classmethod
    def failed(cls, error: str, attempts: int, status: int | None = None,
               kind: str | None = None) -> "_Call":
        if kind is None:
            kind = "auth" if status in (401, 403) else "http"
        return cls(contents=[], logprobs=[], attempts=attempts, error=error, status=status, kind=kind)


def _kind(error: str) -> str:
    for prefix, kind in (("connection error", "connection"), ("timed out", "timeout"),
                         ("HTTP ", "http"), ("malformed", "malformed")):
        if error.startswith(prefix):
            return kind
    return "http"


def _attempt_errors(errors: list[str], each: int = 80) -> str:
    """Every attempt's error, short, oldest first, repeats counted: "HTTP 500: internal error
    (x2); then timed out after 30s" (a row that failed keeps why each attempt failed)."""
    if len(errors) == 1:
        return errors[0]
    parts: list[list[Any]] = []  # [error, times]
    for e in errors:
        e = _short(e, each)
        if parts and parts[-1][0] == e:
            parts[-1][1] += 1
        else:
            parts.append([e, 1])
    return "; then ".join(e if n == 1 else f"{e} (x{n})" for e, n in parts)


class _Streak:
    """Connection failures in a row (no response of any kind in between), over all workers."""

    def __init__(self) -> None:
        self.count = 0
        self.start = 0.0

    def reset(self) -> None:
        self.count = 0

    def seconds(self) -> float:
        return time.monotonic() - self.start if self.count else 0.0

    def failed(self, max_count: int, max_s: float) -> bool:
        """Count one failure; True when the run of them means the endpoint is unreachable."""
        if self.count == 0:
            self.start = time.monotonic()
        self.count += 1
        return self.count >= max_count or (self.count >= 3 and self.seconds() >= max_s)


def _is_loopback_url(url: str) -> bool:
    import ipaddress
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Malformed(ValueError):
    pass


@dataclass
class _Failed:
    exc: BaseException


_DONE = object()


class _Background:
    """An event loop running in a daemon thread, and the pooled client made on it.

    It outlives each `answer()`: a server escalating one input at a time would otherwise pay for
    a new loop, a new SDK client, a new connection and (over HTTPS) a TLS handshake on every
    escalation: 64 ms per call against a local endpoint, 4 ms with the loop and client kept
    (p50, `python bench/teacher_call.py`). Holds no reference to the teacher, so the teacher can
    be collected, and `stop` (the teacher's finalizer) closes the client and ends the thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="openai-teacher", daemon=True)
        self.thread.start()
        self.pid = os.getpid()
        self.tag: str | None = None
        self.client: openai.AsyncOpenAI | None = None

    def stop(self) -> None:
        loop, client = self.loop, self.client
        self.client = None
        if loop.is_closed() or self.pid != os.getpid():  # a forked child: the thread is not here
            return
        if threading.current_thread() is self.thread:  # collected on its own loop: no join
            loop.call_soon(loop.stop)
            return
        if client is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=2)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        _call_threadsafe(loop, loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            loop.close()


def _call_threadsafe(loop: asyncio.AbstractEventLoop, fn: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop already finished and closed
        pass


def _deadline(seconds: float) -> Any:
    """`asyncio.timeout` (3.11+), else a small equivalent built on call_later + cancel."""
    if hasattr(asyncio, "timeout"):
        return asyncio.timeout(seconds)
    return _LegacyDeadline(seconds)  # pragma: no cover - Python 3.10


class _LegacyDeadline:  # pragma: no cover - Python 3.10
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.fired = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None

        def fire() -> None:
            self.fired = True
            task.cancel()

        self.handle = asyncio.get_running_loop().call_later(self.seconds, fire)

    async def __aexit__(self, et: Any, e: Any, tb: Any) -> bool:
        self.handle.cancel()
        if self.fired and et is asyncio.CancelledError:
            raise TimeoutError
        return False


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asked to wait (`retry-after-ms`, `retry-after` seconds or date)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        v = headers.get(name)
        if v is None:
            continue
        try:
            s = float(v) / scale
        except ValueError:
            try:
                s = email.utils.parsedate_to_datetime(v).timestamp() - time.time()
            except (TypeError, ValueError, IndexError):
                continue
        if math.isfinite(s):
            return max(0.0, s)
    return None


def _http_client(concurrency: int, timeout_s: float) -> Any:
    """An async HTTP client for the SDK whose pool holds one connection per worker."""
    try:  # openai >= 3 runs on httpx2
        import httpx2 as hx
    except ImportError:  # pragma: no cover - openai 1.x/2.x run on httpx
        import httpx as hx  # type: ignore[no-redef]
    make = getattr(openai, "DefaultAsyncHttpx2Client", None) or openai.DefaultAsyncHttpxClient
    return make(
        limits=hx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        timeout=timeout_s,
    )


def _short(s: str, n: int = 200) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."

