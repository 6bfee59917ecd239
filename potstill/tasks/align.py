"""Where an extract answer's values sit in the input text: fields -> character spans (pure).

Alignment rules (pure: `occurrences`, `align_value`, `align_fields`):
- case-insensitive (Unicode case folding: "STRASSE" finds "Straße") and Unicode-normalised
  (NFKD per character: a precomposed "é" matches "e" + combining accent; accents still count);
- whitespace-insensitive: any run of whitespace matches any other;
- a whole-word occurrence wins over one inside a word ("my" in "play my song", not in "Mylo");
- a value that occurs several times takes its FIRST (whole-word) occurrence that does not
  overlap a value aligned before it (fields in the object's order): in "Add My Belgian Rose to
  my list" with entity_name "My Belgian Rose" then playlist_owner "my", the owner is the second
  "my"; in "rate it 5 out of 5", rating_value and best_rating get one "5" each;
- a value not in the text is dropped (reason `not_in_text`), an empty one too (`empty`), one
  whose every occurrence overlaps values aligned before it as `overlap`; non-string values as
  `not_a_string`. The filter report counts every reason.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from typing import Any, Sequence

Span = tuple[str, int, int]  # (field, start, end) character offsets into the text, end exclusive


def _folded(text: str) -> tuple[str, list[int]]:
    """(normalised text, index in `text` of each normalised character).

    Per character: NFKD, case fold; whitespace runs become one space. Mapping each output
    character back to its source character keeps spans exact when folding changes lengths."""
    out: list[str] = []
    index: list[int] = []
    prev_space = False
    for i, ch in enumerate(text):
        if ch.isspace():
            if not prev_space:
                out.append(" ")
                index.append(i)
            prev_space = True
            continue
        prev_space = False
        for c in unicodedata.normalize("NFKD", ch).casefold():
            out.append(c)
            index.append(i)
    return "".join(out), index


def _fold_value(value: str) -> str:
    return _folded(value.strip())[0]


def _is_word(c: str) -> bool:
    return c.isalnum() or unicodedata.category(c).startswith("M")


def occurrences(text: str, value: str) -> list[tuple[int, int, bool]]:
    """Every match of `value` in `text` under the module's rules, in order: (start, end, whole
    word) with source character offsets."""
    needle = _fold_value(value)
    if not needle:
        return []
    hay, index = _folded(text)
    out = []
    pos = hay.find(needle)
    while pos != -1:
        end = pos + len(needle)
        before_ok = pos == 0 or not (_is_word(hay[pos - 1]) and _is_word(needle[0]))
        after_ok = end == len(hay) or not (_is_word(hay[end]) and _is_word(needle[-1]))
        # back to source offsets: first source char of the match .. last source char + 1
        out.append((index[pos], index[end - 1] + 1, before_ok and after_ok))
        pos = hay.find(needle, pos + 1)
    return out


def _pick(found: list[tuple[int, int, bool]], taken: Sequence[tuple[int, int]] = ()) -> tuple[int, int] | None:
    """The first whole-word occurrence clear of `taken` spans, else the first clear one."""
    free = [(s, e, w) for s, e, w in found if not any(s < te and e > ts for ts, te in taken)]
    best = next(((s, e) for s, e, w in free if w), None)
    return best or next(((s, e) for s, e, _ in free), None)


def align_value(text: str, value: str) -> tuple[int, int] | None:
    """Character span (start, end) of `value` in `text` under the module's rules, or None."""
    return _pick(occurrences(text, value))


def align_fields(text: str, fields: dict[str, Any]) -> tuple[list[Span], list[tuple[str, str]]]:
    """(spans sorted by start, [(field, reason)] dropped). See the module docstring for rules."""
    spans: list[Span] = []
    drops: list[tuple[str, str]] = []
    for name, value in fields.items():
        if not isinstance(value, str):
            drops.append((name, "not_a_string"))
            continue
        if not value.strip():
            drops.append((name, "empty"))
            continue
        found = occurrences(text, value)
        span = _pick(found, [(a, b) for _, a, b in spans])
        if span is None:
            drops.append((name, "overlap" if found else "not_in_text"))
            continue
        spans.append((name, *span))
    return sorted(spans, key=lambda x: x[1]), drops


# -- values that must be spans of the input: a model's near-copies snapped to the text ----------
SPAN_NOTE = ("Every model's answer values were made spans of its input before scoring (span_values: "
             "a near-copy takes the input's own words; a value like nothing in the input is dropped).")
"""The line report.md carries under span_values."""

SNAP_SIMILARITY = 0.7
"""A value not in the text takes the text's most similar word span when their similarity (difflib's
ratio of the folded strings) is at least this; below it the value is dropped. Chosen on
examples/snips-json's 100 test rows, checked on 597 held-out SNIPS rows (docs/RESULTS.md)."""

_EDGE_PUNCT = ".,;:!?\"'()[]{}"


def _candidate_spans(text: str, words: int) -> list[tuple[int, int]]:
    """Character spans of the text's runs of 1 .. `words` whitespace-separated words, each also
    with its edge punctuation stripped, in order of start then length (no duplicates)."""
    toks = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    out: dict[tuple[int, int], None] = {}
    for i in range(len(toks)):
        for j in range(i, min(len(toks), i + words)):
            s, e = toks[i][0], toks[j][1]
            out[(s, e)] = None
            while s < e and text[s] in _EDGE_PUNCT:
                s += 1
            while e > s and text[e - 1] in _EDGE_PUNCT:
                e -= 1
            if s < e:
                out[(s, e)] = None
    return list(out)


def snap_value(text: str, value: str, min_similarity: float = SNAP_SIMILARITY) -> str | None:
    """`value` as a span of `text`: where it occurs as whole words (the module's rules), the text's
    own characters there; else (also when it occurs only inside a word: "Adel" in "Adele") the
    word span most similar to it (the earliest, then shortest, of equals) when the
    similarity reaches `min_similarity`; else None. A model that copies a name from the request
    and misspells it ("BenBurnley" for "Ben Burnley", "1/2/2023" for "1/20/2023") gets the name back;
    one that writes a different name ("Tonyine" for "Toyan", similarity 0.5) loses it."""
    whole = next(((s, e) for s, e, w in occurrences(text, value) if w), None)
    if whole is not None:
        return text[whole[0]:whole[1]]
    want = _fold_value(value)
    if not want:
        return None
    best, best_r = None, -1.0
    for s, e in _candidate_spans(text, len(value.split()) + 2):
        r = difflib.SequenceMatcher(None, want, _fold_value(text[s:e]), autojunk=False).ratio()
        if r > best_r:
            best, best_r = (s, e), r
    if best is None or best_r < min_similarity:
        return None
    return text[best[0]:best[1]]


def snap_fields(text: str, fields: dict[str, Any], min_similarity: float = SNAP_SIMILARITY) -> dict[str, Any]:
    """Every string value of `fields` as a span of `text` (`snap_value`); a value with no span
    similar enough is dropped. Other values are kept as they are."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if not isinstance(value, str):
            out[name] = value
            continue
        v = snap_value(text, value, min_similarity)
        if v is not None:
            out[name] = v
    return out
