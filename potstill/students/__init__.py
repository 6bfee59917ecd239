"""Student kinds behind one `Student` protocol (students/base.py), found through one registry.

To add a student kind: write a module with a class that has every member of `Student` and call
`register(YourStudent())` (the built-in kinds are registered here; see docs/ARCHITECTURE.md).
Shared Hugging Face helpers are in students/hf.py.
"""

from __future__ import annotations

from ..errors import PotstillError
from .base import Student

_STUDENTS: dict[str, Student] = {}
_BUILTIN = {"classifier": "classifier", "tagger": "tagger", "causal_lm": "causal_lm"}
"""kind -> module under potstill.students, imported on first use (each pulls in torch)."""


def register(student: Student) -> Student:
    _STUDENTS[student.kind] = student
    return student


def get_student(kind: str) -> Student:
    if kind not in _STUDENTS and kind in _BUILTIN:
        import importlib

        module = importlib.import_module(f"{__name__}.{_BUILTIN[kind]}")
        _STUDENTS.setdefault(kind, module.STUDENT)
    try:
        return _STUDENTS[kind]
    except KeyError:
        known = sorted(set(_STUDENTS) | set(_BUILTIN))
        raise PotstillError(f"student.kind {kind!r}: no such student kind; known: {', '.join(known)}") from None


__all__ = ["Student", "get_student", "register"]
