"""Stage `label`: training inputs (+ `data.augment` perturbed copies) x teacher -> records.

Every teacher call goes through the content-keyed cache in the run's SQLite store, so a rerun
costs nothing and a killed run resumes where it stopped. Writes `labels/records.jsonl` (one row
per input: the training inputs in order, then the augmented ones) and `labels/soft.npy` ((N, C) float32 teacher distribution,
NaN rows where the teacher gave none).
"""

from __future__ import annotations

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
    if rows and labelled == 0:
        errs = Counter(r["error"] for r in rows if r["error"])
        why = (f"{sum(errs.values())} teacher errors, e.g. {errs.most_common(1)[0][0]!r}" if errs
               else "no answer named a known label, e.g. " + repr(_clip(str(rows[0]["raw"]), 160)))
        raise PotstillError(f"label: none of the {len(rows)} inputs was labelled ({why}); "
                            f"records are in {run.labels / RECORDS}")
    return summary


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
