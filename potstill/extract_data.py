"""Data stages of `kind: extract`: gold checks at load, and the filter stage.

Gold fields travel as canonical JSON text in `Example.gold` (see extract_schema.py), so the
shared input code (dedup, splits, hashes) is unchanged. The filter parses each teacher answer,
aligns its values to the input text (students/tagger.py `align_fields`) and applies the policy;
kept records carry `fields` (the aligned values) and `spans` ([field, start, end]) for training.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from .data.filters import apply_filters, input_checks, save_filter_report
from .data.inputs import InputError, normalise, read_jsonl, write_jsonl
from .extract_schema import canonical_json, clean_fields, parse_answer, schema_fields, validate_fields
from .manifest import read_manifest
from .paths import DROPPED, KEPT, RECORDS, SOFT, RunPaths
from .spec import FilterSpec, TaskSpec
from .students.tagger import align_fields

REASONS = ("teacher_error", "invalid_json", "schema_invalid", "too_short", "too_long", "duplicate",
           "low_votes", "no_value_in_text", "gold_disagreement")
VALUE_REASONS = ("not_in_text", "overlap", "empty", "not_a_string")


def gold_fields(gold: str | None) -> dict[str, Any] | None:
    return None if gold is None else json.loads(gold)


def check_gold(spec: TaskSpec, splits: Any) -> list[str]:
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


def filter_extract(spec: TaskSpec, run: RunPaths) -> dict[str, Any]:
    """Stage `filter` for kind extract; writes what the classify filter writes, plus the values
    dropped (and why) in the report."""
    src = run.labels / RECORDS
    if not src.exists():
        raise FileNotFoundError(f"{src}: no labelled records; run `potstill label` first")
    label_manifest = read_manifest(run.labels)
    assert spec.json_schema is not None
    records = [prepare_record(r, spec.json_schema) for r in read_jsonl(src)]
    kept, dropped = apply_filters(records, spec.filters, check_extract_record)
    write_jsonl(run.filtered / KEPT, [{**records[i], "row": i} for i in kept])
    write_jsonl(run.filtered / DROPPED, [{**records[i], "row": i, "reason": r} for i, r in dropped])
    soft = np.load(run.labels / SOFT)
    np.save(run.filtered / SOFT, soft[kept])  # NaN rows: kept so the file layout matches classify
    counts = Counter(r for _, r in dropped)
    value_drops = Counter(reason for i in kept for _, reason in records[i]["value_drops"])
    report = {
        "inputs": len(records),
        "labelled": sum(r["label"] is not None for r in records),
        "kept": len(kept),
        "dropped": len(dropped),
        "dropped_by_reason": {r: counts.get(r, 0) for r in REASONS},
        "values_kept": sum(len(records[i]["spans"]) for i in kept),
        "values_dropped_by_reason": {r: value_drops.get(r, 0) for r in VALUE_REASONS},
        "kept_per_field": dict(Counter(f for i in kept for f in records[i]["fields"]).most_common()),
        "policy": spec.filters.model_dump(),
    }
    vwhy = ", ".join(f"{k} {v}" for k, v in report["values_dropped_by_reason"].items() if v) or "none"
    save_filter_report(spec, run, report, label_manifest, f"; values dropped in kept records: {vwhy}")
    return report
