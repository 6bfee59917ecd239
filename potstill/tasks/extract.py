"""`kind: extract`: one JSON object of string fields per input, from an object schema.

Gold fields travel as canonical JSON text in `Example.gold` (answers.canonical_json), so the
shared input code (dedup, splits, hashes) is unchanged. A teacher's answer is the canonical JSON of
a schema-valid object (answers.parse_answer). The filter aligns each answer's values to the input
text (`tasks/align.py`); kept records carry `fields` (the aligned values) and `spans` ([field,
start, end]) for the tagger. Predictions are objects (None: no valid object), scored field by field:

- `json_validity`: share of inputs answered with a schema-valid object;
- `exact_match`: share whose whole object equals the gold one (values compared normalised);
- field-level precision / recall / F1, micro over all (field, value) pairs and per field: a
  predicted pair is right when the gold object has the same field with the same normalised value
  (Unicode NFKC, case-folded, whitespace collapsed); an invalid answer predicts no pairs;
- agreement with the teacher: exact match against the teacher's objects, and field F1 with the
  teacher's objects as the reference.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from typing import Any, Sequence

from ..answers import Answer, canonical_json, clean_fields, parse_answer, schema_fields, validate_fields
from ..data.inputs import InputError, Splits, normalise
from ..spec import FilterSpec, TaskSpec
from .align import SNAP_SIMILARITY, SPAN_NOTE, align_fields, snap_fields
from .base import input_checks, summary_lines

Obj = dict[str, Any]

REASONS = ("teacher_error", "invalid_json", "schema_invalid", "too_short", "too_long", "duplicate",
           "low_votes", "no_value_in_text", "gold_disagreement")
VALUE_REASONS = ("not_in_text", "overlap", "empty", "not_a_string")


def gold_fields(gold: str | None) -> dict[str, Any] | None:
    return None if gold is None else json.loads(gold)


def check_gold(spec: TaskSpec, splits: Splits) -> list[str]:
    """Every gold object must satisfy the schema; returns the schema's fields (the task's
    "labels"). Raises InputError naming the row (`<file stem>:<line>` or its id) and the field."""
    schema = spec.json_schema
    assert schema is not None
    for name in ("train", "validation", "test"):
        for ex in getattr(splits, name):
            if ex.gold is None:
                continue
            try:
                obj = json.loads(ex.gold)
            except json.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                raise InputError(f"{ex.id}: field {spec.data.label_field!r} ({name} split) must be a JSON "
                                 f"object of fields for kind 'extract', got {ex.gold!r}")
            err = validate_fields(clean_fields(obj), schema)
            if err is not None:
                raise InputError(f"{ex.id}: gold fields ({name} split) break json_schema: {err}")
    return schema_fields(schema)


def prepare_record(rec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A labelled record plus what the checks need: `fields` (aligned values), `spans`,
    `value_drops` ([[field, reason]]) and, for an unusable answer, `parse_reason`."""
    out = dict(rec)
    fields = None
    if rec.get("label") is not None:
        fields = json.loads(rec["label"])
    elif not rec.get("error"):
        out["parse_reason"] = parse_answer(rec.get("raw"), schema)[1] or "invalid_json"
    if fields is not None:
        spans, drops = align_fields(rec["text"], fields)
        out["teacher_fields"] = fields
        out["fields"] = {f: rec["text"][s:e] for f, s, e in spans}
        out["spans"] = [list(x) for x in spans]
        out["value_drops"] = [list(x) for x in drops]
    return out


def check_extract_record(rec: dict[str, Any], f: FilterSpec, seen: set[str]) -> str | None:
    """The reason a prepared extract record is dropped, or None to keep it (adds to `seen`).

    `min_confidence` does not apply (extract answers carry no distribution). A record keeps the
    values that aligned; it is dropped as `no_value_in_text` only when the teacher gave values
    and none of them is in the text. Gold disagreement compares whole objects (canonical JSON)."""
    if rec.get("error"):
        return "teacher_error"
    if rec.get("label") is None:
        return rec.get("parse_reason") or "invalid_json"
    why = input_checks(rec, rec["label"], f, seen)
    if why:
        return why
    key = normalise(rec["text"])
    if rec.get("teacher_fields") and not rec.get("spans"):
        return "no_value_in_text"
    if f.drop_gold_disagreement and rec.get("gold") is not None and \
            canonical_json(clean_fields(json.loads(rec["gold"]))) != rec["label"]:
        return "gold_disagreement"
    seen.add(key)
    return None


def norm_value(v: Any) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(v)).casefold().split())


def field_pairs(obj: Obj | None) -> set[tuple[str, str]]:
    """An object's (field, normalised value) pairs: what the field scores count (None: none)."""
    return {(k, norm_value(v)) for k, v in (obj or {}).items()}


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4)}


