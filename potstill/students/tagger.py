"""Encoder tagger for `kind: extract`: JSON fields <-> character spans <-> BIO tags per token.

The way there (training): each field value is located in the input text (`align_fields`), the
character spans become one tag per token through the fast tokenizer's offset mapping
(`encode_tags`), and an `AutoModelForTokenClassification` learns them — from hard tags, and,
when the teacher is a local tagger, from its per-token tag distribution (KL, like the classifier).

The way back (prediction): tags per token -> spans (`decode_tags`) -> the value is the text
between the first and last token's offsets, so a predicted value is always a piece of the input.

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

Model building, layer cutting, precision and the training loop are the classifier's
(`students/classifier.py`); this module supplies the collate, loss and metric hooks.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .classifier import keep_layers, quiet_transformers, resolve_model_path, train_classifier, TrainConfig

Span = tuple[str, int, int]  # (field, start, end) character offsets into the text, end exclusive


# ---------------------------------------------------------------------------------------------
# alignment (pure)

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


# ---------------------------------------------------------------------------------------------
# BIO tags (pure)

def tag_names(fields: Sequence[str]) -> list[str]:
    """["O", "B-f1", "I-f1", "B-f2", ...]: the model's label list, in the schema's field order."""
    return ["O"] + [f"{p}-{f}" for f in fields for p in ("B", "I")]


def encode_tags(offsets: Sequence[tuple[int, int]], spans: Sequence[Span],
                tags: Sequence[str]) -> list[int]:
    """Tag id per token (-100 for special tokens, whose offsets are (0, 0)).

    A token belongs to a span when their characters overlap; the span's first token is B-, the
    rest I-. Tokens of no span are O."""
    index = {t: i for i, t in enumerate(tags)}
    out = []
    prev = None  # the span the previous real token belonged to
    for s, e in offsets:
        if s == e:
            out.append(-100)
            continue
        hit = next((k for k, (_, a, b) in enumerate(spans) if s < b and e > a), None)
        if hit is None:
            out.append(index["O"])
        else:
            out.append(index[f"{'I' if hit == prev else 'B'}-{spans[hit][0]}"])
        prev = hit
    return out


def decode_tags(text: str, offsets: Sequence[tuple[int, int]], tag_ids: Sequence[int],
                tags: Sequence[str], probs: Sequence[float] | None = None
                ) -> tuple[dict[str, str], dict[str, float]]:
    """Tags per token -> ({field: value}, {field: mean probability of the span's tags}).

    B-f opens a span; I-f continues an open span of f, and opens one when none is open (a
    common, forgiving reading of a stray I-); O or another field closes it. A field predicted
    more than once keeps its span of highest mean tag probability (its first when `probs` is None).
    Special tokens (offsets (0, 0)) are skipped."""
    found: list[tuple[str, int, int, float]] = []
    cur: list[Any] | None = None  # [field, start, end, [probs]]

    def close() -> None:
        nonlocal cur
        if cur is not None:
            found.append((cur[0], cur[1], cur[2], float(np.mean(cur[3])) if cur[3] else 1.0))
            cur = None

    for k, ((s, e), t) in enumerate(zip(offsets, tag_ids)):
        if s == e:
            continue
        name = tags[t]
        p = probs[k] if probs is not None else None
        if name == "O":
            close()
            continue
        kind, field = name.split("-", 1)
        if kind == "I" and cur is not None and cur[0] == field:
            cur[2] = e
        else:
            close()
            cur = [field, s, e, []]
        if p is not None:
            cur[3].append(p)
    close()
    values: dict[str, str] = {}
    conf: dict[str, float] = {}
    for field, s, e, p in found:
        if field not in values or (probs is not None and p > conf[field]):
            values[field], conf[field] = text[s:e], p
    return values, conf


# ---------------------------------------------------------------------------------------------
# model

def build_tagger(base: str, fields: Sequence[str], layers: Sequence[int] | None = None, seed: int = 13):
    """(model, tokenizer) tagging `fields` in BIO, from `base` (path or hub id), optionally cut to
    `layers`. A base that is already a tagger with the same tags (a fitted teacher) keeps its head."""
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    quiet_transformers()
    tags = tag_names(fields)
    path = resolve_model_path(base)
    config = AutoConfig.from_pretrained(path)
    same_head = [config.id2label.get(i) for i in range(len(config.id2label or {}))] == tags
    kwargs = {} if same_head else {
        "num_labels": len(tags), "id2label": dict(enumerate(tags)),
        "label2id": {t: i for i, t in enumerate(tags)}, "ignore_mismatched_sizes": True,
    }
    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(path, **kwargs)
    if layers is not None and list(layers) != list(range(model.config.num_hidden_layers)):
        keep_layers(model, layers)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{base}: the tagger needs a fast tokenizer (offset mapping)")
    return model, tokenizer


def load_tagger(path: str | Path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    quiet_transformers()
    path = Path(resolve_model_path(str(path)))
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no trained model here (config.json missing)")
    model = AutoModelForTokenClassification.from_pretrained(path)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def model_tags(model) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def tags_fields(tags: Sequence[str]) -> list[str]:
    """Field names of a BIO tag list, in order."""
    return [t[2:] for t in tags if t.startswith("B-")]


@dataclass
class Prediction:
    fields: dict[str, str]
    confidence: dict[str, float]
    """Per predicted field: mean probability of its span's tags."""
    token_confidence: float
    """Mean probability of the predicted tag over all tokens (the confidence of an empty answer)."""


@torch.inference_mode()
def predict_tags(model, tokenizer, texts: Sequence[str], batch_size: int = 64,
                 max_length: int = 64, with_logits: bool = False):
    """Predictions for `texts` (batches formed by length); with_logits also returns the
    per-text (T_i, K) float32 logits of the real tokens' positions (special tokens included)."""
    model.eval()
    device = next(model.parameters()).device
    tags = model_tags(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    preds: list[Prediction | None] = [None] * len(texts)
    logits_out: list[np.ndarray | None] = [None] * len(texts)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt", return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping").tolist()
        mask = enc["attention_mask"].tolist()
        logits = model(**enc.to(device)).logits.float()  # (B, T, K)
        p = torch.softmax(logits, -1)
        top_p, top = p.max(-1)  # (B, T)
        for j, i in enumerate(idx):
            n = int(sum(mask[j]))
            off = [tuple(o) for o in offsets[j][:n]]
            ids, pr = top[j, :n].tolist(), top_p[j, :n].tolist()
            values, conf = decode_tags(texts[i], off, ids, tags, pr)
            real = [q for (a, b), q in zip(off, pr) if a != b]
            preds[i] = Prediction(values, conf, float(np.mean(real)) if real else 1.0)
            if with_logits:
                logits_out[i] = logits[j, :n].cpu().numpy()
    return (preds, logits_out) if with_logits else preds


# ---------------------------------------------------------------------------------------------
# training: rows, and the hooks that fit `train_classifier`

@dataclass
class TagRow:
    text: str
    hard: list[int]
    """Tag id per token of `text` as the tokenizer encodes it (-100: special, or no label)."""
    soft: np.ndarray | None = None
    """(len(hard), K) teacher tag log-probabilities, or None."""


def tag_rows(tokenizer, texts: Sequence[str], spans: Sequence[Sequence[Span]], tags: Sequence[str],
             max_length: int) -> list[TagRow]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True)
    return [TagRow(t, encode_tags([tuple(o) for o in off], sp, tags))
            for t, off, sp in zip(texts, enc["offset_mapping"], spans)]


def _collate(tokenizer, max_length: int, n_tags: int):
    def collate(rows: list[TagRow]) -> dict[str, torch.Tensor]:
        enc = tokenizer([r.text for r in rows], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        T = enc["input_ids"].shape[1]
        hard = torch.full((len(rows), T), -100, dtype=torch.long)
        for b, r in enumerate(rows):
            hard[b, : len(r.hard)] = torch.tensor(r.hard[:T])
        enc["hard"] = hard  # (B, T)
        has_soft = [r.soft is not None for r in rows]
        if any(has_soft):
            soft = torch.zeros((len(rows), T, n_tags), dtype=torch.float32)
            for b, r in enumerate(rows):
                if r.soft is not None:
                    soft[b, : len(r.soft)] = torch.from_numpy(r.soft[:T])
            enc["soft"] = soft  # (B, T, K) log-probs
            enc["soft_mask"] = torch.tensor(has_soft)
        return dict(enc)
    return collate


def tagger_loss(temperature: float, kd_weight: float, ce_weight: float):
    """Loss hook: the classifier's distill_loss over the tokens that carry a tag.

    logits (B, T, K); hard (B, T) with -100 for special/padding tokens; soft (B, T, K) teacher
    log-probabilities for rows whose soft_mask is True. Token positions are flattened, so the KL
    term is the mean over tagged tokens of rows with a teacher distribution."""
    from ..losses import distill_loss

    def loss_fn(logits, hard, soft, soft_mask):
        tok = hard != -100  # (B, T)
        loss = distill_loss(logits[tok], None, hard[tok], temperature, 0.0, ce_weight)
        if soft is not None and kd_weight > 0:
            kd_tok = tok & soft_mask[:, None]
            if bool(kd_tok.any()):
                loss = loss + distill_loss(logits[kd_tok], soft[kd_tok], None, temperature, kd_weight, 0.0)
        return loss
    return loss_fn


def token_f1_metric(accelerator, model, loader) -> float:
    """Metric hook: micro F1 over tokens whose gold or predicted tag is not O (tag 0)."""
    model.eval()
    tp = fp = fn = 0
    with torch.inference_mode():
        for batch in loader:
            hard = batch.pop("hard")
            batch.pop("soft", None), batch.pop("soft_mask", None)
            pred = model(**batch).logits.argmax(-1)
            pred, hard = accelerator.gather_for_metrics((pred, hard))
            real = hard != -100
            tp += int(((pred == hard) & (hard != 0) & real).sum())
            fp += int(((pred != hard) & (pred != 0) & real).sum())
            fn += int(((pred != hard) & (hard != 0) & real).sum())
    model.train()
    return 2 * tp / max(2 * tp + fp + fn, 1)


def train_tagger(model, tokenizer, train_rows: list[TagRow], val_rows: list[TagRow], out_dir: Path,
                 cfg: TrainConfig, fingerprint: str, desc: str = "train", teacher=None) -> dict[str, Any]:
    """`train_classifier` with the tagger's hooks; the validation metric (kept under the
    classifier's `best_val_accuracy` key) is token-level tag F1 (`token_f1_metric`)."""
    n_tags = model.config.num_labels
    result = train_classifier(model, tokenizer, train_rows, val_rows, out_dir, cfg, fingerprint, desc,
                              collate=_collate(tokenizer, cfg.max_length, n_tags),
                              loss_fn=tagger_loss(cfg.temperature, cfg.kd_weight, cfg.ce_weight),
                              metric_fn=token_f1_metric, teacher=teacher)
    result["val_metric"] = "token_tag_f1"
    return result
