"""Progress for long work: a rich bar on a terminal, periodic plain lines elsewhere (CI, logs)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
if not console.is_terminal:  # logs and CI: no wrapping at 80 columns
    console = Console(stderr=True, width=160, soft_wrap=True)


class _Bar:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.done = total, desc, 0
        self.enabled = enabled
        self._rich: Progress | None = None
        self._task = None
        self._t0 = time.monotonic()
        self._next_line = 0.0
        self.postfix = ""

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=n, postfix=self.postfix)
        else:
            now = time.monotonic()
            if now >= self._next_line or self.done >= self.total:
                self._next_line = now + 10.0  # a line every 10 s keeps CI logs short
                rate = self.done / max(now - self._t0, 1e-9)
                console.print(f"{self.desc}: {self.done}/{self.total} ({rate:.1f}/s) {self.postfix}",
                              highlight=False)

    def set_postfix(self, text: str) -> None:
        self.postfix = text
        if self.enabled and self._rich is not None:
            self._rich.update(self._task, postfix=text)


@contextmanager
def progress(total: int, desc: str, enabled: bool = True) -> Iterator[_Bar]:
    """`with progress(n, "labelling") as bar: bar.advance()`. `enabled=False` for non-main ranks."""
    bar = _Bar(total, desc, enabled)
    if enabled and console.is_terminal:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[postfix]}"), console=console, transient=False,
        ) as p:
            bar._rich = p
            bar._task = p.add_task(desc, total=total, postfix="")
            yield bar
    else:
        yield bar


def log(msg: str) -> None:
    """A line of progress on stderr; silent on the non-main ranks of a multi-process launch.
    Plain text: brackets in a message (an endpoint's error, a file name) are never read as rich
    markup."""
    from .manifest import is_main_process

    if is_main_process():
        console.print(msg, highlight=False, markup=False)
