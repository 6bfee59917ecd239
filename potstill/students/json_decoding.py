"""Decoding that keeps a causal LM's answer one object of the spec's schema (`json_decoding: schema`).

A model that writes a JSON object token by token may write what the parser then refuses: a key
the schema does not have (with `additionalProperties: false` the whole object is lost), one key
again and again until `max_new_tokens` cuts the object off, a value that never closes. On
snips-json's 597 held-out rows that was 23 answers of the teacher and 29 of the student
(docs/RESULTS.md). Under `json_decoding: schema` each step may only pick tokens that keep the text
the start of one flat object of the schema's kind (answers.check_extract_schema: string values):

    {  "key": "value" , "key": "value" ... }  then the end of the answer

with whitespace where JSON allows it, each key a property of the schema not written before in
this answer, each value a JSON string (escapes allowed, raw control characters not). The schema's
other keywords (`required`, `enum`, lengths) are not enforced while writing; the parser still
checks them. A token is
also refused when what it leaves could no longer be closed within the tokens left (`to_close`),
so the object always closes by `max_new_tokens`. The end-of-sequence token is allowed only after
the closing brace.

The check is an automaton over characters (`JsonObjectAutomaton.step`, pure); a token is allowed
when each of its characters is. Most tokens hold none of `{}":,\\`, no control character and
are not whitespace alone: inside a value they are always allowed, in a key only as its next
characters (looked up, not scanned), elsewhere never (but after a backslash). Of the few hundred
others (582 of SmolLM2's 49,152), the ones whose first character the state takes are run
through the automaton, once per (state, keys written), and cached.

The scores of refused tokens are -inf and greedy decoding picks the model's best allowed token:
the answer parses, the model does not know more. The token logprobs a generation reports (the
router's confidence) stay the model's own, read before the constraint (`causal_lm.generate`): a
token the schema forced on a model that wanted another, such as a closing brace at the end of
the budget, keeps its low probability, and the router can still send that answer to the teacher.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

import torch

START, OPEN, KEY, COLON, VAL0, VALUE, ESC, UHEX, AFTER, COMMA, DONE = range(11)
WHITESPACE = " \t\n\r"
STRUCTURAL = set('{}":,\\')
_LAYOUT = (START, OPEN, COLON, VAL0, AFTER, COMMA)  # where JSON allows whitespace
_FIRST = {START: "{", OPEN: '"}', COLON: ":", VAL0: '"', AFTER: ",}", COMMA: '"', KEY: '"',
          ESC: '"\\/bfnrtu', UHEX: "0123456789abcdefABCDEF"}
"""The characters a token may start with in each state (but whitespace in layout, a key's own)."""


@dataclass(frozen=True)
class State:
    kind: int = START
    text: str = ""
    """The key written so far (KEY), or how many hex digits a \\u escape still needs (UHEX)."""
    used: frozenset[str] = frozenset()
    """The keys this answer has written."""


class JsonObjectAutomaton:
    """Accepts exactly the texts that are one JSON object whose keys are distinct members of `keys`
    and whose values are strings (pure)."""

    def __init__(self, keys: Sequence[str]):
        self.keys = tuple(dict.fromkeys(keys))
        self._open: dict[tuple[frozenset[str], str], tuple[str, ...]] = {}

    def open_keys(self, used: frozenset[str], prefix: str = "") -> tuple[str, ...]:
        """The keys not written yet that start with `prefix`."""
        got = self._open.get((used, prefix))
        if got is None:
            if len(self._open) > 100_000:
                self._open.clear()
            got = self._open[(used, prefix)] = tuple(k for k in self.keys if k.startswith(prefix) and k not in used)
        return got

    def step(self, s: State, ch: str) -> State | None:
        """The state after `ch`, or None when no object of the kind starts with the text + `ch`."""
        k = s.kind
        if k in _LAYOUT and ch in WHITESPACE:
            return s
        if k == START:
            return State(OPEN, "", s.used) if ch == "{" else None
        if k in (OPEN, COMMA) and ch == '"':
            return State(KEY, "", s.used) if self.open_keys(s.used) else None
        if k == OPEN:
            return State(DONE, "", s.used) if ch == "}" else None
        if k == KEY:
            if ch == '"':
                return State(COLON, "", s.used | {s.text}) if s.text in self.keys and s.text not in s.used else None
            return State(KEY, s.text + ch, s.used) if self.open_keys(s.used, s.text + ch) else None
        if k == COLON:
            return State(VAL0, "", s.used) if ch == ":" else None
        if k == VAL0:
            return State(VALUE, "", s.used) if ch == '"' else None
        if k == VALUE:
            if ch == '"':
                return State(AFTER, "", s.used)
            if ch == "\\":
                return State(ESC, "", s.used)
            return s if ch >= " " else None  # a JSON string holds no raw control character
        if k == ESC:
            if ch == "u":
                return State(UHEX, "4", s.used)
            return State(VALUE, "", s.used) if ch in '"\\/bfnrt' else None
        if k == UHEX:
            if ch not in "0123456789abcdefABCDEF":
                return None
            left = int(s.text) - 1
            return State(UHEX, str(left), s.used) if left else State(VALUE, "", s.used)
        if k == AFTER:
            if ch == ",":
                return State(COMMA, "", s.used) if self.open_keys(s.used) else None
            return State(DONE, "", s.used) if ch == "}" else None
        return None  # DONE: the object is closed, nothing may follow but the end of the answer

    def run(self, s: State | None, text: str) -> State | None:
        for ch in text:
            if s is None:
                return None
            s = self.step(s, ch)
        return s

    def to_close(self, s: State) -> int:
        """How many characters at least close the object from `s` (0 once it is closed)."""
        k = s.kind
        if k == KEY:
            return min(len(key) - len(s.text) for key in self.open_keys(s.used, s.text)) + len('":""}')
        if k == COMMA:
            return min(len(key) for key in self.open_keys(s.used)) + len('"":""}')
        if k == UHEX:
            return int(s.text) + 2
        return {START: 2, OPEN: 1, COLON: 4, VAL0: 3, VALUE: 2, ESC: 3, AFTER: 1, DONE: 0}[k]


def token_texts(tokenizer) -> list[str]:
    """Each token's text as it reads after other text. Decoded alone, a SentencePiece token's
    leading space is dropped ("\u2581city" would read "city", and a key `" city"` would pass for
    `"city"`), so each token is decoded after a plain one and that one's text cut off."""
    ids = tokenizer.encode("a", add_special_tokens=False)
    if not ids:
        return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in range(len(tokenizer))]
    lead = tokenizer.decode(ids[-1:], clean_up_tokenization_spaces=False)
    pairs = tokenizer.batch_decode([[ids[-1], i] for i in range(len(tokenizer))],
                                   clean_up_tokenization_spaces=False)
    return [t[len(lead):] if t.startswith(lead) else tokenizer.decode([i], clean_up_tokenization_spaces=False)
            for i, t in enumerate(pairs)]


