"""Routing: the student answers; doubtful, out-of-distribution and high-stakes inputs go to the
teacher; a teacher that fails or is slow never fails the request.

The pieces, each replaceable:

- `StudentBackend` (a Protocol): `predict(texts) -> [StudentOutput]`, each with the answer and
  the signals the router needs: a calibrated confidence in [0, 1], an OOD score (higher = more
  unusual, None when the backend has none), the distribution over labels when it has one, and
  `error` when its output is unusable. `ClassifierStudent` is the encoder-classifier backend
  (temperature-scaled softmax + Mahalanobis / k-NN OOD score). A generative student fits the same
  slot: label parsed from its text, confidence from its token logprobs, `error="invalid JSON"`
  when it produced no valid answer (the router escalates it as `invalid_output`).
- `Policy` + `decide(output, policy)`: pure; the reasons to escalate, empty for "student answers".
- `TeacherClient`: any `Teacher` (an OpenAI-compatible endpoint, a local model), behind the
  teacher-call cache, with its calls micro-batched in worker threads; one future per input.
- `Router.route(texts, ids)`: runs the student through the micro-batcher, decides, asks the
  teacher for escalated inputs with a deadline (`serve.teacher_timeout_s`): when the teacher
  fails or the deadline passes, the student's answer goes out with route `degraded` and the case
  is queued (the teacher's late answer, if it comes, is written into the queue item). When the
  teacher is not to be asked at all (none, or its circuit breaker is open), the decision and the
  queue write happen in the batcher's worker thread, beside the student's forward pass. A share of
  student-served answers (`serve.shadow_share`) is also sent to the teacher in the background;
  disagreements are queued. Every escalation is queued with both answers.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ..store import Store
from ..teachers.base import Answer, Teacher, cache_key
from ..threads import limit_threads
from .batching import MicroBatcher
from .confidence import NoOOD, OODStats, confidence_scores, softmax
from .queue import ReviewQueue

ROUTES = ("student", "teacher", "degraded")
REASONS = ("invalid_output", "high_stakes", "low_confidence", "ood")


# -- the student slot ----------------------------------------------------------------------------
@dataclass
class StudentOutput:
    """One student answer with the signals the router thresholds."""

    label: str | None
    confidence: float
    """Calibrated, in [0, 1], higher = surer (the score `serve.confidence_score` names)."""
    ood_score: float | None = None
    """Higher = further from the training inputs; None when the backend has no such score."""
    probs: list[float] | None = None
    """Calibrated distribution over the backend's `labels`, when it has one."""
    error: str | None = None
    """Why the output is unusable (a generative student's invalid JSON, say); escalates."""
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class StudentBackend(Protocol):
    identity: str
    """Version of the student (a content hash): recorded with every queue item."""
    labels: list[str]

    def predict(self, texts: Sequence[str]) -> list[StudentOutput]:
        """Answers for `texts` (called from a worker thread, one batch at a time)."""
        ...


def student_version(model_dir: str | Path) -> str:
    from ..manifest import file_hash

    d = Path(model_dir)
    weights = sorted(d.glob("*.safetensors")) or sorted(d.glob("*.bin"))
    return file_hash(*weights) if weights else "unknown"