def field_scores(gold: Sequence[Obj], pred: Sequence[Obj | None], fields: Sequence[str]) -> dict[str, Any]:
    """Micro precision/recall/F1 over (field, value) pairs, and the same per field (with support,
    the number of gold values). Fields are those of the schema, in its order."""
    counts = {f: [0, 0, 0] for f in fields}  # tp, fp, fn
    for g, p in zip(gold, pred):
        gp, pp = field_pairs(g), field_pairs(p)
        for f, _ in gp & pp:
            counts.setdefault(f, [0, 0, 0])[0] += 1
        for f, _ in pp - gp:
            counts.setdefault(f, [0, 0, 0])[1] += 1
        for f, _ in gp - pp:
            counts.setdefault(f, [0, 0, 0])[2] += 1
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    per = {f: {**_prf(*c), "support": c[0] + c[2]} for f, c in counts.items()}
    return {**_prf(tp, fp, fn), "per_field": per}


def exact_match(gold: Sequence[Obj | None], pred: Sequence[Obj | None]) -> float:
    """Share of rows whose predicted object equals the reference (None never matches)."""
    hits = sum(g is not None and p is not None and field_pairs(g) == field_pairs(p) for g, p in zip(gold, pred))
    return hits / max(len(gold), 1)


def json_validity(pred: Sequence[Obj | None]) -> float:
    return sum(p is not None for p in pred) / max(len(pred), 1)


