"""`kind: generate`: a free-text answer per input (also a JSON object written as text).

A generate answer is text, not a label: what a teacher's reply becomes (`output`, `rationale`,
`token_logprobs`, `confidence`, votes) is `answers.read_reply` / `answers.generate_answer`. The
filter's reasons: `teacher_error`, `empty_output`, `unparseable` (no answer line), `too_short`,
`too_long`, `duplicate`, `low_votes`, `low_confidence`, `gold_disagreement` (normalised exact
match: set `filters.drop_gold_disagreement: false` for long free text). Predictions are texts,
scored by exact match and token F1 after `answers.normalize_answer`, and agreement with the teacher.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Sequence

from ..answers import (
    RATIONALE_INSTRUCTION,
    Answer,
    canonical_json,
    normalize_answer,
    parse_answer,
    schema_fields,
)
from ..data.inputs import Splits, normalise
from ..spec import FilterSpec, TaskSpec
from .align import SNAP_SIMILARITY, SPAN_NOTE
from .base import input_checks
from .extract import exact_match as objects_match
from .extract import model_metrics, serve_object, spans_of_input

REASONS = ("teacher_error", "empty_output", "unparseable", "too_short", "too_long", "duplicate",
           "low_votes", "low_confidence", "gold_disagreement")
RECORD_FIELDS = ("output", "rationale", "token_logprobs", "parse_reason", "parse_error")
"""What a generate record carries beside the classify record's fields (labels/records.jsonl)."""


def generate_prompt(spec: TaskSpec, text: str, labels: list[str]) -> str:
    """The prompt a generate teacher gets: the spec's, plus the rationale request under the
    rationale objective (so the cache keys of the two differ)."""
    prompt = spec.render_prompt(text, labels)
    return prompt + RATIONALE_INSTRUCTION if spec.train.objective == "rationale" else prompt


def record_fields(a: Answer) -> dict[str, Any]:
    """What label.py adds to a generate record from its Answer (confidence replaces the classify
    one, which comes from a label distribution)."""
    fields = {k: a.extra.get(k) for k in RECORD_FIELDS}
    fields["confidence"] = a.extra.get("confidence")
    return fields


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


def exact_match(gold: Sequence[str | None], pred: Sequence[str | None]) -> float:
    """Share of answers equal to gold after `normalize_answer`."""
    return sum(normalize_answer(g) == normalize_answer(p) for g, p in zip(gold, pred)) / max(len(gold), 1)


