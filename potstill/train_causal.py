"""Stage `train` for `student.kind: causal_lm`: the kept teacher records (or gold, for the baseline)
-> prompt/completion rows -> a causal-LM student in `student/` (or `baseline/`).

What a record teaches: `output` when the record has one, else the parsed `label` (classify) or the
teacher's `raw` text (generate). Under `rationale`, the record's `rationale` field, or its raw
output split at its last "Answer:" line (see `causal_lm.split_rationale`). Under `logit_kd` with
an API teacher, the record's `token_logprobs` ([token, logprob, [[alt, logprob], ...]] per
generated token) become the top-k + tail targets, when those tokens are exactly the student's
tokens of the target (`generate_data.aligned_topk`; else the row trains on its text alone).
The label stage writes these fields for `kind: generate` (generate_data.py). Training resumes
from `out/checkpoints` after a kill (`causal_lm.train_causal_lm`, students/lm_checkpoint.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from .data.inputs import read_jsonl
from .generate_data import aligned_topk
from .data.prepare import prepare_inputs
from .manifest import file_hash, fingerprint, read_manifest, up_to_date, write_manifest
from .paths import CHECKPOINTS, HISTORY, KEPT, RunPaths
from .progress import log
from .spec import TaskSpec
from .students.causal_lm import (
    STUDENT_META, LMRow, LMTrainConfig, build_causal_lm, count_trainable, load_teacher_lm, mix_general,
    rationale_rows, resolve_causal_path, save_causal_lm, split_rationale, task_prompt, train_causal_lm,
    is_peft, merge_adapters,
)
from .students.prune import hidden_pairs, select_layers

CAUSAL_OBJECTIVES = {"distill": "sequence", "both": "sequence", "sequence": "sequence",
                     "logit_kd": "logit_kd", "rationale": "rationale", "gold": "gold"}


def record_target(rec: dict[str, Any], kind: str) -> str | None:
    """The text a kept record teaches (pure): `output`, else the label (classify) or raw (generate)."""
    if rec.get("output"):
        return rec["output"]
    if kind == "classify":
        return rec.get("label")
    return rec.get("raw") or rec.get("label")


def read_general(path: Path) -> list[str]:
    """General text for mixing: .txt (one text per non-empty line) or JSONL/CSV/Parquet with a `text` column."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (train.general_data)")
    if path.suffix == ".txt":
        return [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    if path.suffix in (".jsonl", ".json"):
        rows = read_jsonl(path)
    else:
        import pandas as pd

        rows = (pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)).to_dict("records")
    texts = [str(r["text"]).strip() for r in rows if r.get("text")]
    if not texts:
        raise ValueError(f"{path}: no `text` values (train.general_data)")
    return texts


def split_general(texts: list[str], held_out_share: float = 0.1) -> tuple[list[str], list[str]]:
    """(train, held-out) general texts: the last share (at least one) is held out for perplexity."""
    n = max(1, round(len(texts) * held_out_share)) if len(texts) > 1 else 0
    return texts[:len(texts) - n], texts[len(texts) - n:]


def pruned_layers(init: str, layers) -> list[int] | None:
    """The decoder layers a causal student keeps (`student.layers`, students/prune.py), or None
    when it keeps them all."""
    if layers is None:
        return None
    from transformers import AutoConfig

    n = AutoConfig.from_pretrained(init).num_hidden_layers
    keep = select_layers(layers, n)
    return None if keep == list(range(n)) else keep


