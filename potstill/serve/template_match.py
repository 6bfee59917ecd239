"""Pulling the `{text}` field out of a prompt rendered from a template, in linear time.

The server accepts potstill teacher prompts as chat messages (a potstill server can be the
teacher of another run) and classifies only their `{text}` part. The first version compiled the
template into a regex (`.*?` per field, `(?P<text>.*)` for the text); on crafted messages
(many copies of the template's separators) that regex backtracks polynomially, and it ran on
the event loop: 30 such inputs in one request froze the server for 11 s (issue 11).

`TemplateMatcher` finds the same `{text}` with string searches only:

- the message must start with the template's first literal and end with its last one;
- the literals before the (first) `{text}` are found left to right, each at its leftmost place
  (what the lazy `.*?` of the regex picked: the leftmost place always leaves the most room for
  the rest, so if any match exists this one does);
- the literals after the (last) `{text}` are found right to left, each at its rightmost place
  (the greedy `{text}` of the regex: the longest text that still lets the rest match);
- what lies between is the text. A template naming `{text}` several times (the regex's
  back-reference) is matched when only literals separate the copies: the copies' length is
  then fixed by the remaining length, and checked; with other fields between the copies it
  does not match (the message is then classified whole, as for any non-template message).

Each step is a `str.find`/`str.rfind`/`startswith`, so one message costs O(len(message) x
number of literals) at worst, never backtracking.
"""

from __future__ import annotations

import string
from dataclasses import dataclass


@dataclass
class TemplateMatch:
    """The part of `re.Match` the server uses: `group("text")`."""

    text: str

    def group(self, name: str = "text") -> str:
        if name != "text":
            raise IndexError(name)
        return self.text


class TemplateMatcher:
    """`fullmatch(message)` -> TemplateMatch (holding the `{text}` part) or None."""

    def __init__(self, template: str):
        self.template = template
        # the template as alternating literals and field names: lits[0] f[0] lits[1] f[1] ... lits[-1]
        lits: list[str] = [""]
        fields: list[str] = []
        for literal, name, _spec, _conv in string.Formatter().parse(template):
            lits[-1] += literal
            if name is not None:
                fields.append(name)
                lits.append("")
        self.lits, self.fields = lits, fields
        idx = [i for i, f in enumerate(fields) if f == "text"]
        self.text_idx = idx
        # copies of {text} separated by literals only (or a single copy): matchable
        self.ok = bool(idx) and all(fields[i] == "text" for i in range(idx[0], idx[-1] + 1))

    def fullmatch(self, message: str) -> TemplateMatch | None:
        if not self.ok:
            return None
        lits, first, last = self.lits, self.text_idx[0], self.text_idx[-1]
        # lits[0] starts the message, lits[-1] ends it (they may be the same literal when the
        # template has no field at all, excluded by self.ok)
        if not message.startswith(lits[0]):
            return None
        lo = len(lits[0])
        # literals before the first {text}: lits[1..first], leftmost each
        for k in range(1, first + 1):
            at = message.find(lits[k], lo)
            if at < 0:
                return None
            lo = at + len(lits[k])
        # literals after the last {text}: lits[last+1 .. -1], rightmost each, the last one at the end
        hi = len(message)
        n = len(lits)
        for k in range(n - 1, last, -1):
            if k == n - 1:
                if not message.endswith(lits[k]) or hi - len(lits[k]) < lo:
                    return None
                hi -= len(lits[k])
                continue
            at = message.rfind(lits[k], lo, hi)
            if at < 0:
                return None
            hi = at
        if hi < lo:
            return None
        middle = message[lo:hi]
        copies = last - first + 1
        if copies == 1:
            return TemplateMatch(middle)
        seps = lits[first + 1 : last + 1]  # the literals between the copies
        rest = len(middle) - sum(len(s) for s in seps)
        if rest < 0 or rest % copies:
            return None
        size = rest // copies
        text = middle[:size]
        pos = size
        for s in seps:
            if not middle.startswith(s, pos) or not middle.startswith(text, pos + len(s)):
                return None
            pos += len(s) + size
        return TemplateMatch(text) if pos == len(middle) else None
