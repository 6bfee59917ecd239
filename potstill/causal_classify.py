"""`kind: classify` with a causal-LM student: the generated answer read as one of the labels,
scored by accuracy and macro-F1 like an encoder student (so report.json / report.html carry the
classify columns), beside the text metrics (exact match, token F1). Pure functions of strings."""

from __future__ import annotations

import json
from typing import Any, Sequence

from .generate_eval import normalize_answer


def answer_label(answer: str | None, labels: Sequence[str]) -> str | None:
    """The label a generated answer names, or None (pure).

    In order: the answer equals a label after `normalize_answer`; a JSON object's "label"; the
    answer starts with a label (longest label first, so "spam filter" beats "spam"). Anything
    else is no label (scored wrong, counted as invalid)."""
    if answer is None:
        return None
    by_norm = {normalize_answer(l): l for l in labels}
    a = normalize_answer(answer)
    if a in by_norm:
        return by_norm[a]
    s = answer.strip()
    if s.startswith("{"):
        try:
            obj = json.loads(s)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("label"), str):
            return by_norm.get(normalize_answer(obj["label"]))
    for norm in sorted(by_norm, key=len, reverse=True):
        if norm and (a == norm or a.startswith(norm + " ")):
            return by_norm[norm]
    return None


def label_metrics(gold: Sequence[str | None], answers: Sequence[str | None],
                  labels: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro-F1 over `labels` (sklearn; an unreadable answer counts as a miss for every
    label) and the share of answers that name no label."""
    from sklearn.metrics import f1_score

    pred = [answer_label(a, labels) for a in answers]
    pairs = [(g, p) for g, p in zip(gold, pred) if g is not None]
    if not pairs:
        return {"accuracy": 0.0, "macro_f1": 0.0, "invalid_label_share": 0.0}
    none = "\u0000none"  # never a label
    g = [x for x, _ in pairs]
    p = [y if y is not None else none for _, y in pairs]
    return {"accuracy": round(sum(a == b for a, b in zip(g, p)) / len(g), 4),
            "macro_f1": round(float(f1_score(g, p, labels=list(labels), average="macro", zero_division=0)), 4),
            "invalid_label_share": round(sum(y is None for _, y in pairs) / len(pairs), 4)}