class JsonDecoding:
    """The automaton lifted to one tokenizer's tokens (built once per tokenizer and key set:
    `for_tokenizer`)."""

    def __init__(self, tokenizer, keys: Sequence[str]):
        self.auto = JsonObjectAutomaton(keys)
        self.vocab_size = len(tokenizer)
        self.eos = tokenizer.eos_token_id
        special = set(tokenizer.all_special_ids)
        self.texts = token_texts(tokenizer)
        in_value = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.by_first: dict[str, list[int]] = {}  # tokens run through the automaton, by first character
        self.quoting: list[int] = []  # of those, the ones that can leave a value (a quote or a backslash)
        self.by_text: dict[str, list[int]] = {}  # the others, for a key's next characters
        self.plain_by_first: dict[str, list[int]] = {}  # the others again, for an escape's characters
        for i, t in enumerate(self.texts):
            if i in special or not t:
                continue
            if any(c in STRUCTURAL or c < " " for c in t) or not t.strip():
                self.by_first.setdefault(t[0], []).append(i)
                if '"' in t or "\\" in t:
                    self.quoting.append(i)
                elif all(c >= " " for c in t):
                    in_value[i] = True  # "{", ": ", "," or spaces inside a string stay inside it
            else:
                in_value[i] = True
                self.by_text.setdefault(t, []).append(i)
                self.plain_by_first.setdefault(t[0], []).append(i)
        self.in_value = in_value
        """The tokens that keep a value open: every one without a quote, backslash or control character."""
        self._cache: dict[State, list[tuple[int, int]]] = {}
        self._most: dict[State, int] = {}  # the most characters a candidate leaves to close
        self._masks: dict[State, torch.Tensor] = {}  # a state's mask while no budget cuts it

    _built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @classmethod
    def for_tokenizer(cls, tokenizer, keys: Sequence[str]) -> JsonDecoding:
        per_tok = cls._built.setdefault(tokenizer, {})
        key = tuple(keys)
        if key not in per_tok:
            per_tok[key] = cls(tokenizer, keys)
        return per_tok[key]

    def _candidates(self, s: State) -> list[tuple[int, int]]:
        """(token, characters to close after it) for the tokens `s` allows, but for the
        `in_value` tokens of a value; cached per state."""
        got = self._cache.get(s)
        if got is not None:
            return got
        if s.kind == VALUE:  # the rest of in_value keep it open, with 2 characters to close
            ids = list(self.quoting)
        else:  # only tokens whose first character the state takes can continue it
            firsts = set(_FIRST.get(s.kind, "")) | (set(WHITESPACE) if s.kind in _LAYOUT else set())
            if s.kind == KEY:
                firsts |= {k[len(s.text)] for k in self.auto.open_keys(s.used, s.text) if len(k) > len(s.text)}
            ids = [i for c in firsts for i in self.by_first.get(c, ())]
            if s.kind in (ESC, UHEX):  # "\\n" then more of the value, "\\u00e9": rare states, many tokens
                ids += [i for c in firsts for i in self.plain_by_first.get(c, ())]
        if s.kind == KEY:  # the key's next characters, as tokens with no structural character
            for key in self.auto.open_keys(s.used, s.text):
                rest = key[len(s.text):]
                for j in range(1, len(rest) + 1):
                    ids.extend(self.by_text.get(rest[:j], ()))
        got = []
        for i in dict.fromkeys(ids):
            after = self.auto.run(s, self.texts[i])
            if after is not None:
                got.append((i, self.auto.to_close(after)))
        if len(self._cache) > 4096:  # a few hundred (token, int) pairs each
            self._cache.clear()
            self._most.clear()
        self._cache[s] = got
        self._most[s] = max((need for _, need in got), default=0)
        return got

    def allowed(self, s: State, tokens_left: int) -> torch.Tensor:
        """(V,) bool: the tokens allowed in state `s` with `tokens_left` generation steps left,
        this one included (the end-of-sequence token needs one). Read-only: while the budget
        cuts nothing the same tensor serves every call in that state."""
        if s.kind == DONE:
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            if self.eos is not None:
                mask[self.eos] = True
            return mask
        budget = tokens_left - 2  # characters left to close in: one token writes at least one,
        cands = self._candidates(s)  # and the end-of-sequence token takes the last step
        loose = budget >= max(self._most[s], 2)
        if loose and s in self._masks:
            return self._masks[s]
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        if s.kind == VALUE and budget >= 2:
            mask |= self.in_value
        ok = [i for i, need in cands if need <= budget]
        if ok:
            mask[torch.tensor(ok)] = True
        if loose:  # the same whatever the budget: most steps of most answers
            if len(self._masks) > 512:  # vocabulary-sized each
                self._masks.clear()
            self._masks[s] = mask
        return mask

    def advance(self, s: State, token: int) -> State | None:
        return self.auto.run(s, self.texts[token])


