"""Training stages of `kind: extract`: `teacher fit` (a BIO tagger on the gold fields, all layers)
and `train` (the tagger student from the teacher's kept answers, or the gold-only baseline).

The distillation signal: hard tags from the teacher's JSON (values aligned to the text) always;
plus, when the teacher is a local tagger sharing the student's vocabulary (kind fit or hf; the
student initialised from it by default), its per-token tag distribution: KL(teacher_T ||
student_T) * T^2 on every tagged token, weighted by `train.kd_weight`, with the hard tags'
cross-entropy weighted by `train.ce_weight`. Without soft tags (an API teacher) the hard tags'
cross-entropy has weight 1, as in the gold-only baseline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .data.inputs import Example, read_jsonl
from .data.prepare import prepare_inputs
from .extract_schema import clean_fields
from .manifest import file_hash, fingerprint, read_manifest, up_to_date, write_manifest
from .paths import HISTORY, KEPT, RunPaths
from .progress import log
from .spec import TaskSpec
from .schedule import schedule_fields
from .students.classifier import TrainConfig, count_params, resolve_model_path
from .students.tagger import (
    Span, TagRow, align_fields, build_tagger, load_tagger, model_tags, tag_names, tag_rows, train_tagger,
)


def gold_spans(examples: list[Example]) -> tuple[list[str], list[list[Span]], int]:
    """(texts, spans, values dropped) of the examples with gold fields, aligned to their texts."""
    texts, spans, dropped = [], [], 0
    for ex in examples:
        if ex.gold is None:
            continue
        sp, drops = align_fields(ex.text, clean_fields(json.loads(ex.gold)))
        texts.append(ex.text)
        spans.append(sp)
        dropped += len(drops)
    return texts, spans, dropped


def fit_tagger_teacher(spec: TaskSpec, run: RunPaths) -> dict[str, Any]:
    """Fine-tune `teacher.fit.model` (all layers) as a BIO tagger on the gold fields."""
    inputs = prepare_inputs(spec, run)
    f = spec.teacher.fit
    fields = inputs.labels
    texts, spans, dropped = gold_spans(inputs.train)
    if not texts:
        raise ValueError(f"{spec.data.train}: no gold fields to fit a teacher on")
    fp = fingerprint("teacher", "tagger", inputs.dataset_hash, fields, f.model_dump(), spec.train.seed,
                     spec.train.precision)
    if up_to_date(run.teacher, fp, "config.json"):
        log(f"teacher fit: up to date in {run.teacher}")
        return read_manifest(run.teacher)
    model, tok = build_tagger(f.model, fields, seed=spec.train.seed)
    tags = tag_names(fields)
    rows = tag_rows(tok, texts, spans, tags, f.max_length)
    vt, vs, _ = gold_spans(inputs.validation)
    log(f"teacher fit: tagger over {len(fields)} fields, {len(rows)} gold rows "
        f"({dropped} gold values not found in their text, left out)")
    cfg = TrainConfig(epochs=f.epochs, batch_size=f.batch_size, lr=f.lr, max_length=f.max_length,
                      kd_weight=0.0, ce_weight=1.0, seed=spec.train.seed,
                      precision=spec.train.precision, checkpoint_every=spec.train.checkpoint_every,
                      **schedule_fields(f))
    result = train_tagger(model, tok, rows, tag_rows(tok, vt, vs, tags, f.max_length), run.teacher,
                          cfg, fp, desc="teacher fit")
    return write_manifest(run.teacher, "teacher_fit", spec, fingerprint=fp, base_model=f.model,
                          dataset_hash=inputs.dataset_hash, parents={"inputs": str(run.inputs)},
                          params=count_params(model), gold_values_dropped=dropped, metrics=result)


def _local_teacher_dir(spec: TaskSpec, run: RunPaths) -> Path | None:
    if spec.teacher.kind == "fit":
        return run.teacher
    if spec.teacher.kind == "hf":
        p = Path(resolve_model_path(spec.teacher.model))
        return p if (p / "config.json").exists() else None
    return None


@torch.inference_mode()
def teacher_soft_tags(teacher_dir: Path, student_tok, texts: list[str], tags: list[str],
                      max_length: int, batch_size: int = 64) -> list[np.ndarray] | None:
    """Per text, (T_i, K) teacher tag log-probabilities over the student's tags, on the student's
    tokenisation (T_i tokens, special ones included); None when the teacher's vocabulary or tag
    set does not match the student's (then the student learns from hard tags only)."""
    model, ttok = load_tagger(teacher_dir)
    if ttok.get_vocab() != student_tok.get_vocab():
        log("train: the teacher's vocabulary differs from the student's: hard tags only")
        return None
    own = model_tags(model)
    if not set(tags) <= set(own):
        log("train: the teacher's tags do not cover the student's: hard tags only")
        return None
    cols = torch.tensor([own.index(t) for t in tags])
    out: list[np.ndarray | None] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        enc = student_tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        logits = model(**enc).logits.float()[..., cols]  # (B, T, K) over the student's tags
        logp = torch.log_softmax(logits, -1).numpy()
        n = enc["attention_mask"].sum(-1).tolist()
        for j, i in enumerate(idx):
            out[i] = logp[j, : n[j]].astype(np.float32)
    return out  # type: ignore[return-value]


