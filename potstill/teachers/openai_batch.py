"""Labelling through the OpenAI Batch API (`teacher.batch: true`): same answers, same cache, half
the price, results within the batch's completion window instead of seconds.

`OpenAIBatchTeacher.answer(texts)`:

1. Each text becomes one request line `{"custom_id", "method": "POST", "url":
   "/v1/chat/completions", "body"}`; the body is exactly what the real-time teacher sends
   (`OpenAITeacher._call_kwargs`), and `custom_id` is a hash of the teacher identity and that
   request, so the same input has the same id in every run.
2. Batches saved by earlier runs (one JSON file per batch in `<run>/teacher_batches/`) that hold
   any of those ids are polled and read first: a run killed while its batch was in progress
   finds it again and pays nothing twice.
3. The ids left go into new batches (at most 50,000 lines each, the API's limit): the JSONL is
   uploaded (`POST /v1/files`, purpose `batch`), the state file is written *before* the batch is
   created (so a kill between the two leaves a trace: the rerun looks the batch up by its input
   file among `GET /v1/batches` before creating one), the batch is created (`POST /v1/batches`,
   never retried blindly: a retried create could pay twice) and its id saved.
4. Each batch is polled (`GET /v1/batches/{id}`) with bounded backoff: `teacher.batch_poll_s`,
   times 1.5 after each poll, at most `teacher.batch_poll_max_s`, for at most
   `teacher.batch_timeout_s` (then TimeoutError; the batch keeps running and a rerun resumes).
   Transient errors while polling are retried the same way up to `teacher.max_retries` in a row.
5. The output file (and the error file) are downloaded (`GET /v1/files/{id}/content`) and mapped
   back by `custom_id`; each answer is parsed exactly as a real-time one (`_read`, `_to_answer`).
   A line that failed, or that an expired or cancelled batch never ran, yields an Answer with
   `error` set, which the cache does not keep, so a rerun asks for it again.

Cost: usage comes from each response body and is priced at `cost.batch_price` of
`teacher.price_in`/`price_out` (discount `teacher.batch_discount`, 50% by default). The spending
cap is checked before a batch is created (a batch is paid as a whole).

Fewer uncached inputs than `teacher.batch_min_inputs` go to the real-time endpoint instead.
The identity is the real-time teacher's, so answers are shared with it through the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import openai

from ..cost import batch_price
from ..spec import TaskSpec
from .base import Answer, BudgetExceeded
from .openai_compat import PLACEHOLDER_KEY, OpenAITeacher, _short

MAX_LINES = 50_000
"""Requests in one batch (the Batch API's limit)."""
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")


class OpenAIBatchTeacher(OpenAITeacher):
    """The OpenAI-compatible teacher, answering through the Batch API (see module doc)."""

    answer_chunk = 10 * MAX_LINES
    """answer_cached hands over this many uncached texts at once (one batch per 50,000)."""

    def __init__(self, spec: TaskSpec, labels: list[str], state_dir: str | Path,
                 spent_usd: float = 0.0, *, api_key: str | None = None,
                 sleep: Any = time.sleep):
        super().__init__(spec, labels, spent_usd, api_key=api_key)
        self.state_dir = Path(state_dir)
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"OpenAIBatchTeacher({self.identity!r}, labels={len(self.labels)})"

    def custom_id(self, text: str) -> str:
        blob = json.dumps({"teacher": self.identity, "request": self.request(text)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:40]

    # -- the Teacher face -------------------------------------------------------------------------
    def answer(self, texts: Sequence[str]) -> Iterator[tuple[int, Answer]]:
        texts = list(texts)
        if not texts:
            return
        if len(texts) < self.spec.teacher.batch_min_inputs:
            yield from super().answer(texts)
            return
        remaining: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            remaining.setdefault(self.custom_id(text), []).append(i)
        client = self._sync_client()
        try:
            # 1) batches an earlier (maybe killed) run already paid for
            for state in self._saved_states():
                wanted = [c for c in state["custom_ids"] if c in remaining]
                if not wanted:
                    continue
                results = self._collect(client, state)
                for cid in wanted:
                    if cid in results and results[cid].error is None:
                        for i in remaining.pop(cid):
                            yield i, results[cid]
            # 2) new batches for the rest
            todo = list(remaining)
            if not todo:
                return
            if self.over_budget:
                cap = self.spec.teacher.max_spend_usd
                raise BudgetExceeded(
                    f"spending cap reached: spent ${self.spent_usd:.4f} of max_spend_usd "
                    f"${cap:.4f} for {self.identity}; {len(todo)} texts were not sent in a batch")
            states = [self._submit(client, [(cid, texts[remaining[cid][0]])
                                            for cid in todo[k:k + MAX_LINES]])
                      for k in range(0, len(todo), MAX_LINES)]
            for state in states:
                results = self._collect(client, state)
                for cid in state["custom_ids"]:
                    ans = results.get(cid) or Answer(
                        label=None, error=f"batch {state.get('batch_id')}: no result for this input "
                                          f"(batch {state.get('status')})")
                    for i in remaining.pop(cid, []):
                        yield i, ans
        finally:
            client.close()

    # -- batches ----------------------------------------------------------------------------------
    def _sync_client(self) -> openai.OpenAI:
        t = self.spec.teacher
        return openai.OpenAI(
            api_key=self._api_key or os.environ.get(t.api_key_env) or PLACEHOLDER_KEY,
            base_url=self.base_url, max_retries=0, timeout=max(t.timeout_s, 120.0))

    def _line(self, cid: str, text: str) -> dict[str, Any]:
        return {"custom_id": cid, "method": "POST", "url": ENDPOINT,
                "body": self._call_kwargs(text, self.spec.teacher.samples)}

    def _submit(self, client: openai.OpenAI, items: list[tuple[str, str]]) -> dict[str, Any]:
        data = "".join(json.dumps(self._line(cid, text)) + "\n" for cid, text in items).encode()
        f = self._retrying(lambda: client.files.create(
            file=("potstill-batch.jsonl", data, "application/jsonl"), purpose="batch"))
        state = {"identity": self.identity, "input_file_id": f.id, "batch_id": None,
                 "status": "uploaded", "created_at": time.time(),
                 "custom_ids": [cid for cid, _ in items]}
        self._save(state)  # before the create: a kill now leaves the file id to look for
        b = client.batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h",
                                  metadata={"potstill": "label", "input_file_id": f.id})
        state.update(batch_id=b.id, status=b.status)
        self._save(state)
        return state

    def _find_batch(self, client: openai.OpenAI, input_file_id: str) -> str | None:
        """The batch created from `input_file_id` (a run killed between create and save)."""
        for b in self._retrying(lambda: client.batches.list(limit=100)):
            if b.input_file_id == input_file_id:
                return b.id
        return None

    def _collect(self, client: openai.OpenAI, state: dict[str, Any]) -> dict[str, Answer]:
        """Wait for the state's batch to end and read its results: {custom_id: Answer}."""
        if not state.get("batch_id"):
            found = self._find_batch(client, state["input_file_id"])
            if found is None:  # uploaded, never created: nothing was paid; send again
                self._path(state).unlink(missing_ok=True)
                return {}
            state.update(batch_id=found)
            self._save(state)
        b = self._wait(client, state)
        out: dict[str, Answer] = {}
        if b.status == "failed" and not b.output_file_id:
            errs = getattr(b, "errors", None)
            msg = "; ".join(f"{e.code}: {e.message}" for e in (errs.data if errs and errs.data else []))
            raise RuntimeError(f"batch {b.id} failed: {msg or 'no reason given'} "
                               f"(state file {self._path(state)})")
        for fid in (b.output_file_id, b.error_file_id):
            if not fid:
                continue
            text = self._retrying(lambda: client.files.content(fid).text)
            for line in text.splitlines():
                if line.strip():
                    rec = json.loads(line)
                    out[rec["custom_id"]] = self._line_answer(rec, b.id)
        return out

    def _wait(self, client: openai.OpenAI, state: dict[str, Any]) -> Any:
        t = self.spec.teacher
        delay, t0 = t.batch_poll_s, time.monotonic()
        while True:
            b = self._retrying(lambda: client.batches.retrieve(state["batch_id"]))
            if b.status != state.get("status"):
                state["status"] = b.status
                self._save(state)
            if b.status in TERMINAL:
                return b
            waited = time.monotonic() - t0
            if waited >= t.batch_timeout_s:
                raise TimeoutError(
                    f"batch {b.id} is still {b.status} after {waited:.0f}s (teacher.batch_timeout_s);"
                    " it keeps running: rerun to pick it up again, nothing is paid twice")
            self._sleep(min(delay, t.batch_timeout_s - waited))
            delay = min(delay * 1.5, t.batch_poll_max_s)

    def _retrying(self, fn: Any) -> Any:
        """fn() with the teacher's retries on transient errors (reads and uploads only)."""
        t = self.spec.teacher
        for attempt in range(t.max_retries + 1):
            try:
                return fn()
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                    openai.InternalServerError):
                if attempt == t.max_retries:
                    raise
                ceiling = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
                self._sleep(random.uniform(ceiling / 2, ceiling))

    def _line_answer(self, rec: dict[str, Any], batch_id: str) -> Answer:
        """One output (or error) line -> Answer, priced at the batch price."""
        resp = rec.get("response") or {}
        status = resp.get("status_code")
        if rec.get("error") or status != 200:
            err = rec.get("error") or (resp.get("body") or {}).get("error") or {}
            msg = err.get("message") if isinstance(err, dict) else str(err)
            return Answer(label=None, error=f"batch {batch_id}: HTTP {status}: {_short(str(msg))}")
        try:
            call = self._read(resp.get("body"), 1)
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            return Answer(label=None, error=f"batch {batch_id}: malformed response: {_short(str(e))}")
        t = self.spec.teacher
        cost = (call.input_tokens * batch_price(t.price_in, t.batch_discount)
                + call.output_tokens * batch_price(t.price_out, t.batch_discount)) / 1e6
        self.spent_usd += cost - call.cost_usd  # _read charged the real-time price
        ans = self._to_answer(call.contents, call.logprobs)
        ans.input_tokens, ans.output_tokens, ans.cost_usd = call.input_tokens, call.output_tokens, cost
        ans.extra.update(attempts=1, batch_id=batch_id)
        return ans

    # -- state files --------------------------------------------------------------------------------
    def _path(self, state: dict[str, Any]) -> Path:
        return self.state_dir / f"{state['input_file_id']}.json"

    def _save(self, state: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self._path(state)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)  # atomic: a kill leaves the old file or the new one

    def _saved_states(self) -> list[dict[str, Any]]:
        if not self.state_dir.is_dir():
            return []
        out = []
        for p in sorted(self.state_dir.glob("*.json")):
            try:
                s = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{p}: unreadable batch state ({e}); delete it to resubmit") from None
            if s.get("identity") == self.identity and s.get("status") != "failed":
                out.append(s)
        return sorted(out, key=lambda s: s.get("created_at", 0))