class SchemaLogitsProcessor:
    """A transformers logits processor: -inf on every token the rows' answers may not take next.

    One per `generate` call. `prompt_len` is the (left-padded) prompt's length, so the tokens
    after it are the answer; a row whose answer has ended (EOS) is left alone. A row whose
    allowed tokens are all -inf already (an `output_vocab` that lacks the token it needs) ends
    there: its answer is cut off and parses as nothing, as without the constraint."""

    def __init__(self, decoding: JsonDecoding, prompt_len: int, max_new_tokens: int):
        self.d, self.prompt_len, self.max_new_tokens = decoding, prompt_len, max_new_tokens
        self.states: list[State | None] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1] - self.prompt_len  # tokens written so far
        if not self.states:
            self.states = [State()] * input_ids.shape[0]
        masks = torch.ones(scores.shape, dtype=torch.bool)
        v = self.d.vocab_size  # an output layer padded beyond the tokenizer: the rest never allowed
        for i, s in enumerate(self.states):
            if s is not None and n > 0:
                tok = int(input_ids[i, -1])
                s = None if tok == self.d.eos else self.d.advance(s, tok)
                self.states[i] = s
            if s is not None:
                masks[i, :v] = self.d.allowed(s, self.max_new_tokens - n)[: scores.shape[-1]]
                masks[i, v:] = False
        out = scores.masked_fill(~masks.to(scores.device), float("-inf"))
        dead = torch.isinf(out).all(-1) & ~torch.isinf(scores).all(-1)
        if self.d.eos is not None and bool(dead.any()):
            out[dead, self.d.eos] = 0.0
        return out
