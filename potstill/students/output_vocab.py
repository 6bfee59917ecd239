"""Decoding over a trimmed output vocabulary (`student.output_vocab: answers+input`).

A causal student writes its answer one token at a time, and every step multiplies the last hidden
state by the whole output embedding: 49,152 rows for SmolLM2, which costs a 10-layer cut of it
about as much as its ten layers do (docs/RESULTS.md, "Where the per-token speed-up stops"). An
answer that extracts or classifies is made of few tokens: the ones of the answers the student was
trained on (JSON keys, punctuation, label names) and the ones of the request it copies values
from. Decoding scores only those rows: the tokens of every training answer (kept with the model,
`answer_ids`) and, per request, the tokens of its prompt (the request in the spec's template), of
each of its words and of their letter/digit/punctuation pieces, with and without a leading space
(a value inside a JSON string starts after a quote, with no space: `"boston"`, where the request
says ` boston`).

The scores of the other rows are -inf, so greedy decoding picks the best allowed token and the
token logprobs the router reads are normalised over the allowed set. An answer that needs a
token outside the set cannot be written: the option suits answers copied from the request, not
free text (summaries, rewrites). On SNIPS (examples/snips-json) the gold answer of every one of
597 held-out rows lies inside its set: about 2,200 ids, the student's 2,141 and the request's.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..errors import PotstillError

FULL = "full"
ANSWERS_AND_INPUT = "answers+input"
META_KEY = "answer_ids"
"""Key of the sorted answer token ids in the student's potstill_student.json."""

_PIECES = re.compile(r"[^\W\d_]+|\d+|[^\w\s]+|_+")


def answer_ids(tokenizer, completions: Iterable[str]) -> list[int]:
    """Sorted ids of every token of `completions` (as training tokenises them) and EOS (pure)."""
    ids: set[int] = set()
    for c in completions:
        ids.update(tokenizer(c, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def request_ids(tokenizer, text: str) -> set[int]:
    """Ids an answer may copy from `text`: its own tokens and those of each word and word piece,
    alone and after a space (pure)."""
    parts = {text}
    for word in text.split():
        parts.add(word)
        parts.update(_PIECES.findall(word))
    variants = sorted(parts | {" " + p for p in parts})
    ids: set[int] = set()
    for enc in tokenizer(variants, add_special_tokens=False)["input_ids"]:
        ids.update(enc)
    return ids


def decode_ids(meta: dict[str, Any], output_vocab: str, model_dir: Path) -> list[int] | None:
    """The answer ids to decode with under `output_vocab`, or None for the full vocabulary. A
    model trained before potstill kept its answer ids cannot decode over them."""
    if output_vocab == FULL:
        return None
    if output_vocab != ANSWERS_AND_INPUT:
        raise PotstillError(f"student.output_vocab {output_vocab!r}: one of {FULL}, {ANSWERS_AND_INPUT}")
    ids = meta.get(META_KEY)
    if not ids:
        raise PotstillError(f"{model_dir}: this causal student keeps no answer vocabulary (trained before "
                            f"potstill kept one); retrain it, or set student.output_vocab: {FULL}")
    return list(ids)


class RestrictedHead(nn.Module):
    """The output layer scored on the union of the rows' allowed ids only (one small matmul),
    -inf for a row at the ids it does not allow and at every other id. `ids` (K,) is the union,
    `allow` (B, K) says which of them each row may write."""

    def __init__(self, head: nn.Module, ids: torch.Tensor, allow: torch.Tensor):
        super().__init__()
        self.ids, self.allow = ids, allow
        self.weight = head.weight[ids]  # (K, H)
        self.bias = head.bias[ids] if getattr(head, "bias", None) is not None else None
        self.vocab = head.weight.shape[0]

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, V)
        sel = h @ self.weight.to(h.dtype).T
        if self.bias is not None:
            sel = sel + self.bias.to(h.dtype)
        sel = sel.masked_fill(~self.allow.unsqueeze(1), float("-inf"))
        out = sel.new_full((*h.shape[:2], self.vocab), float("-inf"))
        out[..., self.ids] = sel
        return out


def union_ids(allowed: Sequence[Iterable[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (K,), allow (B, K)): the sorted union of the rows' allowed ids, and which each row allows."""
    rows = [set(a) for a in allowed]
    ids = sorted(set().union(*rows))
    allow = torch.tensor([[i in r for i in ids] for r in rows], dtype=torch.bool, device=device)
    return torch.tensor(ids, dtype=torch.long, device=device), allow


@contextmanager
def restricted_output(model, allowed: Sequence[Iterable[int]] | None) -> Iterator[None]:
    """Within the block the model's output layer scores row b's `allowed[b]` ids only (nothing
    changes when `allowed` is None). The original layer is put back on exit."""
    if allowed is None:
        yield
        return
    head = model.get_output_embeddings()
    model.set_output_embeddings(RestrictedHead(head, *union_ids(allowed, head.weight.device)))
    try:
        yield
    finally:
        model.set_output_embeddings(head)
