"""Stages that train encoders: `teacher fit` (gold labels, all layers) and `train` (the student,
distilled from the teacher's kept records, and the gold-only baseline of the same shape)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .data.inputs import Example, read_jsonl
from .data.prepare import Inputs, prepare_inputs
from .manifest import file_hash, fingerprint, read_manifest, up_to_date, write_manifest
from .paths import HISTORY, KEPT, SOFT, RunPaths
from .progress import log
from .schedule import schedule_fields
from .spec import TaskSpec
from .students.classifier import (
    TrainConfig, TrainRow, build_classifier, count_params, resolve_model_path, train_classifier,
)


def _gold_rows(examples: list[Example], labels: list[str]) -> list[TrainRow]:
    index = {l: i for i, l in enumerate(labels)}
    return [TrainRow(ex.text, index[ex.gold]) for ex in examples if ex.gold is not None]


def fit_teacher(spec: TaskSpec, run: RunPaths) -> dict[str, Any]:
    """Fine-tune `teacher.fit.model` (all layers) on the gold labels: the teacher of a `fit` spec,
    and the seeds' plain fine-tuning path."""
    if spec.kind == "extract":  # a BIO tagger on the gold fields: extract_train.py
        from .extract_train import fit_tagger_teacher

        return fit_tagger_teacher(spec, run)
    inputs = prepare_inputs(spec, run)
    f = spec.teacher.fit
    train_rows = _gold_rows(inputs.train, inputs.labels)
    if not train_rows:
        raise ValueError(f"{spec.data.train}: no gold labels to fit a teacher on")
    fp = fingerprint("teacher", inputs.dataset_hash, inputs.labels, f.model_dump(), spec.train.seed,
                     spec.train.precision)
    if up_to_date(run.teacher, fp, "config.json"):
        log(f"teacher fit: up to date in {run.teacher}")
        return read_manifest(run.teacher)
    model, tok = build_classifier(f.model, inputs.labels, seed=spec.train.seed)
    cfg = TrainConfig(epochs=f.epochs, batch_size=f.batch_size, lr=f.lr, max_length=f.max_length,
                      kd_weight=0.0, ce_weight=1.0, seed=spec.train.seed,
                      precision=spec.train.precision, checkpoint_every=spec.train.checkpoint_every,
                      **schedule_fields(f))
    result = train_classifier(model, tok, train_rows, _gold_rows(inputs.validation, inputs.labels),
                              run.teacher, cfg, fp, desc="teacher fit")
    return write_manifest(run.teacher, "teacher_fit", spec, fingerprint=fp,
                          base_model=f.model, dataset_hash=inputs.dataset_hash,
                          parents={"inputs": str(run.inputs)}, params=count_params(model),
                          metrics=result)


def _student_init(spec: TaskSpec, run: RunPaths) -> str:
    """Where the student's weights come from: the teacher when it is a local encoder of the same
    family (same architecture and width, so its layers drop in), else `student.model`."""
    s = spec.student
    if s.init == "base":
        return s.model
    teacher_dir = None
    if spec.teacher.kind == "fit":
        teacher_dir = run.teacher
    elif spec.teacher.kind == "hf":
        p = Path(resolve_model_path(spec.teacher.model))
        teacher_dir = p if p.exists() else None
    if teacher_dir is None or not (teacher_dir / "config.json").exists():
        if s.init == "teacher":
            raise ValueError("student.init is 'teacher' but the teacher is not a local encoder")
        return s.model
    if s.init == "teacher":
        return str(teacher_dir)
    t_cfg = json.loads((teacher_dir / "config.json").read_text())
    base = Path(resolve_model_path(s.model))
    b_cfg = json.loads((base / "config.json").read_text()) if base.exists() else {}
    same = all(t_cfg.get(k) == b_cfg.get(k) for k in ("model_type", "hidden_size", "vocab_size"))
    return str(teacher_dir) if same else s.model