class ClassifierStudent:
    """The encoder classifier of `students/classifier.py` as a `StudentBackend`.

    `forward(texts)` gives the raw (logits, embeddings) that calibration fits on; `predict`
    turns them into calibrated outputs with the fitted temperature, score kind and OOD stats.
    """

    def __init__(self, model_dir: str | Path, *, temperature: float = 1.0,
                 score: str = "max_prob", ood: OODStats | None = None, embedding: str = "cls",
                 max_length: int = 64, threads: int | None = None, device: str = "auto"):
        import torch

        from ..students.classifier import load_classifier, model_labels

        limit_threads(threads)  # torch and numpy's BLAS: threads.py
        self.model_dir = Path(model_dir)
        self.model, self.tokenizer = load_classifier(self.model_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model.to(self.device)
        self.labels = model_labels(self.model)
        self.identity = student_version(self.model_dir)
        self.temperature = float(temperature)
        self.score = score
        self.ood = ood if ood is not None else NoOOD()
        self.embedding = embedding
        self.max_length = max_length

    def forward(self, texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N, C), embeddings (N, D)) float32, batches formed by length."""
        import torch

        from ..students.hf import clip_for_tokenizer

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        logits = np.zeros((len(texts), len(self.labels)), np.float32)
        emb: np.ndarray | None = None
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                enc = self.tokenizer(clip_for_tokenizer([texts[i] for i in idx], self.max_length),
                                     padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt").to(self.device)
                out = self.model(**enc, output_hidden_states=True)
                h = out.hidden_states[-1]  # (B, T, D)
                if self.embedding == "mean":
                    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
                    e = (h * m).sum(1) / m.sum(1).clamp(min=1)
                else:
                    e = h[:, 0]
                if emb is None:
                    emb = np.zeros((len(texts), e.shape[-1]), np.float32)
                logits[idx] = out.logits.float().cpu().numpy()
                emb[idx] = e.float().cpu().numpy()
        if emb is None:
            emb = np.zeros((0, 0), np.float32)
        return logits, emb

    def outputs_from(self, logits: np.ndarray, emb: np.ndarray) -> list[StudentOutput]:
        probs = softmax(logits, self.temperature)  # (N, C)
        conf = confidence_scores(probs, self.score)  # type: ignore[arg-type]
        ood = self.ood.score(emb) if len(emb) else np.zeros(0)
        top = probs.argmax(-1)
        return [StudentOutput(label=self.labels[int(top[i])], confidence=float(conf[i]),
                              ood_score=None if self.ood.method == "none" else float(ood[i]),
                              probs=probs[i].tolist())
                for i in range(len(probs))]

    def predict(self, texts: Sequence[str]) -> list[StudentOutput]:
        return self.outputs_from(*self.forward(texts, batch_size=max(len(texts), 1)))


# -- the decision (pure) -------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    confidence_threshold: float | None = None
    """Escalate when the confidence is below this; None: never for confidence."""
    ood_threshold: float | None = None
    """Escalate when the OOD score is above this; None: never for OOD."""
    high_stakes: frozenset[str] = frozenset()
    high_stakes_prob: float = 1.0
    """Also escalate when a high-stakes label has at least this probability."""


def decide(out: StudentOutput, policy: Policy, labels: Sequence[str] = ()) -> list[str]:
    """Reasons to send this input to the teacher, in `REASONS` order; [] means the student answers."""
    reasons = []
    if out.error is not None or out.label is None:
        reasons.append("invalid_output")
    if policy.high_stakes and (
        out.label in policy.high_stakes
        or (out.probs is not None and labels and any(
            p >= policy.high_stakes_prob for l, p in zip(labels, out.probs) if l in policy.high_stakes))
    ):
        reasons.append("high_stakes")
    if policy.confidence_threshold is not None and out.confidence < policy.confidence_threshold:
        reasons.append("low_confidence")
    if (policy.ood_threshold is not None and out.ood_score is not None
            and out.ood_score > policy.ood_threshold):
        reasons.append("ood")
    return reasons


def high_stakes_mask(probs: np.ndarray, labels: Sequence[str], high_stakes: Sequence[str],
                     prob: float = 1.0) -> np.ndarray:
    """(N, C) probabilities -> (N,) bool: `decide` would give "high_stakes" (vectorised)."""
    probs = np.asarray(probs)
    cols = [i for i, l in enumerate(labels) if l in set(high_stakes)]
    if not cols:
        return np.zeros(len(probs), bool)
    pred_hs = np.isin(probs.argmax(-1), cols)
    return pred_hs | (probs[:, cols] >= prob).any(-1)


# -- the teacher slot ----------------------------------------------------------------------------
class TeacherClient:
    """A Teacher behind the run's call cache, with its calls grouped into small batches that run
    in `workers` threads; `ask(text)` is a future resolved as that input's answer arrives."""

    def __init__(self, teacher: Teacher, store: Store, spec_hash: str, *, workers: int = 4,
                 max_batch: int = 16, window_ms: float = 2.0, breaker: Any = None,
                 deadline_s: float | None = None):
        self.teacher = teacher
        self.identity = teacher.identity
        self.breaker = breaker
        """A `CircuitBreaker` (serve/breaker.py) the router consults before each escalation."""
        if deadline_s is not None and hasattr(teacher, "deadline_s"):
            # the teacher's own retries must end before the router stops waiting, so the
            # request gets the real error (a refused connection), not "no answer within Ns"
            teacher.deadline_s = deadline_s
        self.store = store
        self.spec_hash = spec_hash
        self.batcher: MicroBatcher[str, Answer] = MicroBatcher(
            stream_fn=self._answer_batch, max_batch_size=max_batch, window_ms=window_ms,
            max_concurrent=workers, name="teacher")

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop(wait_s=1.0)
        close = getattr(self.teacher, "close", None)  # an API teacher's pooled connections
        if close is not None:
            await asyncio.to_thread(close)

    def ask(self, text: str) -> asyncio.Future[Answer]:
        return self.batcher.submit_nowait(text)

    def _answer_batch(self, texts: list[str], emit) -> None:
        keys = [cache_key(self.teacher, t, self.spec_hash) for t in texts]
        hits = self.store.get_calls(set(keys))
        first: dict[str, int] = {}
        dups: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            if k in hits:
                a = Answer.from_json(hits[k])
                a.extra = {**a.extra, "cached": True}
                emit(i, a)
            elif k in first:
                dups[first[k]].append(i)
            else:
                first[k] = i
                dups[i] = []
        todo = list(first.values())
        if not todo:
            return
        for j, ans in self.teacher.answer([texts[i] for i in todo]):
            i = todo[j]
            if ans.error is None:
                self.store.put_call(keys[i], self.teacher.identity, ans.to_json(), ans.input_tokens,
                                    ans.output_tokens, ans.cost_usd, ans.latency_ms)
            emit(i, ans)
            for d in dups[i]:
                emit(d, ans)