def model_metrics(gold: Sequence[Obj], pred: Sequence[Obj | None], fields: Sequence[str],
                  teacher: Sequence[Obj | None] | None = None) -> dict[str, Any]:
    fs = field_scores(gold, pred, fields)
    m = {"json_validity": round(json_validity(pred), 4), "exact_match": round(exact_match(gold, pred), 4),
         "field_precision": fs["precision"], "field_recall": fs["recall"], "field_f1": fs["f1"],
         "per_field": fs["per_field"]}
    if teacher is not None:
        m["agreement_with_teacher"] = round(exact_match(teacher, pred), 4)
        ref = [t for t in teacher if t is not None]
        got = [p for t, p in zip(teacher, pred) if t is not None]
        m["field_f1_vs_teacher"] = field_scores(ref, got, fields)["f1"]
    return m


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (report.md and the CLI print the same)."""
    head = ["model", "field F1", "precision", "recall", "exact match", "valid JSON", "agree w/ teacher",
            "params", "p50 ms", "p95 ms", "inputs/s"]
    rows = []
    for name, m in report["models"].items():
        rows.append([name, f"{m['field_f1']:.4f}", f"{m['field_precision']:.4f}", f"{m['field_recall']:.4f}",
                     f"{m['exact_match']:.4f}", f"{m['json_validity']:.4f}",
                     str(m.get("agreement_with_teacher", "—")),
                     f"{m['params'] / 1e6:.1f}M" if m.get("params") else "—",
                     str(m.get("latency_ms_p50") or "—"), str(m.get("latency_ms_p95") or "—"),
                     str(m.get("throughput_per_s") or "—")])
    return head, rows


def render_markdown(report: dict[str, Any]) -> str:
    head, rows = table_rows(report)
    lines = [f"# potstill report: {report['task']} (extract)", "",
             f"Held-out test: {report['test_rows']} rows, {report['fields']} fields.", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    d = report["data"]
    lines.append("")
    if report.get("span_values"):
        lines += [SPAN_NOTE, ""]
    lines += summary_lines(report, "field_f1", "field F1")
    lines += ["## Per field (F1, support)", "", "| field | " + " | ".join(report["models"]) + " | support |",
              "|---|" + "---:|" * (len(report["models"]) + 1)]
    first = next(iter(report["models"].values()))
    for f, v in first["per_field"].items():
        cells = [f"{m['per_field'].get(f, {}).get('f1', 0):.4f}" for m in report["models"].values()]
        lines.append(f"| {f} | " + " | ".join(cells) + f" | {v['support']} |")
    lines += ["", "## Data", "",
              f"inputs {d['inputs']} → labelled {d['labeled']} → kept {d['kept']} (dropped {d['dropped']})", ""]
    for key in ("dropped_by_reason", "values_dropped_by_reason"):
        if d.get(key):
            lines += [f"- {key.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in d[key].items() if v)]
    return "\n".join(lines) + "\n"


def spans_of_input(obj: Obj, source: str, schema: dict[str, Any],
                   min_similarity: float = SNAP_SIMILARITY) -> Obj:
    """`obj` with its string values made spans of `source` (`align.snap_fields`: a near-copy takes
    the input's own words, a value like nothing in it is dropped); `obj` as it was when a dropped
    value would leave it breaking the schema (`span_values`)."""
    snapped = snap_fields(source, obj, min_similarity)
    return obj if validate_fields(snapped, schema) is not None else snapped


def serve_object(text: str, schema: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    """A generated text -> (canonical JSON of the schema-valid object in it, error, extra); no
    object, or one that breaks the schema, is the error (served as invalid_output)."""
    fields, reason, detail = parse_answer(text, schema)
    if fields is None:
        return None, f"{reason}: {detail}", {"text": text}
    return canonical_json(fields), None, {"text": text, "fields": fields}


class Extract:
    kind: str = "extract"
    metric: str = "field_f1"
    quality: tuple[tuple[str, str], ...] = (("field_f1", "field F1"), ("exact_match", "exact match"), ("json_validity", "valid JSON"))
    """(report.json key, column title) of the quality metrics, headline first."""
    reasons: tuple[str, ...] = REASONS
    local_student: str | None = "tagger"

    def label_set(self, spec: TaskSpec, splits: Splits) -> list[str]:
        return check_gold(spec, splits)

    def input_fingerprint(self, spec: TaskSpec) -> list[Any]:
        return [spec.json_schema]

    def record_fields(self, answer: Answer) -> dict[str, Any]:
        return {}

    def prepare_record(self, rec: dict[str, Any], spec: TaskSpec) -> dict[str, Any]:
        assert spec.json_schema is not None
        return prepare_record(rec, spec.json_schema)

    check_record = staticmethod(check_extract_record)

    def labelled(self, rec: dict[str, Any]) -> bool:
        return rec.get("label") is not None

    def filter_summary(self, records: list[dict[str, Any]], kept: list[int]) -> dict[str, Any]:
        value_drops = Counter(reason for i in kept for _, reason in records[i]["value_drops"])
        dropped = {r: value_drops.get(r, 0) for r in VALUE_REASONS}
        vwhy = ", ".join(f"{k} {v}" for k, v in dropped.items() if v) or "none"
        return {"values_kept": sum(len(records[i]["spans"]) for i in kept),
                "values_dropped_by_reason": dropped,
                "kept_per_field": dict(Counter(f for i in kept for f in records[i]["fields"]).most_common()),
                "_note": f"; values dropped in kept records: {vwhy}"}

    def gold_answer(self, gold: str | None) -> Any:
        return clean_fields(json.loads(gold)) if gold else {}

    def teacher_prediction(self, answer: Answer) -> Any:
        return json.loads(answer.label) if answer.label is not None else None

    def from_text(self, text: str, spec: TaskSpec, labels: Sequence[str]) -> Any:
        assert spec.json_schema is not None
        return parse_answer(text, spec.json_schema)[0]

    def within_input(self, pred: Any, source: str, spec: TaskSpec) -> Any:
        if pred is None or not spec.span_values:
            return pred
        assert spec.json_schema is not None
        return spans_of_input(pred, source, spec.json_schema)

    def to_json(self, pred: Any) -> Any:
        return pred

    def score(self, gold: Sequence[Any], pred: Sequence[Any], labels: Sequence[str],
              teacher: Sequence[Any] | None, spec: TaskSpec | None = None) -> dict[str, Any]:
        return model_metrics(gold, pred, labels, teacher)

    # -- serving ---------------------------------------------------------------------------------
    has_label_set: bool = False
    answer_is_text: bool = False

    def serve_answer(self, text: str, labels: Sequence[str], schema: dict[str, Any] | None
                     ) -> tuple[str | None, str | None, dict[str, Any]]:
        """A causal student's generated text -> (canonical JSON, error, extra)."""
        if schema is None:
            raise ValueError("kind extract needs a json_schema")
        return serve_object(text, schema)

    def same_answer(self, answer: str | None, reference: str | None) -> bool:
        return answer is not None and answer == reference

    def feedback_answer(self, answer: str, labels: Sequence[str], schema: dict[str, Any] | None) -> str:
        """The right object, as JSON (ValueError says why it is refused); canonical JSON back."""
        assert schema is not None
        obj, why, detail = parse_answer(answer, schema)
        if obj is None:
            raise ValueError(f"answer must be a JSON object fitting the task's json_schema or \"wrong\" "
                             f"({why}: {(detail or '')[:200]})")
        return canonical_json(obj)

    def metric_for(self, spec: TaskSpec) -> str:
        return self.metric

    def report_header(self, labels: Sequence[str], spec: TaskSpec | None = None) -> dict[str, Any]:
        return {"fields": len(labels), **({"span_values": True} if spec is not None and spec.span_values else {})}

    def table(self, report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        return table_rows(report)

    def render_markdown(self, report: dict[str, Any]) -> str:
        return render_markdown(report)


TASK = Extract()
