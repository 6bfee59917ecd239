"""The one error type for user mistakes: a bad spec, bad data, a missing stage output, a teacher
that cannot be built. The CLI prints these briefly (`error: ...`, exit 2); every other exception
is a bug and shows its traceback."""

from __future__ import annotations


class PotstillError(ValueError):
    """A mistake the user can fix; the message says what and where (file, line or field)."""


class MissingOutput(PotstillError, FileNotFoundError):
    """A file an earlier stage writes is not there; the message names it and the command that makes it."""
