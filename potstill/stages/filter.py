"""Stage `filter`: a declarative policy over labelled records; every dropped record keeps its reason.

The checks are the task's (`Task.check_record`): pure functions of a record (plus, for
duplicates, what was seen before); the first failing check names the reason. Order matters only
for which reason a record gets.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable

import numpy as np

from ..data.inputs import InputError, read_jsonl, write_jsonl
from ..errors import PotstillError
from ..manifest import read_manifest, write_manifest
from ..paths import DROPPED, FILTER_REPORT, KEPT, RECORDS, SOFT, RunPaths
from ..progress import log
from ..spec import FilterSpec, TaskSpec
from ..tasks import get_task


def apply_filters(records: list[dict[str, Any]], f: FilterSpec,
                  check: Callable[..., str | None]) -> tuple[list[int], list[tuple[int, str]]]:
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
    """Apply `spec.filters` to labels/records.jsonl with the task's checks; write filtered/."""
    task = get_task(spec.kind)
    src = run.labels / RECORDS
    if not src.exists():
        raise PotstillError(f"{src}: no labelled records; run `potstill label` first")
    label_manifest = read_manifest(run.labels)
    records = [task.prepare_record(r, spec) for r in read_jsonl(src)]
    soft = np.load(run.labels / SOFT)  # (N, C); NaN rows where the teacher gave no distribution
    if len(soft) != len(records):  # files from two label runs, or one cut short
        raise InputError(f"{run.labels / SOFT}: {len(soft)} rows, but {src} holds {len(records)} "
                         "records; both come from one `potstill label` run: rerun it")
    kept, dropped = apply_filters(records, spec.filters, task.check_record)
    write_jsonl(run.filtered / KEPT, [{**records[i], "row": i} for i in kept])
    write_jsonl(run.filtered / DROPPED, [{**records[i], "row": i, "reason": r} for i, r in dropped])
    np.save(run.filtered / SOFT, soft[kept])
    counts = Counter(r for _, r in dropped)
    extra = task.filter_summary(records, kept)
    note = extra.pop("_note", "")
    report = {
        "inputs": len(records),
        "labelled": sum(task.labelled(r) for r in records),
        "kept": len(kept),
        "dropped": len(dropped),
        "dropped_by_reason": {r: counts.get(r, 0) for r in task.reasons},
        **extra,
        "policy": spec.filters.model_dump(),
    }
    return save_filter_report(spec, run, report, label_manifest, note)


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
