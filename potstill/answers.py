"""Reading a teacher's reply: what an `Answer` is, labels in free text, JSON objects checked
against an extract schema, free-text outputs with their token logprobs and rationales.

A leaf: pure functions and one dataclass, imported by teachers, tasks, students and the server
alike; importing it imports nothing heavy (jsonschema loads inside the functions that need it).

Conventions shared by every task kind:
- classify: `parse_label` maps free text to one of the labels (or None);
- extract: a field that is absent, `null` or an empty string means "the text does not mention it"
  (`clean_fields`), and the canonical text of an object (`canonical_json`: sorted keys, no
  whitespace) is what `Answer.label`, a record's `label`/`gold` and self-consistency votes hold;
- generate: the reply, stripped, is the output; under the rationale objective the teacher writes
  "Rationale: ...\nAnswer: ..." (`read_reply`, `generate_answer`); `normalize_answer` is the
  comparison key of free-text answers.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

TokenLP = Sequence[Any]
"""One generated token with its alternatives: (token text, logprob, [(alternative, logprob), ...])."""

@dataclass
class Answer:
    """One teacher answer for one input text.

    `probs` is a distribution over the task labels (same order as the task's label list) when the
    teacher gives one: full softmax for local models, logprob-derived or vote-derived for APIs.
    `label` is None when the answer named no known label: that is still an answer (cached,
    dropped by the filter as `no_label`; `extra["parse_error"]` says why). `error` is set only
    when no answer came (HTTP errors, timeouts after retries): those are not cached, so a rerun
    asks again.
    """

    label: str | None
    probs: list[float] | None = None
    votes: dict[str, int] | None = None
    raw: str | None = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Answer":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# -- classify --------------------------------------------------------------------------------
def parse_label(answer: str, labels: list[str]) -> str | None:
    """Map a teacher's free-text answer to one of `labels`, or None when it names none.

    Tried in order: exact match; case- and space-insensitive match (also after stripping quotes
    and trailing punctuation); a JSON object with a "label" field (also inside surrounding text or
    a code fence); "Label: X"; finally, exactly one label appearing as a whole word in the answer.
    """
    if answer is None:
        return None
    s = answer.strip()
    if s in labels:
        return s
    canon = {_canon(l): l for l in labels}
    c = _canon(s)
    if c in canon:
        return canon[c]
    obj = first_json_object(s)
    if obj is not None:
        for key in ("label", "intent", "class", "category"):
            if isinstance(obj.get(key), str):
                return parse_label(obj[key], labels) if obj[key].strip() != s else None
    m = re.match(r"^\s*(?:label|answer|intent|class)\s*[:=]\s*(.+)$", s, re.I | re.S)
    if m:
        return parse_label(m.group(1).strip().splitlines()[0], labels)
    hits = {l for l in labels if re.search(rf"(?<![\w]){re.escape(l)}(?![\w])", s, re.I)}
    # prefer the longest label when one contains another ("balance" vs "account_balance")
    hits = {h for h in hits if not any(h != o and h.lower() in o.lower() for o in hits)}
    return hits.pop() if len(hits) == 1 else None


def _canon(s: str) -> str:
    s = s.strip().strip("`\"'").strip().rstrip(".!").strip().lower()
    return re.sub(r"[\s\-]+", "_", s)


# -- extract ---------------------------------------------------------------------------------
def check_extract_schema(schema: Any) -> list[str]:
    """The field names of an extract schema, or ValueError saying what is wrong and where.

    The schema must be a valid JSON Schema (checked against its metaschema), of `type: object`,
    with at least one property, every property string-valued (`{"type": "string"}`, other
    keywords such as `description` or `enum` allowed), and `required` naming only properties.
    """
    import jsonschema

    if not isinstance(schema, dict):
        raise ValueError(f"json_schema must be a mapping (a JSON Schema object), got {type(schema).__name__}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = ".".join(str(p) for p in e.absolute_path)
        raise ValueError(f"json_schema{'.' + where if where else ''}: not a valid JSON Schema: "
                         f"{e.message}") from None
    if schema.get("type") != "object":
        raise ValueError(f"json_schema.type: an extract schema must be 'object', got {schema.get('type')!r}")
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        raise ValueError("json_schema.properties: an extract schema needs at least one field")
    for name, sub in props.items():
        if not isinstance(sub, dict) or sub.get("type") != "string":
            got = sub.get("type") if isinstance(sub, dict) else sub
            raise ValueError(f"json_schema.properties.{name}: extract fields must be string-valued "
                             f"({{\"type\": \"string\"}}), got type {got!r}")
    missing = [r for r in schema.get("required", []) if r not in props]
    if missing:
        raise ValueError(f"json_schema.required: {missing} are not properties")
    return list(props)


def schema_fields(schema: dict[str, Any]) -> list[str]:
    return list(schema["properties"])


def canonical_json(obj: dict[str, Any]) -> str:
    """Sorted keys, no whitespace, Unicode kept: equal objects give equal text."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def clean_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop null and empty-string values (they mean "not mentioned"); strip string values."""
    out = {}
    for k, v in obj.items():
        if isinstance(v, str):
            v = v.strip()
            if not v:
                continue
        elif v is None:
            continue
        out[k] = v
    return out


def validate_fields(obj: Any, schema: dict[str, Any]) -> str | None:
    """None when `obj` satisfies `schema`, else the first error as `field: message`."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    err = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if err is None:
        return None
    where = ".".join(str(p) for p in err.absolute_path) or "(object)"
    return f"{where}: {err.message}"


def first_json_object(s: str) -> dict[str, Any] | None:
    """The first JSON object in `s` (bare, in a code fence, or after some prose)."""
    decoder = json.JSONDecoder()
    start = s.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(s, start)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return obj
        start = s.find("{", start + 1)
    return None


def parse_answer(raw: str | None, schema: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """A teacher's text -> (fields, reason, detail).

    fields is the cleaned, schema-valid object, or None with reason `invalid_json` (no JSON object
    in the text) or `schema_invalid` (an object that breaks the schema), and a detail message.
    """
    if raw is None:
        return None, "invalid_json", "no answer text"
    obj = first_json_object(raw)
    if obj is None:
        return None, "invalid_json", f"no JSON object in the answer: {raw[:120]!r}"
    obj = clean_fields(obj)
    err = validate_fields(obj, schema)
    if err is not None:
        return None, "schema_invalid", err
    return obj, None, None


# -- generate --------------------------------------------------------------------------------
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(s: str | None) -> str:
    """Lower case, punctuation to spaces, whitespace collapsed (SQuAD-style, articles kept)."""
    if s is None:
        return ""
    return " ".join(_PUNCT.sub(" ", s.lower()).split())


def split_rationale(output: str) -> tuple[str, str] | None:
    """A teacher output "…reasoning… Answer: X" -> (reasoning, X); None without an answer line.

    The last line starting with `Answer:` (case-insensitive) is the answer; everything before it
    is the rationale (a leading "Rationale:" is dropped).
    """
    lines = output.strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        s = lines[i].strip()
        if s.lower().startswith("answer:"):
            answer = s[len("answer:"):].strip()
            rationale = "\n".join(lines[:i]).strip()
            if rationale.lower().startswith("rationale:"):
                rationale = rationale[len("rationale:"):].strip()
            return (rationale, answer) if answer and rationale else None
    return None


RATIONALE_INSTRUCTION = (
    "\n\nFirst explain your reasoning in one or two sentences on a line starting with "
    '"Rationale:", then give the final answer alone on the last line, starting with "Answer:".'
)


_INLINE_ANSWER = re.compile(r"\banswer\s*:", re.I)


def parse_rationale_answer(reply: str) -> tuple[str, str] | None:
    """"Rationale: r\\nAnswer: a" -> (r, a); also "Rationale: r Answer: a" on one line. None when
    there is no non-empty answer after a non-empty rationale."""
    split = split_rationale(reply)
    if split is not None:
        return split
    hits = list(_INLINE_ANSWER.finditer(reply))
    if not hits:
        return None
    m = hits[-1]
    rationale, answer = reply[:m.start()].strip(), reply[m.end():].strip()
    if rationale.lower().startswith("rationale:"):
        rationale = rationale[len("rationale:"):].strip()
    return (rationale, answer) if rationale and answer else None


def slice_tokens(tokens: Sequence[TokenLP], reply: str, start: int, end: int) -> list[list[Any]] | None:
    """The tokens whose concatenation is exactly reply[start:end], or None when the span does not
    begin and end on token boundaries (or the tokens do not spell `reply`)."""
    if "".join(t[0] for t in tokens) != reply:
        return None
    out, pos = [], 0
    for t in tokens:
        t_start, pos = pos, pos + len(t[0])
        if t_start >= start and pos <= end:
            out.append([t[0], float(t[1]), [[a, float(b)] for a, b in (t[2] or [])]])
        elif t_start < end and pos > start:  # a token straddles the span's edge
            return None
    return out if "".join(t[0] for t in out) == reply[start:end] and out else None


def output_span(reply: str, output: str) -> tuple[int, int] | None:
    """Where `output` (stripped, or the parsed answer) sits in `reply`: its last occurrence."""
    i = reply.rfind(output)
    return (i, i + len(output)) if i >= 0 and output else None


def mean_prob(token_logprobs: Sequence[TokenLP] | None) -> float | None:
    """exp(mean logprob) of the tokens: the geometric-mean token probability (pure)."""
    if not token_logprobs:
        return None
    return math.exp(sum(float(t[1]) for t in token_logprobs) / len(token_logprobs))


def read_reply(reply: str, tokens: Sequence[TokenLP] | None, rationale: bool) -> dict[str, Any]:
    """One teacher reply -> {output, rationale, token_logprobs, confidence, parse_reason,
    parse_error} (see the module doc). Pure."""
    out: dict[str, Any] = {"output": None, "rationale": None, "token_logprobs": None,
                           "confidence": None, "parse_reason": None, "parse_error": None}
    if not reply or not reply.strip():
        out.update(parse_reason="empty_output", parse_error="the teacher's answer is empty")
        return out
    if rationale:
        split = parse_rationale_answer(reply)
        if split is None:
            short = " ".join(reply.split())[:200]
            out.update(parse_reason="unparseable",
                       parse_error=f'no "Rationale: ... Answer: ..." in the answer: {short}')
            return out
        out["rationale"], output = split
    else:
        output = reply.strip()
    out["output"] = output
    span = output_span(reply, output)
    if tokens and span is not None:
        out["token_logprobs"] = slice_tokens(tokens, reply, *span)
    if tokens and len(out["token_logprobs"] or []) < len(tokens):
        # the whole reply's logprobs (a rationale's too) stay in the cached answer, not in records
        out["reply_token_logprobs"] = [[t[0], float(t[1]), [[a, float(b)] for a, b in (t[2] or [])]]
                                       for t in tokens]
    out["confidence"] = mean_prob(out["token_logprobs"])
    return out


def generate_answer(replies: list[str], logprobs: Sequence[Sequence[TokenLP] | None] | None,
                    rationale: bool, confidences: Sequence[float | None] | None = None) -> Answer:
    """The Answer for one input from its n replies (self-consistency for n > 1). `label` is the
    output (None when no reply had one); the record fields go in `extra` (see `record_fields`).
    `confidences` overrides the logprob-derived confidence per reply (a local teacher gives its
    chosen tokens' logprobs only)."""
    logprobs = logprobs or [None] * len(replies)
    read = [read_reply(r, lp, rationale) for r, lp in zip(replies, logprobs)]
    if confidences is not None:
        for r, c in zip(read, confidences):
            if r["output"] is not None:
                r["confidence"] = c
    keys = [normalize_answer(r["output"]) if r["output"] is not None else None for r in read]
    samples = {"samples_raw": replies} if len(replies) > 1 else {}
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        first = read[0]
        if any(r["parse_reason"] == "unparseable" for r in read):
            first = next(r for r in read if r["parse_reason"] == "unparseable")
        return Answer(label=None, raw=replies[0], votes={} if len(replies) > 1 else None,
                      extra={**first, **samples})
    win = max(votes, key=lambda k: (votes[k], -keys.index(k)))
    j = keys.index(win)
    return Answer(label=read[j]["output"], raw=replies[j],
                  votes=dict(votes) if len(replies) > 1 else None, extra={**read[j], **samples})
