"""Scores of a causal-LM student's generated answers beyond exact match and token F1.

- `kind: classify`: the answer read as one of the labels, scored by accuracy and macro-F1 like
  an encoder student (so report.json / report.html carry the classify columns);
- `kind: generate` with a `json_schema` (a JSON object per answer, e.g. examples/snips-json):
  field-level precision / recall / F1, JSON validity and exact match of the objects, with the
  extract task's scorer (extract_eval.model_metrics), so it sits beside a BIO-tagger student;
- generation speed: answers and tokens per second batched, and latency at batch 1.

Metric functions are pure functions of strings; `time_generation` runs the model."""

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


def json_objects(answers: Sequence[str | None], schema: dict[str, Any]) -> list[dict[str, Any] | None]:
    """Each answer's first JSON object, cleaned and checked against the schema (None when there is
    none or it breaks the schema), as the extract task parses a teacher's reply."""
    from .extract_schema import parse_answer

    return [parse_answer(a, schema)[0] for a in answers]


def json_metrics(gold: Sequence[str | None], answers: Sequence[str | None], schema: dict[str, Any],
                 teacher: Sequence[str | None] | None = None) -> dict[str, Any]:
    """field_f1 / field_precision / field_recall (micro over (field, value) pairs), json_validity,
    exact_match of the objects, per_field; agreement and field F1 against the teacher's objects
    when given. Gold answers are JSON object strings."""
    from .extract_eval import model_metrics
    from .extract_schema import schema_fields

    gold_objs = []
    for i, g in enumerate(gold):
        try:
            obj = json.loads(g) if g else {}
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise ValueError(f"test row {i + 1}: the gold answer {str(g)[:80]!r} is not a JSON object, but the "
                             "spec has a json_schema (generate answers are scored as JSON objects)")
        gold_objs.append(obj)
    pred = json_objects(answers, schema)
    t_objs = json_objects(teacher, schema) if teacher is not None else None
    return model_metrics(gold_objs, pred, schema_fields(schema), t_objs)


def time_generation(model, tok, prompts: Sequence[str], max_new_tokens: int, max_length: int,
                    objective: str = "sequence", n: int = 8) -> dict[str, Any]:
    """Latency of single answers (batch 1, greedy, to EOS or max_new_tokens) over the first `n`
    prompts: p50 / p95 ms, and generated tokens per second at batch 1."""
    import time

    import numpy as np

    from .students.causal_lm import generate

    generate(model, tok, list(prompts[:1]), 2, 1, objective, max_length)  # warm-up
    ms, toks = [], 0
    for p in list(prompts[:n]):
        t0 = time.perf_counter()
        g = generate(model, tok, [p], max_new_tokens, 1, objective, max_length)[0]
        ms.append((time.perf_counter() - t0) * 1000)
        toks += len(g.token_logprobs)
    return {"latency_ms_p50": round(float(np.percentile(ms, 50)), 1),
            "latency_ms_p95": round(float(np.percentile(ms, 95)), 1),
            "gen_tokens_per_s_b1": round(toks / max(sum(ms) / 1000, 1e-9), 1)}
