"""The run's early warning: after the gold-only baseline is trained, is the teacher clearly better
than it on the validation split? (verdict.teacher_guard decides; this reads the numbers.) The
teacher's validation accuracy is a classify notion: for other task kinds the guard stays quiet
until `potstill eval` gives the verdict on the test split."""

from __future__ import annotations

from typing import Any

from ..manifest import read_manifest
from ..progress import log
from ..students.hf import local_teacher_or_none
from ..verdict import teacher_guard


def teacher_val_accuracy(spec, run, inputs) -> float | None:
    """The teacher's accuracy on the validation split: a fitted teacher's own best validation
    accuracy (from its manifest), a local hf classifier's measured here; None for API teachers
    (their verdict waits for `potstill eval`, on the test split)."""
    if spec.teacher.kind == "fit":
        try:
            return (read_manifest(run.teacher).get("metrics") or {}).get("best_val_accuracy")
        except FileNotFoundError:
            return None
    if spec.teacher.kind == "hf" and getattr(spec, "kind", "classify") == "classify":
        # an hf teacher of another task kind is no classifier: nothing to load (for a packaged
        # GGUF that would mean converting it) to compare on validation
        from ..students.classifier import load_classifier, model_labels, predict_logits

        d = local_teacher_or_none(spec, run)
        rows = [e for e in inputs.validation if e.gold is not None]
        if d is None or not rows:
            return None
        try:
            model, tok = load_classifier(d)
        except (OSError, ValueError):
            return None
        own = model_labels(model)
        logits = predict_logits(model, tok, [e.text for e in rows], spec.eval.batch_size, spec.teacher.max_length)
        return sum(own[i] == e.gold for i, e in zip(logits.argmax(-1), rows)) / len(rows)
    return None


def guard_after_baseline(spec, run, inputs, result: dict[str, Any]) -> dict[str, Any] | None:
    """Log a warning when the teacher is not clearly better than the fresh baseline on validation."""
    n = sum(e.gold is not None for e in inputs.validation)
    g = teacher_guard(teacher_val_accuracy(spec, run, inputs), result.get("best_val_accuracy"), n)
    if g is not None:
        log(f"WARNING: {g['warning']}")
    return g
