"""Teachers behind one interface (`base.Teacher`); `make_teacher` builds the one a spec names."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..paths import RunPaths
from ..spec import TaskSpec
from .base import Answer, BudgetExceeded, Teacher, answer_cached, cache_key


def make_teacher(spec: TaskSpec, run: RunPaths, labels: list[str], spent_usd: float = 0.0,
                 realtime: bool = False) -> Teacher:
    """`realtime=True` (serving) never answers through a batch, whatever `teacher.batch` says."""
    t = spec.teacher
    if spec.kind == "extract":  # JSON answers: extract_teacher.py
        from ..extract_teacher import make_extract_teacher

        return make_extract_teacher(spec, run, spent_usd)
    if spec.kind == "generate":  # free-text answers: generate_teacher.py
        from ..generate_teacher import make_generate_teacher

        return make_generate_teacher(spec, run, labels, spent_usd)
    if t.kind == "openai" and t.batch and not realtime:  # the Batch API: openai_batch.py
        from .openai_batch import OpenAIBatchTeacher

        return OpenAIBatchTeacher(spec, labels, run.root / "teacher_batches", spent_usd=spent_usd)
    if t.kind == "openai":
        from .openai_compat import OpenAITeacher

        return OpenAITeacher(spec, labels, spent_usd=spent_usd)
    from .hf_local import HFTeacher

    return HFTeacher(str(local_teacher_dir(spec, run)), labels, t.batch_size, t.max_length)


def local_teacher_dir(spec: TaskSpec, run: RunPaths) -> Path:
    """The model directory of a local teacher (kind fit: the run's teacher/; hf: teacher.model)."""
    t = spec.teacher
    if t.kind == "fit":
        if not (run.teacher / "config.json").exists():
            raise FileNotFoundError(
                f"{run.teacher}: no fitted teacher; run `potstill teacher fit` first (teacher.kind is 'fit')"
            )
        return run.teacher
    if t.kind == "hf":
        from ..students.classifier import resolve_model_path

        return Path(resolve_model_path(t.model))
    raise ValueError(f"teacher.kind {t.kind!r} is not a local model")


@contextmanager
def open_teacher(spec: TaskSpec, run: RunPaths, labels: list[str], spent_usd: float = 0.0) -> Iterator[Teacher]:
    """The teacher that labels: `make_teacher`'s, or with `teacher.over_http` the same local
    model behind a potstill server, asked over HTTP (see served.py) until the block ends."""
    if not spec.teacher.over_http:
        yield make_teacher(spec, run, labels, spent_usd)
        return
    from .hf_local import local_identity
    from .served import ServedTeacher

    served = ServedTeacher(spec, run, labels, local_identity(local_teacher_dir(spec, run)))
    try:
        yield served
    finally:
        served.close()

__all__ = ["Answer", "BudgetExceeded", "Teacher", "answer_cached", "cache_key", "make_teacher",
           "open_teacher"]