def token_f1(gold: str | None, pred: str | None) -> float:
    """Bag-of-tokens F1 between two answers after `normalize_answer` (1.0 when both are empty)."""
    g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not g or not p:
        return float(g == p)
    common = sum((Counter(g) & Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def mean_token_f1(gold: Sequence[str | None], pred: Sequence[str | None]) -> float:
    return sum(token_f1(g, p) for g, p in zip(gold, pred)) / max(len(gold), 1)


def text_metrics(gold: Sequence[str | None], pred: Sequence[str | None],
                 teacher: Sequence[str | None] | None = None) -> dict[str, float]:
    m = {"exact_match": round(exact_match(gold, pred), 4), "token_f1": round(mean_token_f1(gold, pred), 4)}
    if teacher is not None:
        m["agreement_with_teacher"] = round(exact_match(teacher, pred), 4)
        m["token_f1_with_teacher"] = round(mean_token_f1(teacher, pred), 4)
    return m


SCHEMA_DECODING_NOTE = ("The local causal models wrote their answers held to the schema (json_decoding: schema: "
                        "one object, the schema's fields only, each at most once, closed within the token budget).")
"""The line report.md carries under json_decoding: schema."""


def render_generate_markdown(report: dict[str, Any]) -> str:
    rows = ["| model | exact match | token F1 | agreement | general ppl (base → student) | params |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, m in report["models"].items():
        ppl = (f"{m['general_ppl_base']:.2f} → {m['general_ppl_student']:.2f}"
               if m.get("general_ppl_base") and m.get("general_ppl_student") else "—")
        params = f"{m['params'] / 1e6:.1f}M" if m.get("params") else "—"
        rows.append(f"| {name} | {m['exact_match']:.4f} | {m['token_f1']:.4f} | "
                    f"{m.get('agreement_with_teacher', '—')} | {ppl} | {params} |")
    if report.get("json_fields"):  # answers that are JSON objects: scored like extract
        rows += ["", "| model | layers | field F1 | valid JSON | object exact match | field F1 vs teacher | "
                 "p50 ms (batch 1) | tokens/s (batch 1) | answers/s (batched) |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, m in report["models"].items():
            rows.append(f"| {name} | {m.get('layers', '—')} | {m.get('field_f1', '—')} | {m.get('json_validity', '—')} | "
                        f"{m.get('exact_match', '—')} | {m.get('field_f1_vs_teacher', '—')} | "
                        f"{m.get('latency_ms_p50', '—')} | {m.get('gen_tokens_per_s_b1', '—')} | "
                        f"{m.get('answers_per_s', '—')} |")
        rows += ["", *(f"- {k}: {v}" for k, v in report.get("summary", {}).items())]
        if report.get("span_values"):
            rows += ["", SPAN_NOTE]
        if report.get("json_decoding") == "schema":
            rows += ["", SCHEMA_DECODING_NOTE]
    return "\n".join([f"# potstill report: {report['task']} ({report['kind']})", "",
                      f"Held-out test: {report['test_rows']} rows.", "", *rows, ""])


# -- answers that are JSON objects (a json_schema in the spec): scored like the extract task ----------
def json_objects(answers: Sequence[str | None], schema: dict[str, Any]) -> list[dict[str, Any] | None]:
    """Each answer's first JSON object, cleaned and checked against the schema (None when there is
    none or it breaks the schema), as the extract task parses a teacher's reply."""
    return [parse_answer(a, schema)[0] for a in answers]


def spans_only(answer: str | None, source: str, schema: dict[str, Any],
               min_similarity: float = SNAP_SIMILARITY) -> str | None:
    """A generated answer whose object's values are made spans of `source`, the input it answers
    (`extract.spans_of_input`), as canonical JSON; the answer as it was when it holds no
    schema-valid object (`span_values`)."""
    obj = parse_answer(answer, schema)[0]
    return answer if obj is None else canonical_json(spans_of_input(obj, source, schema, min_similarity))


def json_metrics(gold: Sequence[str | None], answers: Sequence[str | None], schema: dict[str, Any],
                 teacher: Sequence[str | None] | None = None) -> dict[str, Any]:
    """field_f1 / field_precision / field_recall (micro over (field, value) pairs), json_validity,
    exact_match of the objects, per_field; agreement and field F1 against the teacher's objects
    when given. Gold answers are JSON object strings."""
    gold_objs = []
    for i, g in enumerate(gold):
        try:
            obj = json.loads(g) if g else {}
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise ValueError(f"test row {i + 1}: the gold answer {str(g)[:80]!r} is not a JSON object, but the "
                             "spec has a json_schema (generate answers are scored as JSON objects)")
        gold_objs.append(obj)
    pred = json_objects(answers, schema)
    t_objs = json_objects(teacher, schema) if teacher is not None else None
    return model_metrics(gold_objs, pred, schema_fields(schema), t_objs)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


class Generate:
    kind: str = "generate"
    metric: str = "exact_match"
    quality: tuple[tuple[str, str], ...] = (("exact_match", "exact match"), ("token_f1", "token F1"))
    """(report.json key, column title) of the quality metrics, headline first."""
    reasons: tuple[str, ...] = REASONS
    local_student: str | None = None  # a text-writing teacher cannot be fitted here: openai, or hf (a causal LM)

    def label_set(self, spec: TaskSpec, splits: Splits) -> list[str]:
        # free text has no label set: the gold answers (test ones included) must never reach a
        # prompt through {labels}; only labels listed in the spec do
        return list(spec.labels or [])

    def input_fingerprint(self, spec: TaskSpec) -> list[Any]:
        return []

    record_fields = staticmethod(record_fields)

    def prepare_record(self, rec: dict[str, Any], spec: TaskSpec) -> dict[str, Any]:
        return rec

    check_record = staticmethod(check_generate_record)

    def labelled(self, rec: dict[str, Any]) -> bool:
        return rec.get("output") is not None

    def filter_summary(self, records: list[dict[str, Any]], kept: list[int]) -> dict[str, Any]:
        return {"kept_with_token_logprobs": sum(bool(records[i].get("token_logprobs")) for i in kept),
                "kept_with_rationale": sum(bool(records[i].get("rationale")) for i in kept),
                "distinct_outputs_kept": len({normalize_answer(records[i]["output"]) for i in kept})}

    def gold_answer(self, gold: str | None) -> Any:
        return gold

    def teacher_prediction(self, answer: Answer) -> Any:
        return answer.label  # the parsed output (the answer part of a rationale reply)

    def from_text(self, text: str, spec: TaskSpec, labels: Sequence[str]) -> Any:
        return text

    def within_input(self, pred: Any, source: str, spec: TaskSpec) -> Any:
        if pred is None or not spec.span_values:
            return pred
        assert spec.json_schema is not None
        return spans_only(pred, source, spec.json_schema)

    def to_json(self, pred: Any) -> Any:
        return pred

    def metric_for(self, spec: TaskSpec) -> str:
        return "field_f1" if spec.json_schema is not None else self.metric

    def score(self, gold: Sequence[Any], pred: Sequence[Any], labels: Sequence[str],
              teacher: Sequence[Any] | None, spec: TaskSpec | None = None) -> dict[str, Any]:
        m = text_metrics(gold, pred, teacher)
        if spec is not None and spec.json_schema is not None:  # field F1, valid JSON, object match
            m.update(json_metrics(gold, pred, spec.json_schema, teacher))
        return m

    # -- serving ---------------------------------------------------------------------------------
    has_label_set: bool = False
    answer_is_text: bool = True
    """The serving teacher's whole reply is the answer (serve/causal.py `TextTeacher`)."""

    def serve_answer(self, text: str, labels: Sequence[str], schema: dict[str, Any] | None
                     ) -> tuple[str | None, str | None, dict[str, Any]]:
        """The text; with a json_schema, the canonical JSON of the object it holds (no object, or
        one that breaks the schema, is an error: the router escalates it as invalid_output)."""
        s = text.strip()
        if not s:
            return None, "empty answer", {}
        return (s, None, {}) if schema is None else serve_object(text, schema)

    def same_answer(self, answer: str | None, reference: str | None) -> bool:
        """Two JSON objects: the same (field, value) pairs, values compared as the evaluation
        does; other text: equal after case folding and collapsing whitespace."""
        if answer is None or reference is None:
            return False
        a, r = _json_object(answer), _json_object(reference)
        if a is not None and r is not None:
            return objects_match([r], [a]) == 1.0
        return " ".join(answer.split()).casefold() == " ".join(reference.split()).casefold()

    def feedback_answer(self, answer: str, labels: Sequence[str], schema: dict[str, Any] | None) -> str:
        return answer

    def report_header(self, labels: Sequence[str], spec: TaskSpec | None = None) -> dict[str, Any]:
        if spec is None or spec.json_schema is None:
            return {}
        return {"json_fields": True, **({"span_values": True} if spec.span_values else {}),
                **({"json_decoding": "schema"} if spec.json_keys() else {})}

    def table(self, report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        head = ["model", "exact match", "token F1", "agree w/ teacher", "general ppl (base → student)",
                "params", "answers/s"]
        rows = []
        for name, m in report["models"].items():
            ppl = (f"{m['general_ppl_base']:.2f} → {m['general_ppl_student']:.2f}"
                   if m.get("general_ppl_base") and m.get("general_ppl_student") else "—")
            rows.append([name, f"{m['exact_match']:.4f}", f"{m['token_f1']:.4f}",
                         str(m.get("agreement_with_teacher", "—")), ppl,
                         f"{m['params'] / 1e6:.1f}M" if m.get("params") else "—",
                         str(m.get("answers_per_s") or "—")])
        return head, rows

    def render_markdown(self, report: dict[str, Any]) -> str:
        return render_generate_markdown(report)


TASK = Generate()