def train_student(spec: TaskSpec, run: RunPaths,
                  mode: Literal["student", "baseline"] = "student", *,
                  records: Path | None = None, out: Path | None = None) -> dict[str, Any]:
    """Train the student (objective from `train.objective`) or the gold-only baseline.

    `records` (default: the run's filtered/) is a folder with kept.jsonl + soft.npy to learn from;
    `out` (default: the run's student/ or baseline/) where the model goes: a round of
    `potstill iterate` trains on its own records into its own folder."""
    if spec.student.kind == "tagger":  # kind extract: extract_train.py
        from .extract_train import train_tagger_student

        return train_tagger_student(spec, run, mode, records=records, out=out)
    if spec.student.kind == "causal_lm":
        from .train_causal import train_causal_student

        return train_causal_student(spec, run, mode, records=records, out=out)
    inputs: Inputs = prepare_inputs(spec, run)
    t = spec.train
    objective = "gold" if mode == "baseline" else t.objective
    out = out or run.model_dir(mode)
    records = records or run.filtered
    labels = inputs.labels
    index = {l: i for i, l in enumerate(labels)}
    val_rows = _gold_rows(inputs.validation, labels)
    if not val_rows:
        raise ValueError("the validation split has no gold labels")
    parents: dict[str, str] = {"inputs": str(run.inputs)}
    teacher_identity = None
    if objective == "gold":
        rows = _gold_rows(inputs.train, labels)
        data_hash = inputs.dataset_hash
        if not rows:
            raise ValueError(f"{spec.data.train}: no gold labels for the gold-only objective")
    else:
        kept_path = records / KEPT
        if not kept_path.exists():
            raise FileNotFoundError(f"{kept_path}: no filtered records; run `potstill filter` first")
        kept = read_jsonl(kept_path)
        soft = np.load(records / SOFT)  # (N, C) probabilities, NaN rows where none
        logp = np.log(np.clip(soft, 1e-12, 1.0)).astype(np.float32)
        rows = []
        for rec, lp, p in zip(kept, logp, soft):
            hard_label = rec["gold"] if objective == "both" and rec.get("gold") else rec["label"]
            rows.append(TrainRow(rec["text"], index[hard_label], None if np.isnan(p).any() else lp))
        if objective == "both":  # gold rows the filter dropped still teach through their gold label
            have = {r.text for r in rows}
            rows += [r for r in _gold_rows(inputs.train, labels) if r.text not in have]
        data_hash = file_hash(kept_path, records / SOFT)
        teacher_identity = read_manifest(records).get("teacher")
        parents["filtered"] = str(records)
    if not rows:
        raise ValueError(f"no training rows for the {mode} ({objective}); check the filter report")
    # the gold-only baseline never sees the teacher, not even its weights: it is what
    # fine-tuning the small model alone gives, the other side of "fine-tune or distill?"
    init = spec.student.model if mode == "baseline" else _student_init(spec, run)
    s = spec.student
    init_path = Path(resolve_model_path(init))
    init_weights = file_hash(*sorted(init_path.glob("*.safetensors"))) if init_path.exists() else init
    from .hidden_kd import hidden_teacher, hidden_teacher_hash

    teacher_weights = hidden_teacher_hash(spec, run, objective)
    # the baseline never reads the teacher: its hidden-state weight is not part of what it is
    skip = {"baseline", "hidden_weight"} if objective == "gold" else {"baseline"}
    fp = fingerprint(mode, objective, data_hash, labels, s.model_dump(), t.model_dump(exclude=skip),
                     init, init_weights, *([teacher_weights] if teacher_weights else []))
    if up_to_date(out, fp, "config.json", HISTORY):
        log(f"{mode}: up to date in {out}")
        return read_manifest(out)
    model, tok = build_classifier(init, labels, s.layers, seed=t.seed)
    teacher, layer_map, _ = hidden_teacher(spec, run, model, tok, objective, init)
    log(f"{mode}: {objective} objective, {len(rows)} rows, init from {init if init != s.model else s.model}"
        f", layers {s.layers if s.layers is not None else 'all'}, {count_params(model) / 1e6:.1f}M params")
    cfg = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
                      warmup_ratio=t.warmup_ratio, temperature=t.temperature,
                      kd_weight=0.0 if objective == "gold" else t.kd_weight,
                      ce_weight=1.0 if objective == "gold" else t.ce_weight,
                      seed=t.seed, precision=t.precision, max_length=s.max_length,
                      checkpoint_every=t.checkpoint_every, **schedule_fields(t),
                      hidden_weight=t.hidden_weight if teacher is not None else 0.0, layer_map=layer_map)
    result = train_classifier(model, tok, rows, val_rows, out, cfg, fp, desc=mode, teacher=teacher)
    if mode == "baseline":
        from .guard import guard_after_baseline

        guard_after_baseline(spec, run, inputs, result)
    return write_manifest(out, mode, spec, fingerprint=fp, objective=objective, init_from=init,
                          teacher=teacher_identity, dataset_hash=inputs.dataset_hash,
                          train_data_hash=data_hash, parents=parents, params=count_params(model),
                          layers=s.layers, metrics=result)
