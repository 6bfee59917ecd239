"""What every student kind provides (`Student`): how a small model is fitted, trained, and asked.

Stages hold no student-kind line: `stages/train.py` and `stages/evaluate.py` ask the `Student`
found by `students.get_student(spec.student.kind)`. Predictions come back in the task's form
(a label, an object, a text): a student that writes text hands it to `Task.from_text`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Protocol, Sequence

from ..data.inputs import Inputs
from ..paths import RunPaths
from ..progress import log
from ..schedule import adaptive_steps
from ..spec import TaskSpec, TrainSpec


class Student(Protocol):
    kind: str
    """The spec's `student.kind`."""

    def fit_teacher(self, spec: TaskSpec, run: RunPaths, inputs: Inputs) -> dict[str, Any]:
        """`teacher.kind: fit`: fine-tune `teacher.fit.model` (all layers) on the gold into
        `run.teacher`; returns its manifest. Raises PotstillError when this kind cannot."""

    def train(self, spec: TaskSpec, run: RunPaths, inputs: Inputs,
              mode: Literal["student", "baseline"] = "student", *,
              records: Path | None = None, out: Path | None = None) -> dict[str, Any]:
        """Train the student (`train.objective`) or the gold-only baseline from the kept records in
        `records` (default: run.filtered) into `out` (default: run.student / run.baseline);
        returns its manifest. A finished model whose inputs did not change is not retrained."""

    def trained(self, path: Path) -> bool:
        """Whether `path` holds a model this kind saved."""

    def evaluate(self, spec: TaskSpec, task: Any, path: Path, texts: list[str], labels: list[str],
                 name: str) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        """(predictions in the task's form, info for report.json: params, size, throughput;
        extras: per-row data for eval/ such as logits or confidences, and `timer`: a
        `timing.Timer` that answers one input at a time, which the evaluation times in turn
        with the teacher's and the other model's for the latency columns)."""


def baseline_train(t: TrainSpec, kept: Path, own: Sequence[str]) -> TrainSpec:
    """The gold-only baseline's `train` part, for its training inputs `own`. On the adaptive
    schedule it trains for at least the steps that the distilled student's inputs give the student:
    the kept records in `kept`, and under objective `both` also the gold inputs the filter dropped
    (the student trains on those too). A baseline with fewer rows than the student (whose inputs
    also count unlabelled or augmented ones) is not simply trained for fewer steps. Early stopping
    on validation still ends it sooner. `t` as it is when its own budget is already as large,
    when the records are not there yet, or on the fixed schedule."""
    if t.schedule != "adaptive" or not kept.exists():
        return t
    texts = [json.loads(line)["text"] for line in kept.read_text(encoding="utf-8").splitlines() if line.strip()]
    n = len(texts) + (len(set(own) - set(texts)) if t.objective == "both" else 0)
    steps, own_steps = adaptive_steps(t, n), adaptive_steps(t, len(own))
    if steps is None or own_steps is None or steps <= own_steps:
        return t
    log(f"baseline: {steps} steps, the student's budget for its {n} inputs ({own_steps} for its own {len(own)} rows)")
    return t.model_copy(update={"min_steps": steps})
