"""Task kinds behind one `Task` protocol (tasks/base.py), found through one registry.

To add a task kind: write a module with a class that has every member of `Task` and call
`register(YourTask())` (the built-in kinds are registered here; see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from ..errors import PotstillError
from .base import Task

_TASKS: dict[str, Task] = {}
_builtin_loaded = False


def register(task: Task) -> Task:
    """Make `task` the one for `task.kind` (a later registration of the same kind replaces it)."""
    _register_builtin()
    _TASKS[task.kind] = task
    return task


def get_task(kind: str) -> Task:
    _register_builtin()
    try:
        return _TASKS[kind]
    except KeyError:
        raise PotstillError(f"kind {kind!r}: no such task kind; known: {', '.join(sorted(_TASKS))}") from None


def kinds() -> list[str]:
    _register_builtin()
    return sorted(_TASKS)


def _register_builtin() -> None:
    global _builtin_loaded
    if _builtin_loaded:
        return
    _builtin_loaded = True
    from .classify import TASK as classify
    from .extract import TASK as extract
    from .generate import TASK as generate

    for t in (classify, extract, generate):
        _TASKS.setdefault(t.kind, t)


__all__ = ["Task", "get_task", "kinds", "register"]
