"""`openai` teacher for `kind: generate`: an OpenAI-compatible endpoint answering free text (the
local one is `teachers/hf_causal.py`).

`OpenAIGenerateTeacher` is `OpenAITeacher` (transport, retries, concurrency, the spending cap,
usage and cost, samples) with free-text answers: the reply is the record's output, the cached
Answer keeps the per-token logprobs with their top alternatives (`logprobs: true, top_logprobs:
k`) cut to the output's tokens, and under `train.objective: rationale` the prompt asks for
"Rationale: ... Answer: ..." (see answers.py for the format, parsing and votes).
`teacher.max_tokens` defaults to 256 here (its spec default, 32, is a classify label's).
"""

from __future__ import annotations

from typing import Any

from ..answers import generate_answer
from ..spec import TaskSpec
from ..tasks.generate import generate_prompt
from .base import Answer
from .openai_compat import OpenAITeacher

DEFAULT_MAX_TOKENS = 256


class OpenAIGenerateTeacher(OpenAITeacher):
    """`OpenAITeacher` whose answers are free text (see the module doc)."""

    min_labels = 0

    def __init__(self, spec: TaskSpec, labels: list[str], spent_usd: float = 0.0, **kw: Any):
        super().__init__(spec, labels, spent_usd, **kw)
        t = spec.teacher
        self.max_tokens = t.max_tokens if "max_tokens" in t.model_fields_set else DEFAULT_MAX_TOKENS
        self.rationale = spec.train.objective == "rationale"

    def __repr__(self) -> str:
        return f"OpenAIGenerateTeacher({self.identity!r})"

    def request(self, text: str) -> dict[str, Any]:
        req = super().request(text)
        req["messages"] = [{"role": "user", "content": generate_prompt(self.spec, text, self.labels)}]
        req["max_tokens"] = self.max_tokens
        return req

    def _to_answer(self, contents: list[str], logprobs: list[Any]) -> Answer:
        lps = logprobs if self.spec.teacher.logprobs else None
        return generate_answer(contents, lps, self.rationale)
