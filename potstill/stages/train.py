"""Stages that train: `teacher fit` (a local teacher on the gold labels, when `teacher.kind` is
fit) and `train` (the student, distilled from the teacher's kept records, or the gold-only
baseline of the same shape). The Student of `student.kind` does the work (students/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from ..errors import PotstillError
from ..paths import RunPaths
from ..progress import log
from ..spec import TaskSpec
from ..students import get_student
from ..tasks import get_task
from .guard import guard_after_baseline
from .prepare import prepare_inputs


def fit_teacher(spec: TaskSpec, run: RunPaths) -> dict[str, Any]:
    """Fine-tune `teacher.fit.model` (all layers) on the gold: the teacher of a `fit` spec, and the
    plain fine-tuning path. Its model kind is the task's (a classifier for classify, a tagger for
    extract), whatever the student is."""
    task = get_task(spec.kind)
    if task.local_student is None:
        raise PotstillError(f"kind {spec.kind!r} has no fitted teacher: set teacher.kind to openai or hf")
    inputs = prepare_inputs(spec, run)
    return get_student(task.local_student).fit_teacher(spec, run, inputs)


def baseline_skip_reason(spec: TaskSpec, inputs) -> str | None:
    """Why the run trains no gold-only baseline (None: it trains one). One answer for `run`,
    `check`, evaluation and the report, so none of them suggests what cannot run."""
    if not spec.train.baseline:
        return "train.baseline is false"
    return missing_training_gold(spec, inputs)


def missing_training_gold(spec: TaskSpec, inputs) -> str | None:
    """Why nothing can be fine-tuned on gold (None: the training split has gold labels)."""
    if not any(e.gold is not None for e in inputs.train):
        return (f"the training split has no gold labels ({spec.data.train} has none outside the "
                "held-out splits), so there is nothing to fine-tune on; the verdict compares student "
                "and teacher only (`potstill compare SPEC --gold FILE` asks how many labels "
                "fine-tuning would need)")
    return None


def train_student(spec: TaskSpec, run: RunPaths,
                  mode: Literal["student", "baseline"] = "student", *,
                  records: Path | None = None, out: Path | None = None) -> dict[str, Any]:
    """Train the student (objective from `train.objective`) or the gold-only baseline.

    `records` (default: the run's filtered/) is a folder with kept.jsonl + soft.npy to learn from;
    `out` (default: the run's student/ or baseline/) where the model goes: a round of
    `potstill iterate` trains on its own records into its own folder."""
    inputs = prepare_inputs(spec, run)
    if mode == "baseline" and out is None and records is None:
        why = missing_training_gold(spec, inputs)
        if why is not None:
            log(f"baseline: skipped: {why}")
            return {"stage": "baseline", "skipped": why}
    result = get_student(spec.student.kind).train(spec, run, inputs, mode, records=records, out=out)
    if mode == "baseline" and out is None:  # the guard: is the teacher clearly better than this?
        guard_after_baseline(spec, run, inputs, result.get("metrics") or {})
    return result
