"""Data of `kind: generate`: a teacher's free-text answers -> records -> the filter stage.

A generate answer is text, not a label. What a teacher's choices become (pure functions here,
used by both generate teachers, `generate_teacher.py` and `teachers/hf_causal.py`):

- `output`: the answer text, stripped. Under `train.objective: rationale` the teacher is asked
  (`RATIONALE_INSTRUCTION`, appended to the rendered prompt) for

      Rationale: <one or two sentences of reasoning>
      Answer: <the answer>

  and the reply is parsed with `causal_lm.split_rationale` (the last line starting with
  "Answer:"); an "Answer:" inside the rationale's line ("Rationale: ... Answer: X") is accepted
  too. `rationale` holds the reasoning. A reply with no answer part is still an answer (cached):
  `output` None, `parse_reason` "unparseable"; an empty reply gets "empty_output".
- `token_logprobs`: when the endpoint gave logprobs, [token, logprob, [[alt, logprob], ...]] for
  exactly the tokens that spell `output` (the reply's tokens cut to the output's characters;
  None when no run of whole tokens spells it). `train.objective: logit_kd` turns them into
  top-k + tail targets (`aligned_topk`). When they are not the whole reply (a rationale, stray
  whitespace), the cached answer also keeps the whole reply's as `reply_token_logprobs`.
- `confidence`: exp(mean token logprob) of those tokens, the geometric-mean token probability
  (None without logprobs); `filters.min_confidence` applies to it.
- `teacher.samples` n > 1: self-consistency. Each sample's output is normalised
  (`generate_eval.normalize_answer`: case, punctuation, spaces); `votes` counts samples per
  normalised output, the most voted wins (ties: the earliest sample) and its first sample gives
  `output`, `raw`, `rationale` and `token_logprobs`. `filters.min_votes` keeps k of n.

The filter stage (`filter_generate`) applies `filters` to these records; every dropped record
keeps its reason (`REASONS`). Gold disagreement compares normalised outputs (exact match): for
long free text set `filters.drop_gold_disagreement: false`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Sequence

from .data.filters import apply_filters, input_checks, save_filter_report
from .data.inputs import normalise, read_jsonl, write_jsonl
from .generate_eval import normalize_answer
from .manifest import read_manifest
from .paths import DROPPED, KEPT, RECORDS, SOFT, RunPaths
from .spec import FilterSpec, TaskSpec
from .teachers.base import Answer

RATIONALE_INSTRUCTION = (
    "\n\nFirst explain your reasoning in one or two sentences on a line starting with "
    '"Rationale:", then give the final answer alone on the last line, starting with "Answer:".'
)
REASONS = ("teacher_error", "empty_output", "unparseable", "too_short", "too_long", "duplicate",
           "low_votes", "low_confidence", "gold_disagreement")
RECORD_FIELDS = ("output", "rationale", "token_logprobs", "parse_reason", "parse_error")
"""What a generate record carries beside the classify record's fields (labels/records.jsonl)."""

# (token text, logprob, [(alternative token text, logprob), ...]) as in teachers/openai_compat.py
TokenLP = Sequence[Any]
_INLINE_ANSWER = re.compile(r"\banswer\s*:", re.I)


def generate_prompt(spec: TaskSpec, text: str, labels: list[str]) -> str:
    """The prompt a generate teacher gets: the spec's, plus the rationale request under the
    rationale objective (so the cache keys of the two differ)."""
    prompt = spec.render_prompt(text, labels)
    return prompt + RATIONALE_INSTRUCTION if spec.train.objective == "rationale" else prompt


def parse_rationale_answer(reply: str) -> tuple[str, str] | None:
    """"Rationale: r\\nAnswer: a" -> (r, a); also "Rationale: r Answer: a" on one line. None when
    there is no non-empty answer after a non-empty rationale."""
    from .students.causal_lm import split_rationale

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


def record_fields(a: Answer) -> dict[str, Any]:
    """What label.py adds to a generate record from its Answer (confidence replaces the classify
    one, which comes from a label distribution)."""
    fields = {k: a.extra.get(k) for k in RECORD_FIELDS}
    fields["confidence"] = a.extra.get("confidence")
    return fields


# -- logit_kd targets ------------------------------------------------------------------------------
def aligned_topk(tokenizer, completion: str, token_logprobs: Sequence[TokenLP] | None):
    """The API teacher's top-k for `completion` in the student's ids, or None unless the
    teacher's generated tokens are exactly the student's tokenization of `completion` (else the
    top-k would sit at the wrong positions). See `causal_lm.topk_from_token_logprobs`."""
    from .students.causal_lm import topk_from_token_logprobs

    if not token_logprobs:
        return None
    vocab = tokenizer.get_vocab()
    gen: list[int] = []
    for t in token_logprobs:
        tid = vocab.get(t[0])
        if tid is None:
            enc = tokenizer(t[0], add_special_tokens=False)["input_ids"]
            if len(enc) != 1:
                return None
            tid = enc[0]
        gen.append(tid)
    if gen != tokenizer(completion, add_special_tokens=False)["input_ids"]:
        return None
    return topk_from_token_logprobs(tokenizer, token_logprobs)


# -- the filter ------------------------------------------------------------------------------------
def check_generate_record(rec: dict[str, Any], f: FilterSpec, seen: set[str]) -> str | None:
    """The reason a generate record is dropped under `f`, or None to keep it (adds to `seen`)."""
    if rec.get("error"):
        return "teacher_error"
    if rec.get("output") is None:
        return rec.get("parse_reason") or "empty_output"
    if not rec["output"].strip():
        return "empty_output"
    why = input_checks(rec, normalize_answer(rec["output"]), f, seen)
    if why:
        return why
    key = normalise(rec["text"])
    conf = rec.get("confidence")
    if f.min_confidence > 0 and conf is not None and conf < f.min_confidence:
        return "low_confidence"
    if f.drop_gold_disagreement and rec.get("gold") is not None and \
            normalize_answer(rec["gold"]) != normalize_answer(rec["output"]):
        return "gold_disagreement"
    seen.add(key)
    return None


def filter_generate(spec: TaskSpec, run: RunPaths) -> dict[str, Any]:
    """Stage `filter` for kind generate: writes what the classify filter writes."""
    import numpy as np

    src = run.labels / RECORDS
    if not src.exists():
        raise FileNotFoundError(f"{src}: no labelled records; run `potstill label` first")
    label_manifest = read_manifest(run.labels)
    records = read_jsonl(src)
    kept, dropped = apply_filters(records, spec.filters, check_generate_record)
    write_jsonl(run.filtered / KEPT, [{**records[i], "row": i} for i in kept])
    write_jsonl(run.filtered / DROPPED, [{**records[i], "row": i, "reason": r} for i, r in dropped])
    soft = np.load(run.labels / SOFT)
    np.save(run.filtered / SOFT, soft[kept])  # NaN rows: the file layout matches classify
    counts = Counter(r for _, r in dropped)
    report = {
        "inputs": len(records),
        "labelled": sum(r.get("output") is not None for r in records),
        "kept": len(kept),
        "dropped": len(dropped),
        "dropped_by_reason": {r: counts.get(r, 0) for r in REASONS},
        "kept_with_token_logprobs": sum(bool(records[i].get("token_logprobs")) for i in kept),
        "kept_with_rationale": sum(bool(records[i].get("rationale")) for i in kept),
        "distinct_outputs_kept": len({normalize_answer(records[i]["output"]) for i in kept}),
        "policy": spec.filters.model_dump(),
    }
    return save_filter_report(spec, run, report, label_manifest)