# -- the router ----------------------------------------------------------------------------------
@dataclass
class Routed:
    """What the router did with one input."""

    request_id: str
    input: str
    label: str | None
    """The served answer."""
    route: str
    """student | teacher | degraded"""
    reasons: list[str]
    """Why it was escalated ([] when the student answered on its own)."""
    student: StudentOutput
    teacher: Answer | None = None
    teacher_error: str | None = None
    queue_id: int | None = None

    @property
    def probs(self) -> list[float] | None:
        """Distribution behind the served answer: the teacher's when it answered, else the
        student's (over the student backend's labels)."""
        if self.route == "teacher" and self.teacher is not None:
            return self.teacher.probs
        return self.student.probs


@dataclass
class _Answered:
    """The student's output for one input, with the router's decision, made in the batcher's
    worker thread (`Router._predict`)."""

    out: StudentOutput
    reasons: list[str]
    routed: Routed | None = None
    """Set when the input was escalated but the teacher is not to be asked (no teacher, or its
    breaker is not closed): answered degraded there and then, its queue item committed."""


class RouterEvents:
    """Hooks the server's metrics implement; these defaults do nothing."""

    def student_batch(self, size: int, seconds: float) -> None: ...
    def routed(self, r: Routed) -> None: ...
    def teacher_answer(self, seconds: float, error: str | None) -> None: ...
    def teacher_skipped(self, reason: str) -> None: ...
    def shadow(self, outcome: str) -> None: ...
    def queued(self, kind: str) -> None: ...