def train_tagger_student(spec: TaskSpec, run: RunPaths, mode: Literal["student", "baseline"] = "student",
                         *, records: Path | None = None, out: Path | None = None) -> dict[str, Any]:
    """Train the tagger student (objective `train.objective`: distill, gold or both) or the
    gold-only baseline; see the module doc for the signal."""
    from .train import _student_init

    inputs = prepare_inputs(spec, run)
    t, s = spec.train, spec.student
    objective = "gold" if mode == "baseline" else t.objective
    out = out or run.model_dir(mode)
    records = records or run.filtered
    fields = inputs.labels
    tags = tag_names(fields)
    vt, vs, _ = gold_spans(inputs.validation)
    if not vt:
        raise ValueError("the validation split has no gold fields")
    parents: dict[str, str] = {"inputs": str(run.inputs)}
    teacher_identity = None
    if objective == "gold":
        texts, spans, _ = gold_spans(inputs.train)
        data_hash = inputs.dataset_hash
    else:
        kept_path = records / KEPT
        if not kept_path.exists():
            raise FileNotFoundError(f"{kept_path}: no filtered records; run `potstill filter` first")
        kept = read_jsonl(kept_path)
        texts = [r["text"] for r in kept]
        spans = [[tuple(x) for x in r["spans"]] for r in kept]
        if objective == "both":  # gold fields, where the record has them, over the teacher's
            by_text = dict(zip(*gold_spans(inputs.train)[:2]))
            spans = [by_text.get(tx, sp) for tx, sp in zip(texts, spans)]
            have = set(texts)
            for tx, sp in by_text.items():
                if tx not in have:
                    texts.append(tx)
                    spans.append(sp)
        data_hash = file_hash(kept_path)
        teacher_identity = read_manifest(records).get("teacher")
        parents["filtered"] = str(records)
    if not texts:
        raise ValueError(f"no training rows for the {mode} ({objective}); check the filter report")
    # the gold-only baseline never sees the teacher, not even its weights
    init = s.model if mode == "baseline" else _student_init(spec, run)
    init_path = Path(resolve_model_path(init))
    init_weights = file_hash(*sorted(init_path.glob("*.safetensors"))) if init_path.exists() else init
    teacher_dir = _local_teacher_dir(spec, run) if objective != "gold" and t.kd_weight > 0 else None
    teacher_weights = (file_hash(*sorted(teacher_dir.glob("*.safetensors")))
                       if teacher_dir is not None and any(teacher_dir.glob("*.safetensors")) else None)
    from .hidden_kd import hidden_teacher, hidden_teacher_hash

    hidden_hash = hidden_teacher_hash(spec, run, objective)
    fp = fingerprint(mode, "tagger", objective, data_hash, fields, s.model_dump(),
                     t.model_dump(exclude={"baseline", "hidden_weight"} if objective == "gold" else {"baseline"}),
                     init, init_weights, teacher_weights,
                     *([hidden_hash] if hidden_hash else []))
    if up_to_date(out, fp, "config.json", HISTORY):
        log(f"{mode}: up to date in {out}")
        return read_manifest(out)
    model, tok = build_tagger(init, fields, s.layers, seed=t.seed)
    hidden, layer_map, _ = hidden_teacher(spec, run, model, tok, objective, init)
    rows: list[TagRow] = tag_rows(tok, texts, spans, tags, s.max_length)
    soft = teacher_soft_tags(teacher_dir, tok, texts, tags, s.max_length) if teacher_dir else None
    if soft is not None:
        for r, lp in zip(rows, soft):
            r.soft = lp
    signal = "hard tags" if objective == "gold" else (
        "teacher tag distribution (KL) + hard tags" if soft is not None else "teacher's hard tags")
    log(f"{mode}: {objective} objective ({signal}), {len(rows)} rows, init from {init}, layers "
        f"{s.layers if s.layers is not None else 'all'}, {count_params(model) / 1e6:.1f}M params")
    cfg = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
                      warmup_ratio=t.warmup_ratio, temperature=t.temperature,
                      kd_weight=t.kd_weight if soft is not None else 0.0,
                      ce_weight=t.ce_weight if soft is not None else 1.0,
                      seed=t.seed, precision=t.precision, max_length=s.max_length,
                      checkpoint_every=t.checkpoint_every, **schedule_fields(t),
                      hidden_weight=t.hidden_weight if hidden is not None else 0.0, layer_map=layer_map)
    result = train_tagger(model, tok, rows, tag_rows(tok, vt, vs, tags, s.max_length), out, cfg, fp, desc=mode,
                          teacher=hidden)
    return write_manifest(out, mode, spec, fingerprint=fp, objective=objective, signal=signal,
                          init_from=init, teacher=teacher_identity, dataset_hash=inputs.dataset_hash,
                          train_data_hash=data_hash, parents=parents, params=count_params(model),
                          layers=s.layers, metrics=result)
