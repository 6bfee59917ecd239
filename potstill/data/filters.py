"""Stage `filter`: a declarative policy over labelled records; every dropped record keeps its reason.

The checks are pure functions of a record (plus, for duplicates, what was seen before); the
first failing check names the reason. Order matters only for which reason a record gets.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable

import numpy as np

from ..manifest import read_manifest, write_manifest
from ..paths import DROPPED, FILTER_REPORT, KEPT, RECORDS, SOFT, RunPaths
from ..progress import log
from ..spec import FilterSpec, TaskSpec
from ..errors import PotstillError
from .inputs import InputError, normalise, read_jsonl, write_jsonl

REASONS = ("teacher_error", "no_label", "too_short", "too_long", "duplicate", "low_votes",
           "low_confidence", "gold_disagreement")


def input_checks(rec: dict[str, Any], answer: str, f: FilterSpec, seen: set[str]) -> str | None:
    """The checks every task kind shares, in order: input length, near-duplicate input (by
    normalised text), self-consistency (`answer`'s votes, k of n)."""
    n = len(rec["text"].strip())
    if n < f.min_chars:
        return "too_short"
    if f.max_chars is not None and n > f.max_chars:
        return "too_long"
    if f.dedup and normalise(rec["text"]) in seen:
        return "duplicate"
    votes = rec.get("votes")
    if votes and f.min_votes > 1 and votes.get(answer, 0) < f.min_votes:
        return "low_votes"
    return None


def check_record(rec: dict[str, Any], f: FilterSpec, seen: set[str]) -> str | None:
    """The reason `rec` is dropped under policy `f`, or None to keep it. Adds kept texts to `seen`."""
    if rec.get("error"):
        return "teacher_error"
    if rec.get("label") is None:
        return "no_label"  # unparseable answer, or a label outside the task's set
    why = input_checks(rec, rec["label"], f, seen)
    if why:
        return why
    key = normalise(rec["text"])
    conf = rec.get("confidence")
    if f.min_confidence > 0 and conf is not None and conf < f.min_confidence:
        return "low_confidence"
    if f.drop_gold_disagreement and rec.get("gold") is not None and rec["gold"] != rec["label"]:
        return "gold_disagreement"
    seen.add(key)
    return None


def apply_filters(records: list[dict[str, Any]], f: FilterSpec,
                  check: Callable[..., str | None] = check_record) -> tuple[list[int], list[tuple[int, str]]]:
    """(indices kept, [(index, reason)] dropped)."""
    seen: set[str] = set()
    kept, dropped = [], []
    for i, rec in enumerate(records):
        reason = check(rec, f, seen)
        if reason is None:
            kept.append(i)
        else:
            dropped.append((i, reason))
    return kept, dropped


def filter_stage(spec: TaskSpec, run: RunPaths) -> dict[str, Any]:
    if spec.kind == "generate":  # free-text records: generate_data.py
        from ..generate_data import filter_generate

        return filter_generate(spec, run)
    if spec.kind == "extract":
        from ..extract_data import filter_extract

        return filter_extract(spec, run)
    src = run.labels / RECORDS
    if not src.exists():
        raise FileNotFoundError(f"{src}: no labelled records; run `potstill label` first")
    label_manifest = read_manifest(run.labels)
    records = read_jsonl(src)
    soft = np.load(run.labels / SOFT)
    if len(soft) != len(records):  # files from two label runs, or one cut short
        raise InputError(f"{run.labels / SOFT}: {len(soft)} rows, but {src} holds {len(records)} "
                         "records; both come from one `potstill label` run: rerun it")
    kept, dropped = apply_filters(records, spec.filters)
    write_jsonl(run.filtered / KEPT, [{**records[i], "row": i} for i in kept])
    write_jsonl(run.filtered / DROPPED, [{**records[i], "row": i, "reason": r} for i, r in dropped])
    np.save(run.filtered / SOFT, soft[kept])
    counts = Counter(r for _, r in dropped)
    report = {
        "inputs": len(records),
        "labelled": sum(r["label"] is not None for r in records),
        "kept": len(kept),
        "dropped": len(dropped),
        "dropped_by_reason": {r: counts.get(r, 0) for r in REASONS},
        "kept_per_label": dict(Counter(records[i]["label"] for i in kept).most_common()),
        "policy": spec.filters.model_dump(),
    }
    return save_filter_report(spec, run, report, label_manifest)


def save_filter_report(spec: TaskSpec, run: RunPaths, report: dict[str, Any],
                       label_manifest: dict[str, Any], note: str = "") -> dict[str, Any]:
    """Write filter_report.json and the stage manifest, log the counts (+ `note`); the report."""
    (run.filtered / FILTER_REPORT).write_text(json.dumps(report, indent=2))
    write_manifest(run.filtered, "filter", spec, teacher=label_manifest.get("teacher"),
                   dataset_hash=label_manifest.get("dataset_hash"),
                   parents={"labels": str(run.labels)}, report=report)
    why = ", ".join(f"{k} {v}" for k, v in report["dropped_by_reason"].items() if v) or "none"
    log(f"filter: kept {report['kept']}/{report['inputs']}; dropped: {why}{note}")
    if report["inputs"] and not report["kept"]:  # nothing to train on: stop here, say why
        raise PotstillError(f"filter: kept none of the {report['inputs']} records (dropped: {why}); "
                            f"see {run.filtered / DROPPED}")
    return report
