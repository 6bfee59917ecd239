"""Stage `label`: training inputs (+ `data.augment` perturbed copies) x teacher -> records.

Every teacher call goes through the content-keyed cache in the run's SQLite store, so a rerun
costs nothing and a killed run resumes where it stopped. Writes `labels/records.jsonl` (one row
per input: the training inputs in order, then the augmented ones) and `labels/soft.npy` ((N, C) float32 teacher distribution,
NaN rows where the teacher gave none).
"""

from __future__ import annotations

import re
from collections import Counter
from contextlib import ExitStack
from typing import Any

import numpy as np

from ..data.augment import augment
from ..data.inputs import write_jsonl
from ..errors import PotstillError
from ..manifest import write_manifest
from ..paths import RECORDS, SOFT, RunPaths
from ..progress import log, progress
from ..spec import TaskSpec
from ..store import Store
from ..tasks import get_task
from ..teachers import BudgetExceeded, Teacher, answer_cached, open_teacher
from ..teachers.base import TeacherUnavailable
from .prepare import Inputs, prepare_inputs


def label(spec: TaskSpec, run: RunPaths, teacher: Teacher | None = None) -> dict[str, Any]:
    task = get_task(spec.kind)
    inputs: Inputs = prepare_inputs(spec, run)
    with Store(run.db) as store, ExitStack() as stack:
        if teacher is None:
            teacher = stack.enter_context(open_teacher(spec, run, inputs.labels))
        before = store.spend(teacher.identity)
        if hasattr(teacher, "spent_usd"):  # the spending cap counts what earlier runs spent too
            teacher.spent_usd = max(teacher.spent_usd, before["cost_usd"])
        examples = inputs.train + augment(inputs.train, spec.data.augment, spec.train.seed)
        texts = [ex.text for ex in examples]
        stats: dict[str, int] = {}
        try:
            with progress(len(texts), f"label ({teacher.identity.split('@')[0]})") as bar:
                answers = answer_cached(teacher, texts, store, spec.spec_hash(), bar.advance,
                                        stats=stats)
        except TeacherUnavailable as e:
            raise TeacherUnavailable(
                f"label: stopped: {e}. {stats.get('answered', 0)} new answers and "
                f"{stats.get('cached', 0)} cached ones are kept in {run.db}; rerun once the teacher "
                "answers to go on from there") from None
        except BudgetExceeded as e:
            spent = store.spend(teacher.identity)
            raise BudgetExceeded(
                f"{e} — {spent['calls']} answers are cached in {run.db}; raise teacher.max_spend_usd "
                "and rerun to go on from there"
            ) from None
        after = store.spend(teacher.identity)

    C = len(inputs.labels)
    soft = np.full((len(answers), C), np.nan, dtype=np.float32)
    rows = []
    for i, (ex, a) in enumerate(zip(examples, answers)):
        if a.probs is not None:
            soft[i] = a.probs
        rows.append({
            "id": ex.id, "text": ex.text, "gold": ex.gold, "label": a.label,
            "source": "augmented" if i >= len(inputs.train) else "input",
            "confidence": float(max(a.probs)) if a.probs else None,
            "votes": a.votes, "raw": a.raw, "error": a.error,
            **task.record_fields(a),
        })
    run.labels.mkdir(parents=True, exist_ok=True)
    write_jsonl(run.labels / RECORDS, rows)
    np.save(run.labels / SOFT, soft)
    spend = {k: after[k] - before[k] for k in after}
    labelled = sum(r["label"] is not None for r in rows)
    summary = {"inputs": len(rows), "augmented": len(rows) - len(inputs.train), "labelled": labelled,
               "errors": sum(r["error"] is not None for r in rows),
               # real cache hits (a failed call is neither a new call nor a cache hit)
               "new_calls": spend["calls"], "cached": stats["cached"],
               "spend_this_run": spend, "spend_total": after}
    write_manifest(run.labels, "label", spec, teacher=teacher.identity,
                   dataset_hash=inputs.dataset_hash, parents={"inputs": str(run.inputs)}, summary=summary)
    log(f"label: {labelled}/{len(rows)} labelled by {teacher.identity} "
        f"({summary['cached']} from cache, {spend['calls']} new calls, "
        f"{summary['errors']} failed, ${spend['cost_usd']:.4f})")
    errors = [r["error"] for r in rows if r["error"]]
    if errors:
        log("label: " + failure_summary(errors))
    if rows and labelled == 0:
        why = (failure_summary(errors) if errors
               else "no answer named a known label, e.g. " + repr(_clip(str(rows[0]["raw"]), 160)))
        raise PotstillError(f"label: none of the {len(rows)} inputs was labelled ({why}); "
                            f"records are in {run.labels / RECORDS}")
    return summary


def failure_type(error: str) -> str:
    """A short name for what kind of failure a teacher error string is, the same for every input
    that failed the same way: "HTTP 429", "timed out", "connection error", "malformed
    response"... The last attempt decides (a row retried is "HTTP 500 (x2); then timed out ..."),
    a batch's "batch ID: " prefix is dropped, and the name is what comes before the first ":" or
    " (" (a teacher's own error, e.g. "ValueError: ...", keeps its exception class)."""
    e = " ".join(error.split())
    if e.startswith("batch ") and ": " in e:
        e = e.split(": ", 1)[1]
    e = e.split("; then ")[-1]
    if e.startswith("timed out"):  # "timed out after 30s": the seconds are not the kind
        return "timed out"
    return _clip(re.split(r":| \(", e, maxsplit=1)[0].strip() or "unknown error", 40)


def failure_summary(errors: list[str], most: int = 5) -> str:
    """Teacher errors grouped by `failure_type`, most frequent first, each with its count and
    its first message: `12 teacher failures: 9 × HTTP 429 ('HTTP 429: Too Many Requests ...'),
    3 × timed out ('timed out after 30s ...')`. "N failed" alone does not say whether to wait
    (rate limits), raise a timeout, or fix the prompt or the key. At most `most` kinds are
    named; the rest are counted."""
    first: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for e in errors:
        kind = failure_type(e)
        first.setdefault(kind, e)
        counts[kind] += 1
    ranked = counts.most_common()  # ties keep the order of first appearance
    parts = [f"{n} × {kind} ({_clip(' '.join(first[kind].split()), 160)!r})" for kind, n in ranked[:most]]
    if len(ranked) > most:
        rest = ranked[most:]
        parts.append(f"{sum(n for _, n in rest)} more of {len(rest)} other kind(s)")
    n = len(errors)
    return f"{n} teacher failure{'s' if n != 1 else ''}: " + ", ".join(parts)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