def train_causal_student(spec: TaskSpec, run: RunPaths,
                         mode: Literal["student", "baseline"] = "student", *,
                         records: Path | None = None, out: Path | None = None) -> dict[str, Any]:
    """Train the causal-LM student (or the gold-only baseline) into `out` (default: the run's
    student/ or baseline/) from the kept records in `records` (default: the run's filtered/)."""
    inputs = prepare_inputs(spec, run)
    t, s = spec.train, spec.student
    objective = "gold" if mode == "baseline" else CAUSAL_OBJECTIVES[t.objective]
    out = out or run.model_dir(mode)
    records = records or run.filtered
    render = lambda text: spec.render_prompt(text, inputs.labels)  # noqa: E731
    parents: dict[str, str] = {"inputs": str(run.inputs)}
    teacher_identity = None
    rows: list[LMRow] = []
    missing = 0
    if objective == "gold":
        rows = [LMRow(render(ex.text), ex.gold) for ex in inputs.train if ex.gold is not None]
        data_hash = inputs.dataset_hash
    else:
        kept_path = records / KEPT
        if not kept_path.exists():
            raise FileNotFoundError(f"{kept_path}: no filtered records; run `potstill filter` first")
        kept = read_jsonl(kept_path)
        tok_for_topk = None
        for rec in kept:
            target = record_target(rec, spec.kind)
            if target is None:
                continue
            prompt = render(rec["text"])
            if objective == "rationale":
                split = ((rec["rationale"], target) if rec.get("rationale")
                         else split_rationale(rec.get("raw") or ""))
                if split is None:  # no rationale from the teacher: the answer task alone
                    missing += 1
                    rows.append(LMRow(task_prompt(prompt, "rationale"), target))
                else:
                    # a parsed label (classify) or an explicit output beats the split-off answer line
                    answer = target if spec.kind == "classify" or rec.get("output") else split[1]
                    rows += rationale_rows(prompt, split[0], answer, t.rationale_weight)
                continue
            row = LMRow(prompt, target)
            if objective == "logit_kd" and spec.teacher.kind == "openai":
                if rec.get("token_logprobs"):
                    if tok_for_topk is None:
                        from transformers import AutoTokenizer

                        tok_for_topk = AutoTokenizer.from_pretrained(resolve_causal_path(s.model))
                    # None unless the teacher's tokens are the student's tokens of `target`
                    row.topk = aligned_topk(tok_for_topk, target, rec["token_logprobs"])
                if row.topk is None:
                    missing += 1
            rows.append(row)
        if objective == "logit_kd" and spec.teacher.kind == "openai" and missing == len(rows):
            raise ValueError(
                "train.objective logit_kd with an API teacher needs the teacher's top-k logprobs cached "
                f"with each record (`token_logprobs` in {kept_path}); none has them. Set "
                "teacher.logprobs=true and relabel, or use train.objective=sequence")
        data_hash = file_hash(kept_path)
        teacher_identity = read_manifest(records).get("teacher") if (records / "manifest.json").exists() else None
        parents["filtered"] = str(records)
    if not rows:
        raise ValueError(f"no training rows for the {mode} ({objective}); check the filter report")
    if missing:
        log(f"{mode}: {missing} of {len(kept)} records had no {'rationale' if objective == 'rationale' else 'usable top-k logprobs'}"
            "; they train on the answer text alone")
    general_train: list[str] = []
    general_eval: list[str] = []
    if t.general_data is not None:
        general_train, general_eval = split_general(read_general(t.general_data))
        if t.general_ratio > 0:
            rows = mix_general(rows, general_train, t.general_ratio, t.seed)
    val_rows = [LMRow(task_prompt(render(ex.text), objective), ex.gold)
                for ex in inputs.validation if ex.gold is not None]
    lora = s.lora
    init = resolve_causal_path(s.model)
    init_weights = (file_hash(*sorted(Path(init).glob("*.safetensors")))
                    if Path(init).exists() and any(Path(init).glob("*.safetensors")) else init)
    fp = fingerprint(mode, objective, data_hash, s.model_dump(mode="json"),
                     t.model_dump(mode="json", exclude={"baseline"}), init_weights,
                     file_hash(t.general_data) if t.general_data else None)
    if up_to_date(out, fp, STUDENT_META, HISTORY):
        log(f"{mode}: up to date in {out}")
        return read_manifest(out)
    keep = pruned_layers(init, s.layers)  # depth pruning (students/prune.py), None: all layers
    model, tok = build_causal_lm(s.model, lora.method, lora.r, lora.alpha, lora.dropout, lora.target_modules,
                                 lora.num_virtual_tokens, lora.quantize_4bit, seed=t.seed, layers=keep)
    teacher = None
    if objective == "logit_kd" and spec.teacher.kind != "openai":
        if spec.teacher.kind != "hf":
            raise ValueError("train.objective logit_kd needs a causal-LM teacher: teacher.kind hf with "
                             "teacher.model a causal LM sharing the student's tokenizer, or teacher.kind "
                             "openai with cached top-k logprobs")
        teacher = load_teacher_lm(spec.teacher.model, tok)
    n_train, n_total = count_trainable(model)
    log(f"{mode}: {objective} objective, {len(rows)} rows ({sum(r.kind == 'general' for r in rows)} general), "
        f"{lora.method}, {n_train / 1e6:.2f}M of {n_total / 1e6:.1f}M params train")
    cfg = LMTrainConfig(
        objective="sequence" if objective == "gold" else objective, kd_loss=t.kd_loss,
        temperature=t.temperature, jsd_beta=t.jsd_beta, kd_weight=t.kd_weight,
        ce_weight=t.ce_weight if objective == "logit_kd" else 1.0, epochs=t.epochs,
        batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay, warmup_ratio=t.warmup_ratio,
        seed=t.seed, precision=t.precision, max_length=s.max_length, checkpoint_every=t.checkpoint_every,
        kd_chunk=t.kd_chunk, hidden_weight=t.hidden_weight,
        hidden_pairs=hidden_pairs(keep) if keep and teacher is not None else None)
    # a killed run resumes from out/checkpoints (same fingerprint: same data, spec and base weights)
    history = train_causal_lm(model, tok, rows, cfg, teacher, val_rows, general_eval, desc=mode,
                              checkpoint_dir=out / CHECKPOINTS, fingerprint=fp)
    if keep is not None and is_peft(model):
        # a pruned base exists nowhere else: the student is saved whole (adapters merged)
        model = merge_adapters(model)
    save_causal_lm(model, tok, out, meta={"base_model": init, "method": lora.method,
                                          "objective": objective, "kind": spec.kind,
                                          **({"layers": keep} if keep is not None else {})})
    import shutil

    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # the model is saved: nothing to resume
    (out / HISTORY).write_text(json.dumps(history, indent=2))
    return write_manifest(out, mode, spec, fingerprint=fp, objective=objective, init_from=init,
                          teacher=teacher_identity, dataset_hash=inputs.dataset_hash,
                          train_data_hash=data_hash, parents=parents, params=n_total,
                          trainable_params=n_train, method=lora.method, metrics=history,
                          **({"layers": keep} if keep is not None else {}))
