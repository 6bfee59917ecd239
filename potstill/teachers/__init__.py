"""Teachers behind one interface (`base.Teacher`); `make_teacher` builds the one a spec names."""

from __future__ import annotations

from ..paths import RunPaths
from ..spec import TaskSpec
from .base import Answer, BudgetExceeded, Teacher, answer_cached, cache_key


def make_teacher(spec: TaskSpec, run: RunPaths, labels: list[str], spent_usd: float = 0.0) -> Teacher:
    t = spec.teacher
    if t.kind == "openai":
        from .openai_compat import OpenAITeacher

        return OpenAITeacher(spec, labels, spent_usd=spent_usd)
    from .hf_local import HFTeacher

    if t.kind == "fit":
        if not (run.teacher / "config.json").exists():
            raise FileNotFoundError(
                f"{run.teacher}: no fitted teacher; run `potstill teacher fit` first (teacher.kind is 'fit')"
            )
        return HFTeacher(str(run.teacher), labels, t.batch_size, t.max_length)
    return HFTeacher(t.model, labels, t.batch_size, t.max_length)


__all__ = ["Answer", "BudgetExceeded", "Teacher", "answer_cached", "cache_key", "make_teacher"]