class Router:
    def __init__(
        self,
        student: StudentBackend,
        policy: Policy,
        queue: ReviewQueue,
        teacher: TeacherClient | None = None,
        *,
        batching: bool = True,
        window_ms: float = 3.0,
        adaptive_window: bool = True,
        max_batch_size: int = 32,
        teacher_timeout_s: float = 10.0,
        shadow_share: float = 0.0,
        shadow_max_pending: int = 256,
        seed: int = 0,
        events: RouterEvents | None = None,
    ):
        self.student = student
        self.policy = policy
        self.queue = queue
        self.teacher = teacher
        self.events = events or RouterEvents()
        self.teacher_timeout_s = teacher_timeout_s
        self.shadow_share = shadow_share
        self.shadow_max_pending = shadow_max_pending
        self._rng = random.Random(seed)
        self._background: set[asyncio.Task] = set()
        self.batcher: MicroBatcher[tuple[str, str], _Answered] = MicroBatcher(
            self._predict, max_batch_size=max_batch_size, window_ms=window_ms, enabled=batching,
            adaptive=adaptive_window, name="student")

    def _predict(self, batch: list[tuple[str, str]]) -> list[_Answered]:
        """(text, request id) pairs -> the student's answers and the decisions, in the worker
        thread. When the teacher is not to be asked, the escalated inputs of the batch are
        answered degraded here and their queue items committed in one transaction before the
        batch's results go back: under load each trip through the event loop waits its turn
        behind every other request, and the queue write would otherwise be a second trip
        (docs/RELIABILITY.md, section 3). A write that fails here leaves those inputs to
        `_escalate` on the event loop, which fails only their requests."""
        t0 = time.perf_counter()
        outs = self.student.predict([text for text, _ in batch])
        self.events.student_batch(len(batch), time.perf_counter() - t0)
        done = [_Answered(out, decide(out, self.policy, self.student.labels)) for out in outs]
        skip = self._skip_teacher()
        todo = [(i, self._degraded(*batch[i], a.out, a.reasons, *skip))
                for i, a in enumerate(done) if a.reasons] if skip is not None else []
        if todo:
            try:
                ids = self.queue.add_now([item for _, (_, item) in todo])
            except Exception:  # noqa: BLE001 - `_escalate` writes them again, request by request
                return done
            for (i, (r, _)), qid in zip(todo, ids):
                r.queue_id = qid
                done[i].routed = r
        return done

    def _skip_teacher(self) -> tuple[str, str] | None:
        """(queue reason, error) when escalations are answered degraded without asking the
        teacher: there is none, or its breaker is not closed. (Read from worker threads too: the
        breaker's state is a read there; only the event loop changes it.)"""
        if self.teacher is None:
            return "no_teacher", "no teacher"
        breaker = self.teacher.breaker
        if breaker is not None and breaker.state != "closed":
            return "breaker_open", f"teacher unavailable (circuit open after: {breaker.last_error})"
        return None

    def _degraded(self, text: str, rid: str, out: StudentOutput, reasons: list[str], reason: str,
                  error: str) -> tuple[Routed, dict[str, Any]]:
        """The degraded answer for an escalation that does not ask the teacher, and its queue item."""
        r = Routed(rid, text, out.label, "degraded", reasons, out, teacher_error=error)
        detail: dict[str, Any] = {"escalated_for": reasons}
        if self.teacher is not None:
            detail.update(error=error, teacher_identity=self.teacher.identity)
        return r, self._item(r, "degraded", reason, detail=detail)

    async def start(self) -> None:
        await self.batcher.start()
        if self.teacher is not None:
            await self.teacher.start()

    async def stop(self, wait_s: float = 2.0) -> None:
        """Stop this router's own work (`stop_own`), then the teacher client."""
        await self.stop_own(wait_s)
        if self.teacher is not None:
            await self.teacher.stop()

    async def stop_own(self, wait_s: float = 2.0) -> None:
        """Let background work (shadow checks, late teacher answers) finish for up to `wait_s`,
        then cancel it; stop the batcher."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=wait_s)
        for t in list(self._background):
            t.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.batcher.stop()

    @property
    def pending_background(self) -> int:
        return len(self._background)

    async def route(self, texts: Sequence[str], request_ids: Sequence[str]) -> list[Routed]:
        answered = await self.batcher.submit(list(zip(texts, request_ids)))
        routed: list[Routed | None] = [None] * len(answered)
        asks = {}  # only an escalation that asks the teacher waits on anything more
        for i, (text, rid, a) in enumerate(zip(texts, request_ids, answered)):
            if a.routed is not None:
                routed[i] = self._answered_degraded(a.routed)
            elif a.reasons:
                asks[i] = self._escalate(text, rid, a.out, a.reasons)
            else:
                routed[i] = self._served_by_student(text, rid, a.out)
        if len(asks) == 1:  # one awaited in place: no task, no extra trip through the loop
            ((i, ask),) = asks.items()
            routed[i] = await ask
        elif asks:
            for i, r in zip(asks, await asyncio.gather(*asks.values())):
                routed[i] = r
        out = [r for r in routed if r is not None]
        for r in out:
            self.events.routed(r)
            self.queue.log({
                "request_id": r.request_id, "input": r.input, "student_label": r.student.label,
                "served_label": r.label, "teacher_label": r.teacher.label if r.teacher else None,
                "route": r.route, "reasons": r.reasons, "confidence": r.student.confidence,
                "ood_score": r.student.ood_score, "student_version": self.student.identity,
            })
        return out

    def _answered_degraded(self, r: Routed) -> Routed:
        """The event loop's part of an answer degraded without asking the teacher (in the
        batcher's thread, or by `_escalate`'s fallback): the metrics, and the half-open breaker's
        trial call, in the background."""
        self.events.queued("degraded")
        if self.teacher is not None and self.teacher.breaker is not None:
            self.events.teacher_skipped("breaker_open")
            if self.teacher.breaker.allow():
                assert r.queue_id is not None and r.teacher_error is not None
                self._spawn(self._trial(self.teacher.ask(r.input), r.queue_id, r.reasons, r.teacher_error))
        return r

    def _served_by_student(self, text: str, rid: str, out: StudentOutput) -> Routed:
        r = Routed(rid, text, out.label, "student", [], out)
        if self.teacher is not None and self.shadow_share > 0 and self._rng.random() < self.shadow_share:
            if len(self._background) >= self.shadow_max_pending:
                self.events.shadow("skipped")
            else:
                self._spawn(self._shadow(r))
        return r

    def _item(self, r: Routed, kind: str, reason: str, **more: Any) -> dict[str, Any]:
        return {"kind": kind, "reason": reason, "request_id": r.request_id, "input": r.input,
                "student_label": r.student.label, "route": r.route, "served_label": r.label,
                "confidence": r.student.confidence, "ood_score": r.student.ood_score,
                "student_version": self.student.identity, **more}

    async def _add(self, item: dict[str, Any]) -> int:
        qid = await self.queue.add(**item)
        self.events.queued(item["kind"])
        return qid

    async def _escalate(self, text: str, rid: str, out: StudentOutput, reasons: list[str]) -> Routed:
        why = "+".join(reasons)
        skip = self._skip_teacher()
        if skip is not None:
            # No teacher, or it failed `failures` times in a row: answer at once, degraded
            # (usually done already in the batcher's thread, `_predict`; here when the breaker
            # opened since, or that write failed). Once per cool-down (half-open) this input is
            # also sent to the teacher in the background as the trial; its outcome closes or
            # reopens the breaker (serve/breaker.py). No request waits for a teacher that is
            # known to be down.
            r, item = self._degraded(text, rid, out, reasons, *skip)
            r.queue_id = await self.queue.add(**item)
            return self._answered_degraded(r)
        assert self.teacher is not None
        breaker = self.teacher.breaker
        fut = self.teacher.ask(text)
        t0 = time.perf_counter()
        error = None
        kind = "teacher_error"
        ans: Answer | None = None
        try:
            ans = await asyncio.wait_for(asyncio.shield(fut), self.teacher_timeout_s)
        except asyncio.TimeoutError:
            error, kind = f"no answer within {self.teacher_timeout_s:g}s", "teacher_timeout"
        except Exception as e:  # noqa: BLE001 - any teacher failure degrades, never fails
            error = f"{type(e).__name__}: {_short(str(e))}"
        if ans is not None and ans.error is not None:
            error = ans.error
        if breaker is not None:  # an answer naming no label is still an answer: the teacher is up
            if error is None:
                breaker.success()
            else:
                breaker.failure(_short(error))
        if ans is not None and error is None and ans.label is None:
            error = (ans.extra or {}).get("parse_error") or "the teacher named no known label"
        self.events.teacher_answer(time.perf_counter() - t0, None if error is None else kind)

        if error is None and ans is not None:
            r = Routed(rid, text, ans.label, "teacher", reasons, out, teacher=ans)
            r.queue_id = await self._add(self._item(
                r, "escalation", why, teacher_label=ans.label,
                detail={"teacher": _answer_brief(ans), "teacher_identity": self.teacher.identity}))
            return r
        r = Routed(rid, text, out.label, "degraded", reasons, out, teacher=ans, teacher_error=error)
        r.queue_id = await self._add(self._item(
            r, "degraded", kind, detail={"escalated_for": reasons, "error": error,
                                         "teacher_identity": self.teacher.identity}))
        if not fut.done():  # the teacher may still answer: keep that answer with the item
            qid = r.queue_id
            fut.add_done_callback(lambda f: self._spawn(self._late_answer(qid, f, reasons, error)))
        return r

    async def _trial(self, fut: asyncio.Future, qid: int, reasons: list[str], error: str) -> None:
        """The half-open breaker's trial call: its outcome closes or reopens the breaker; a label
        is kept with the (already answered, degraded) queue item, as a late answer is."""
        assert self.teacher is not None and self.teacher.breaker is not None
        breaker = self.teacher.breaker
        t0 = time.perf_counter()
        try:
            ans = await asyncio.wait_for(asyncio.shield(fut), self.teacher_timeout_s)
        except asyncio.TimeoutError:
            breaker.failure(f"no answer within {self.teacher_timeout_s:g}s")
            self.events.teacher_answer(time.perf_counter() - t0, "teacher_timeout")
            return
        except Exception as e:  # noqa: BLE001
            breaker.failure(_short(f"{type(e).__name__}: {e}"))
            self.events.teacher_answer(time.perf_counter() - t0, "teacher_error")
            return
        if ans.error is not None:
            breaker.failure(_short(ans.error))
            self.events.teacher_answer(time.perf_counter() - t0, "teacher_error")
            return
        breaker.success()
        self.events.teacher_answer(time.perf_counter() - t0, None)
        if ans.label is not None:
            await self.queue.update(qid, teacher_label=ans.label, detail={
                "escalated_for": reasons, "error": error, "late_teacher": _answer_brief(ans),
                "teacher_identity": self.teacher.identity})

    async def _late_answer(self, qid: int, fut: asyncio.Future, reasons: list[str], error: str) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        ans: Answer = fut.result()
        if ans.label is None:
            return
        await self.queue.update(qid, teacher_label=ans.label, detail={
            "escalated_for": reasons, "error": error, "late_teacher": _answer_brief(ans),
            "teacher_identity": self.teacher.identity if self.teacher else None})

    async def _shadow(self, r: Routed) -> None:
        assert self.teacher is not None
        breaker = self.teacher.breaker
        if breaker is not None and breaker.state != "closed":  # no background calls to a teacher that is down
            self.events.shadow("skipped")
            return
        try:
            ans = await self.teacher.ask(r.input)
        except Exception:  # noqa: BLE001
            self.events.shadow("error")
            return
        if ans.label is None:
            self.events.shadow("error")
            return
        if ans.label == r.label:
            self.events.shadow("agree")
            return
        self.events.shadow("disagree")
        await self._add(self._item(r, "disagreement", "shadow", teacher_label=ans.label,
                                   detail={"teacher": _answer_brief(ans),
                                           "teacher_identity": self.teacher.identity}))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _answer_brief(a: Answer) -> dict[str, Any]:
    return {"label": a.label, "confidence": max(a.probs) if a.probs else None,
            "cost_usd": a.cost_usd, "latency_ms": a.latency_ms,
            "cached": bool(a.extra.get("cached")), "raw": _short(a.raw or "", 300)}


def _short(s: str, n: int = 200) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."
