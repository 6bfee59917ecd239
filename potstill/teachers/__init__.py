"""Teachers behind one interface (`base.Teacher`), built from one table keyed by
(task kind, teacher kind): `make_teacher` builds the one a spec names. No teacher imports a stage.

To give a new task kind its teachers, add its rows with `register_teacher`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from ..errors import PotstillError
from ..paths import RunPaths
from ..spec import TaskSpec
from ..students.hf import local_teacher_dir
from .base import Answer, BudgetExceeded, Teacher, answer_cached, cache_key

Factory = Callable[[TaskSpec, RunPaths, list[str], float], Teacher]
"""(spec, run, labels, dollars already spent) -> a Teacher."""


def _classify_openai(spec: TaskSpec, run: RunPaths, labels: list[str], spent: float) -> Teacher:
    from .openai_compat import OpenAITeacher

    return OpenAITeacher(spec, labels, spent_usd=spent)


def _classify_openai_batch(spec: TaskSpec, run: RunPaths, labels: list[str], spent: float) -> Teacher:
    from .openai_batch import OpenAIBatchTeacher

    return OpenAIBatchTeacher(spec, labels, run.root / "teacher_batches", spent_usd=spent)


def _classify_local(spec: TaskSpec, run: RunPaths, labels: list[str], spent: float) -> Teacher:
    from .hf_local import HFTeacher

    t = spec.teacher
    return HFTeacher(str(local_teacher_dir(spec, run)), labels, t.batch_size, t.max_length)


def _extract_openai(spec: TaskSpec, run: RunPaths, labels: list[str], spent: float) -> Teacher:
    from ..answers import schema_fields
    from .openai_extract import OpenAIExtractTeacher

    assert spec.json_schema is not None
    return OpenAIExtractTeacher(spec, schema_fields(spec.json_schema), spent_usd=spent)


def _extract_local(spec: TaskSpec, run: RunPaths, labels: list[str], spent: float) -> Teacher:
    from .hf_tagger import TaggerTeacher

    t = spec.teacher
    assert spec.json_schema is not None
    return TaggerTeacher(str(local_teacher_dir(spec, run)), spec.json_schema, t.batch_size, t.max_length)


def _generate_openai(spec: TaskSpec, run: RunPaths, labels: list[str], spent: float) -> Teacher:
    from .openai_generate import OpenAIGenerateTeacher

    return OpenAIGenerateTeacher(spec, labels, spent_usd=spent)


def _generate_local(spec: TaskSpec, run: RunPaths, labels: list[str], spent: float) -> Teacher:
    from .hf_causal import HFCausalTeacher

    return HFCausalTeacher(spec, labels)


TEACHERS: dict[tuple[str, str], Factory] = {
    ("classify", "openai"): _classify_openai,
    ("classify", "openai_batch"): _classify_openai_batch,  # teacher.batch: the OpenAI Batch API
    ("classify", "fit"): _classify_local,
    ("classify", "hf"): _classify_local,
    ("extract", "openai"): _extract_openai,
    ("extract", "fit"): _extract_local,
    ("extract", "hf"): _extract_local,
    ("generate", "openai"): _generate_openai,
    ("generate", "hf"): _generate_local,
}
"""(task kind, teacher kind) -> how to build that teacher. A missing pair is not supported."""

OVER_HTTP: set[str] = {"classify"}
"""Task kinds whose local teacher can label through a potstill server (`teacher.over_http`)."""


def register_teacher(task_kind: str, teacher_kind: str, factory: Factory) -> None:
    TEACHERS[(task_kind, teacher_kind)] = factory


def make_teacher(spec: TaskSpec, run: RunPaths, labels: list[str], spent_usd: float = 0.0,
                 realtime: bool = False) -> Teacher:
    """The teacher the spec names, built in-process; a clear error when the pair is not supported
    or the teacher cannot be built (never a silent fallback). With `teacher.batch` an openai
    teacher answers through the Batch API, except when `realtime` (serving)."""
    t = spec.teacher
    if t.kind == "openai" and t.batch and not realtime:
        if (spec.kind, "openai_batch") not in TEACHERS:
            raise PotstillError(f"teacher.batch is not implemented for kind {spec.kind!r} yet")
        return TEACHERS[(spec.kind, "openai_batch")](spec, run, labels, spent_usd)
    factory = TEACHERS.get((spec.kind, t.kind))
    if factory is None:
        have = sorted(tk for k, tk in TEACHERS if k == spec.kind)
        raise PotstillError(f"teacher.kind {spec.teacher.kind!r} cannot teach kind {spec.kind!r}; "
                            f"use one of: {', '.join(have) or 'none'}")
    return factory(spec, run, labels, spent_usd)


@contextmanager
def open_teacher(spec: TaskSpec, run: RunPaths, labels: list[str], spent_usd: float = 0.0) -> Iterator[Teacher]:
    """The teacher that labels: `make_teacher`'s, or with `teacher.over_http` the same local
    model behind a potstill server, asked over HTTP (see served.py) until the block ends."""
    if not spec.teacher.over_http:
        yield make_teacher(spec, run, labels, spent_usd)
        return
    if spec.kind not in OVER_HTTP:
        raise PotstillError(f"teacher.over_http is not implemented for kind {spec.kind!r} yet")
    from .hf_local import local_identity
    from .served import ServedTeacher

    served = ServedTeacher(spec, run, labels, local_identity(local_teacher_dir(spec, run)))
    try:
        yield served
    finally:
        served.close()


__all__ = ["Answer", "BudgetExceeded", "Teacher", "TEACHERS", "answer_cached", "cache_key", "make_teacher",
           "open_teacher", "register_teacher"]
