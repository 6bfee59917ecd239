"""Teachers for `kind: extract`: an OpenAI-compatible endpoint asked for JSON, or a local tagger.

Both fit the `Teacher` protocol (teachers/base.py). An answer's `label` is the canonical JSON of
the extracted object (answers.canonical_json), or None when the answer is not a schema-valid object:
such answers are cached like any other and the filter drops them as `invalid_json` or
`schema_invalid`; `extra["parse_error"]` says why. `probs` is None (no label distribution).

OpenAI-compatible endpoints (`OpenAIExtractTeacher`): the request carries structured output,
`response_format={"type": "json_schema", "json_schema": {"name": "fields", "schema": <the task
schema>, "strict": false}}` (not strict: OpenAI's strict mode needs every property required, and
extract fields are usually optional). If the endpoint rejects that with a 4xx (other than 401/403)
the teacher falls back, for the rest of its life, to the prompt's instructions alone (the
template shows the schema) and validates answers itself. In either mode, with
`teacher.samples == 1`, an answer that is not schema-valid JSON is asked again, at most
`json_retries` (2) more times; the last answer counts. Transport retries, the spending cap,
concurrency and usage accounting are `OpenAITeacher`'s. The cache key is the structured request
(`request()`), whichever mode answered; `extra["structured"]` records the mode.

With `teacher.samples` n > 1 every sample is parsed; the schema-valid ones vote with their
canonical JSON (self-consistency); `votes` holds the counts and `label` the majority (ties: the
earliest sample). The filter's `min_votes` then keeps only answers with enough votes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..answers import canonical_json, parse_answer
from ..spec import TaskSpec
from .base import Answer
from .openai_compat import OpenAITeacher

DEFAULT_MAX_TOKENS = 256
"""teacher.max_tokens when the spec leaves it unset (its default, 32, is a classify label's)."""


def _rejects_structured(status: int | None) -> bool:
    return status is not None and 400 <= status < 500 and status not in (401, 403)


class OpenAIExtractTeacher(OpenAITeacher):
    """`OpenAITeacher` asking for JSON objects instead of labels (see the module doc)."""

    min_labels = 0

    json_retries: int = 2

    def __init__(self, spec: TaskSpec, fields: list[str], spent_usd: float = 0.0, *,
                 json_retries: int | None = None, **kw: Any):
        super().__init__(spec, fields, spent_usd, **kw)
        assert spec.json_schema is not None
        t = spec.teacher
        self.schema = spec.json_schema
        self.max_tokens = t.max_tokens if "max_tokens" in t.model_fields_set else DEFAULT_MAX_TOKENS
        self.structured = True
        """False once the endpoint rejected response_format: instructions + validation only."""
        self.fallback_error: str | None = None
        if json_retries is not None:
            self.json_retries = json_retries

    def __repr__(self) -> str:
        return f"OpenAIExtractTeacher({self.identity!r}, fields={len(self.labels)})"

    def request(self, text: str) -> dict[str, Any]:
        t = self.spec.teacher
        return {
            "model": t.model,
            "messages": [{"role": "user", "content": self.spec.render_prompt(text, self.labels)}],
            "temperature": t.temperature,
            "max_tokens": self.max_tokens,
            "n": t.samples,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "fields", "schema": self.schema, "strict": False}},
        }

    def _call_kwargs(self, text: str, n: int) -> dict[str, Any]:
        kw = self.request(text)
        if n > 1:
            kw["n"] = n
        else:
            kw.pop("n")
        if not self.structured:
            kw.pop("response_format")
        return kw

    async def _answer_one(self, client, text: str) -> Answer | None:
        want = self.spec.teacher.samples
        contents: list[str] = []
        tin = tout = attempts = 0
        cost = 0.0
        latency_ms: float | None = None
        retries_left = self.json_retries if want == 1 else 0
        while len(contents) < want:
            structured = self.structured
            res = await self._call(client, text, want - len(contents))
            if res is None:
                return None
            attempts += res.attempts
            tin, tout, cost = tin + res.input_tokens, tout + res.output_tokens, cost + res.cost_usd
            if res.error is not None:
                if structured and _rejects_structured(res.status):
                    # the endpoint does not take response_format: from now on, instructions only
                    self.structured = False
                    self.fallback_error = res.error
                    continue
                return Answer(label=None, error=res.error, input_tokens=tin, output_tokens=tout,
                              cost_usd=cost, extra={"attempts": attempts})
            latency_ms = res.latency_ms
            if retries_left > 0 and parse_answer(res.contents[0], self.schema)[0] is None:
                retries_left -= 1
                continue
            contents += res.contents
        ans = self._to_answer(contents[:want])
        ans.input_tokens, ans.output_tokens, ans.cost_usd = tin, tout, cost
        ans.latency_ms = latency_ms
        ans.extra.update({"attempts": attempts, "structured": self.structured})
        return ans

    def _to_answer(self, contents: list[str], logprobs: Any = None) -> Answer:
        parsed = [parse_answer(c, self.schema) for c in contents]
        if len(contents) == 1:
            obj, reason, detail = parsed[0]
            if obj is None:
                return Answer(label=None, raw=contents[0], extra={"parse_error": f"{reason}: {detail}"})
            return Answer(label=canonical_json(obj), raw=contents[0])
        keys = [canonical_json(obj) if obj is not None else None for obj, _, _ in parsed]
        votes = Counter(k for k in keys if k is not None)
        if not votes:
            reason, detail = parsed[0][1], parsed[0][2]
            return Answer(label=None, raw=contents[0], votes={},
                          extra={"samples_raw": contents,
                                 "parse_error": f"no sample was schema-valid JSON, e.g. {reason}: {detail}"})
        label = max(votes, key=lambda k: (votes[k], -keys.index(k)))
        return Answer(label=label, votes=dict(votes), raw=contents[keys.index(label)],
                      extra={"samples_raw": contents})
