"""The one exception type for a user's mistake or an outside condition the user must fix (a bad
input file, a refused API key, an unreachable endpoint): the CLI prints its message, without a
traceback, and exits non-zero. A leaf module: it imports nothing from potstill."""


class PotstillError(Exception):
    """An error whose message tells the user what is wrong and where (file, line, field,
    environment variable); no traceback is needed to act on it."""
