"""Encoder tagger for `kind: extract`: JSON fields <-> character spans <-> BIO tags per token.

The way there (training): each field value is located in the input text (`align_fields`), the
character spans become one tag per token through the fast tokenizer's offset mapping
(`encode_tags`), and an `AutoModelForTokenClassification` learns them — from hard tags, and,
when the teacher is a local tagger, from its per-token tag distribution (KL, like the classifier).

The way back (prediction): tags per token -> spans (`decode_tags`) -> the value is the text
between the first and last token's offsets, so a predicted value is always a piece of the input.

Alignment (values -> character spans) is `tasks/align.py`'s.

The distillation signal: hard tags from the teacher's JSON (values aligned to the text) always;
plus, when the teacher is a local tagger sharing the student's vocabulary (kind fit or hf; the
student initialised from it by default), its per-token tag distribution: KL(teacher_T ||
student_T) * T^2 on every tagged token, weighted by `train.kd_weight`, with the hard tags'
cross-entropy weighted by `train.ce_weight`. Without soft tags (an API teacher) the hard tags'
cross-entropy has weight 1, as in the gold-only baseline.

Model building, layer cutting, precision and the training loop are the classifier's
(`students/classifier.py`); this module supplies the collate, loss and metric hooks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ..answers import clean_fields, validate_fields
from ..data.inputs import Example, Inputs, read_jsonl
from ..errors import PotstillError
from ..manifest import file_hash, fingerprint, read_manifest, up_to_date, write_manifest
from ..paths import HISTORY, KEPT, RunPaths
from ..progress import log
from ..schedule import schedule_fields
from ..spec import TaskSpec
from ..tasks.align import Span, align_fields
from ..timing import Timer
from .base import Student, baseline_train
from .classifier import TrainConfig, throughput_sample, train_classifier
from .hf import (
    build_encoder,
    count_params,
    dir_size_mb,
    encoder_init,
    load_encoder,
    local_teacher_or_none,
    resolve_model_path,
)
from .hidden_kd import hidden_teacher, hidden_teacher_hash
from .width import narrow_ffn, width_note

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
    model, tokenizer = build_encoder(base, tag_names(fields), "token", layers, seed)
    if not getattr(tokenizer, "is_fast", False):
        raise PotstillError(f"{base}: the tagger needs a fast tokenizer (offset mapping)")
    return model, tokenizer


def load_tagger(path: str | Path):
    return load_encoder(path, "token")


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
    if model.training:  # eval() walks every module: once, not on each call (the server calls per request)
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


# ---------------------------------------------------------------------------------------------
# prediction as JSON objects, and timing

Obj = dict[str, Any]


def tagger_objects(model, tok, texts: Sequence[str], schema: Obj, batch_size: int, max_length: int
                   ) -> list[Obj | None]:
    out: list[Obj | None] = []
    for p in predict_tags(model, tok, texts, batch_size, max_length):
        obj = {k: v for k, v in p.fields.items() if k in schema["properties"]}
        out.append(obj if validate_fields(obj, schema) is None else None)
    return out


def tagger_timer(model, tok, samples: int, max_length: int) -> Timer:
    """One input at a time, the whole path to its fields (the evaluation's latency columns)."""
    return Timer(lambda text: predict_tags(model, tok, [text], 1, max_length), samples)


def tagger_throughput(model, tok, texts: Sequence[str], batch_size: int, max_length: int,
                      seed: int = 0) -> dict[str, float]:
    """Batch throughput (inputs/s) over `throughput_sample(texts)`."""
    batch = throughput_sample(texts, seed)
    t0 = time.perf_counter()
    predict_tags(model, tok, batch, batch_size, max_length)
    return {"throughput_per_s": round(len(batch) / (time.perf_counter() - t0), 1)}


# ---------------------------------------------------------------------------------------------
# the Student: stage hooks (teacher fit, train, evaluate)


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


def fit_tagger_teacher(spec: TaskSpec, run: RunPaths, inputs: Inputs) -> dict[str, Any]:
    """Fine-tune `teacher.fit.model` (all layers) as a BIO tagger on the gold fields."""
    f = spec.teacher.fit
    fields = inputs.labels
    texts, spans, dropped = gold_spans(inputs.train)
    if not texts:
        raise PotstillError(f"{spec.data.train}: no gold fields to fit a teacher on")
    fp = fingerprint("teacher", "tagger", inputs.gold_hash, fields, f.identity(), spec.train.seed,
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
    cfg = TrainConfig(epochs=f.epochs, batch_size=f.batch_size, lr=f.lr, head_lr_scale=f.head_lr_scale,
                      max_length=f.max_length,
                      kd_weight=0.0, ce_weight=1.0, seed=spec.train.seed,
                      precision=spec.train.precision, checkpoint_every=spec.train.checkpoint_every,
                      freeze_embeddings=f.freeze_embeddings, **schedule_fields(f))
    result = train_tagger(model, tok, rows, tag_rows(tok, vt, vs, tags, f.max_length), run.teacher,
                          cfg, fp, desc="teacher fit")
    return write_manifest(run.teacher, "teacher_fit", spec, fingerprint=fp, base_model=f.model,
                          dataset_hash=inputs.dataset_hash, parents={"inputs": str(run.inputs)},
                          params=count_params(model), gold_values_dropped=dropped, metrics=result)


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


def train_tagger_student(spec: TaskSpec, run: RunPaths, inputs: Inputs, mode: Literal["student", "baseline"] = "student",
                         *, records: Path | None = None, out: Path | None = None) -> dict[str, Any]:
    """Train the tagger student (objective `train.objective`: distill, gold or both) or the
    gold-only baseline; see the module doc for the signal."""
    t, s = spec.train, spec.student
    objective = "gold" if mode == "baseline" else t.objective
    out = out or run.model_dir(mode)
    records = records or run.filtered
    fields = inputs.labels
    tags = tag_names(fields)
    vt, vs, _ = gold_spans(inputs.validation)
    if not vt:
        raise PotstillError("the validation split has no gold fields")
    parents: dict[str, str] = {"inputs": str(run.inputs)}
    teacher_identity = None
    if objective == "gold":
        texts, spans, _ = gold_spans(inputs.train)
        data_hash = inputs.gold_hash
    else:
        kept_path = records / KEPT
        if not kept_path.exists():
            raise PotstillError(f"{kept_path}: no filtered records; run `potstill filter` first")
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
        raise PotstillError(f"no training rows for the {mode} ({objective}); check the filter report")
    if mode == "baseline":
        t = baseline_train(t, records / KEPT, texts)
    # the gold-only baseline never sees the teacher, not even its weights
    init = s.model if mode == "baseline" else encoder_init(spec, run)
    init_path = Path(resolve_model_path(init))
    init_weights = file_hash(*sorted(init_path.glob("*.safetensors"))) if init_path.exists() else init
    teacher_dir = local_teacher_or_none(spec, run) if objective != "gold" and t.kd_weight > 0 else None
    teacher_weights = (file_hash(*sorted(teacher_dir.glob("*.safetensors")))
                       if teacher_dir is not None and any(teacher_dir.glob("*.safetensors")) else None)
    hidden_hash = hidden_teacher_hash(spec, run, objective)
    fp = fingerprint(mode, "tagger", objective, data_hash, fields, s.identity(),
                     t.identity(exclude={"baseline", "hidden_weight"} if objective == "gold" else {"baseline"}),
                     init, init_weights, teacher_weights,
                     *([hidden_hash] if hidden_hash else []))
    if up_to_date(out, fp, "config.json", HISTORY):
        log(f"{mode}: up to date in {out}")
        return read_manifest(out)
    model, tok = build_tagger(init, fields, s.layers, seed=t.seed)
    narrow_ffn(model, tok, texts, s.intermediate_size, s.max_length, t.seed)
    hidden, layer_map, _ = hidden_teacher(spec, run, model, tok, objective, init)
    rows: list[TagRow] = tag_rows(tok, texts, spans, tags, s.max_length)
    soft = teacher_soft_tags(teacher_dir, tok, texts, tags, s.max_length) if teacher_dir else None
    if soft is not None:
        for r, lp in zip(rows, soft):
            r.soft = lp
    signal = "hard tags" if objective == "gold" else (
        "teacher tag distribution (KL) + hard tags" if soft is not None else "teacher's hard tags")
    log(f"{mode}: {objective} objective ({signal}), {len(rows)} rows, init from {init}, layers "
        f"{s.layers if s.layers is not None else 'all'}{width_note(s.intermediate_size)}, "
        f"{count_params(model) / 1e6:.1f}M params")
    cfg = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, head_lr_scale=t.head_lr_scale,
                      weight_decay=t.weight_decay,
                      warmup_ratio=t.warmup_ratio, temperature=t.temperature,
                      kd_weight=t.kd_weight if soft is not None else 0.0,
                      ce_weight=t.ce_weight if soft is not None else 1.0,
                      seed=t.seed, precision=t.precision, max_length=s.max_length,
                      checkpoint_every=t.checkpoint_every, freeze_embeddings=t.freeze_embeddings,
                      **schedule_fields(t),
                      hidden_weight=t.hidden_weight if hidden is not None else 0.0, layer_map=layer_map)
    result = train_tagger(model, tok, rows, tag_rows(tok, vt, vs, tags, s.max_length), out, cfg, fp, desc=mode,
                          teacher=hidden)
    return write_manifest(out, mode, spec, fingerprint=fp, objective=objective, signal=signal,
                          init_from=init, teacher=teacher_identity, dataset_hash=inputs.dataset_hash,
                          train_data_hash=data_hash, parents=parents, params=count_params(model),
                          layers=s.layers, metrics=result)


class TaggerStudent:
    """An encoder BIO tagger (`student.kind: tagger`, for `kind: extract`)."""

    kind = "tagger"

    def fit_teacher(self, spec: TaskSpec, run: RunPaths, inputs: Inputs) -> dict[str, Any]:
        return fit_tagger_teacher(spec, run, inputs)

    def train(self, spec: TaskSpec, run: RunPaths, inputs: Inputs, mode: Literal["student", "baseline"] = "student",
              *, records: Path | None = None, out: Path | None = None) -> dict[str, Any]:
        return train_tagger_student(spec, run, inputs, mode, records=records, out=out)

    def trained(self, path: Path) -> bool:
        return (Path(path) / "config.json").exists()

    def evaluate(self, spec: TaskSpec, task: Any, path: Path, texts: list[str], labels: list[str],
                 name: str) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        assert spec.json_schema is not None
        model, tok = load_tagger(path)
        ml = spec.student.max_length
        preds = tagger_objects(model, tok, texts, spec.json_schema, spec.eval.batch_size, ml)
        m = read_manifest(path)
        info = {"params": count_params(model), "size_mb": dir_size_mb(path),
                "layers": model.config.num_hidden_layers,
                **tagger_throughput(model, tok, texts, spec.eval.batch_size, ml),
                "signal": m.get("signal"),
                "best_val_token_f1": m.get("metrics", {}).get("best_val_accuracy")}
        return preds, info, {"timer": tagger_timer(model, tok, spec.eval.latency_samples, ml)}


STUDENT: Student = TaggerStudent()
