"""Stage `eval` for causal-LM students (`kind: generate`, or `student.kind: causal_lm`): teacher vs
student vs gold-only baseline on the held-out split, by exact match, token F1 and agreement with
the teacher; the students' answers carry mean and min token logprobs (the router's confidence).

Metrics are pure functions of strings. Writes `report.json`, `report.md` and
`eval/predictions.jsonl` like the classification report.
"""

from __future__ import annotations

import json
import re
import string
import time
from collections import Counter
from typing import Any, Sequence

from .data.prepare import prepare_inputs
from .manifest import read_manifest, write_manifest
from .paths import RunPaths
from .progress import log
from .spec import TaskSpec

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(s: str | None) -> str:
    """Lower case, punctuation to spaces, whitespace collapsed (SQuAD-style, articles kept)."""
    if s is None:
        return ""
    return " ".join(_PUNCT.sub(" ", s.lower()).split())


def exact_match(gold: Sequence[str | None], pred: Sequence[str | None]) -> float:
    """Share of answers equal to gold after `normalize_answer`."""
    return sum(normalize_answer(g) == normalize_answer(p) for g, p in zip(gold, pred)) / max(len(gold), 1)


def token_f1(gold: str | None, pred: str | None) -> float:
    """Bag-of-tokens F1 between two answers after `normalize_answer` (1.0 when both are empty)."""
    g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not g or not p:
        return float(g == p)
    common = sum((Counter(g) & Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def mean_token_f1(gold: Sequence[str | None], pred: Sequence[str | None]) -> float:
    return sum(token_f1(g, p) for g, p in zip(gold, pred)) / max(len(gold), 1)


def text_metrics(gold: Sequence[str | None], pred: Sequence[str | None],
                 teacher: Sequence[str | None] | None = None) -> dict[str, float]:
    m = {"exact_match": round(exact_match(gold, pred), 4), "token_f1": round(mean_token_f1(gold, pred), 4)}
    if teacher is not None:
        m["agreement_with_teacher"] = round(exact_match(teacher, pred), 4)
        m["token_f1_with_teacher"] = round(mean_token_f1(teacher, pred), 4)
    return m


def _student_answers(path, prompts: list[str], spec: TaskSpec) -> tuple[list[Any], dict[str, Any]]:
    from .students.causal_lm import STUDENT_META, count_trainable, generate, load_causal_lm
    from .students.classifier import dir_size_mb

    meta = json.loads((path / STUDENT_META).read_text())
    model, tok = load_causal_lm(path)
    t0 = time.perf_counter()
    gens = generate(model, tok, prompts, spec.student.max_new_tokens, spec.eval.batch_size,
                    objective=meta.get("objective", "sequence"), max_length=spec.student.max_length)
    elapsed = time.perf_counter() - t0
    _, total = count_trainable(model)
    from .causal_metrics import time_generation

    return gens, {"params": total, "adapter_size_mb": dir_size_mb(path), "method": meta.get("method"),
                  "layers": getattr(model.config, "num_hidden_layers", None),
                  "answers_per_s": round(len(prompts) / max(elapsed, 1e-9), 2),
                  "gen_tokens_per_s": round(sum(len(g.token_logprobs) for g in gens) / max(elapsed, 1e-9), 1),
                  **time_generation(model, tok, prompts, spec.student.max_new_tokens, spec.student.max_length,
                                    meta.get("objective", "sequence"), spec.eval.latency_samples_generate)}


def _teacher_answers(spec: TaskSpec, run: RunPaths, texts: list[str], prompts: list[str],
                     labels: list[str]) -> tuple[list[str | None], dict[str, Any]]:
    """The teacher's answers: a local causal LM generates them; other teachers answer through the
    cached interface that labelled the data (raw text for generate, the parsed label for classify)."""
    from pathlib import Path

    if spec.teacher.kind == "hf":
        from transformers import AutoConfig

        from .students.causal_lm import generate, resolve_causal_path

        path = resolve_causal_path(spec.teacher.model)
        arch = (AutoConfig.from_pretrained(path).architectures or [""])[0]
        if arch.endswith("ForCausalLM") or Path(path, "adapter_config.json").exists():
            if spec.kind == "generate":  # the teacher that labelled (same prompt and budget)
                from .teachers.hf_causal import HFCausalTeacher

                hf = HFCausalTeacher(spec, labels)
                t0 = time.perf_counter()
                got = dict(hf.answer(texts))
                elapsed = time.perf_counter() - t0
                from .causal_metrics import time_generation

                timing = time_generation(hf.model, hf.tokenizer, prompts, hf.max_new_tokens, hf.max_length,
                                         n=spec.eval.latency_samples_generate)
                return [got[i].label for i in range(len(texts))], {
                    "identity": hf.identity, "params": hf.params,
                    "layers": getattr(hf.model.config, "num_hidden_layers", None),
                    "answers_per_s": round(len(texts) / max(elapsed, 1e-9), 2), **timing}
            from .students.causal_lm import load_causal_lm

            model, tok = load_causal_lm(path)
            gens = generate(model, tok, prompts, spec.student.max_new_tokens, spec.eval.batch_size,
                            max_length=spec.teacher.max_length)
            return [g.text for g in gens], {"identity": f"hf-causal:{spec.teacher.model}",
                                            "params": sum(p.numel() for p in model.parameters())}
    from .store import Store
    from .teachers import answer_cached, make_teacher

    with Store(run.db) as store:
        teacher = make_teacher(spec, run, labels)
        answers = answer_cached(teacher, texts, store, spec.spec_hash())
    # generate: the parsed output (the answer part of a rationale reply; None when unparseable)
    preds = [a.label if spec.kind in ("classify", "generate") else a.raw for a in answers]
    return preds, {"identity": teacher.identity}


def evaluate_generate(spec: TaskSpec, run: RunPaths) -> dict[str, Any]:
    import torch

    if spec.eval.threads:
        torch.set_num_threads(spec.eval.threads)
    inputs = prepare_inputs(spec, run)
    if not inputs.test:
        raise ValueError("no test split: set data.test to a gold-labelled file")
    texts = [ex.text for ex in inputs.test]
    gold = [ex.gold for ex in inputs.test]
    prompts = [spec.render_prompt(t, inputs.labels) for t in texts]
    preds: dict[str, list[str | None]] = {}
    models: dict[str, dict[str, Any]] = {}
    preds["teacher"], models["teacher"] = _teacher_answers(spec, run, texts, prompts, inputs.labels)
    confidence: dict[str, list[dict[str, float]]] = {}
    for name in ("student", "baseline"):
        d = run.model_dir(name)
        if not d.exists() or not any((d / f).exists() for f in ("adapter_config.json", "config.json")):
            continue
        gens, info = _student_answers(d, prompts, spec)
        m = read_manifest(d)
        metrics = m.get("metrics", {})
        info.update({"objective": m.get("objective"), "train_seconds": metrics.get("seconds"),
                     "general_ppl_base": metrics.get("general_ppl_base"),
                     "general_ppl_student": metrics.get("general_ppl_student")})
        preds[name], models[name] = [g.text for g in gens], info
        confidence[name] = [{"mean_logprob": round(g.mean_logprob, 5), "min_logprob": round(g.min_logprob, 5)}
                            for g in gens]
    for name, pred in preds.items():
        models[name].update(text_metrics(gold, pred, None if name == "teacher" else preds["teacher"]))
        if spec.kind == "classify":  # the classify columns of report.json / report.html
            from .causal_metrics import label_metrics

            models[name].update(label_metrics(gold, pred, inputs.labels))
        if spec.kind == "generate" and spec.json_schema is not None:  # field F1, valid JSON
            from .causal_metrics import json_metrics

            models[name].update(json_metrics(gold, pred, spec.json_schema,
                                             None if name == "teacher" else preds["teacher"]))
    summary: dict[str, Any] = {}
    if "student" in models:
        summary["student_over_teacher_exact_match"] = round(
            models["student"]["exact_match"] / max(models["teacher"]["exact_match"], 1e-9), 4)
        if "baseline" in models:
            summary["student_minus_baseline_exact_match"] = round(
                models["student"]["exact_match"] - models["baseline"]["exact_match"], 4)
    if spec.json_schema is not None and "student" in models and "field_f1" in models["student"]:
        summary["student_over_teacher_field_f1"] = round(
            models["student"]["field_f1"] / max(models["teacher"]["field_f1"], 1e-9), 4)
        if models["teacher"].get("latency_ms_p50") and models["student"].get("latency_ms_p50"):
            summary["latency_speedup"] = round(models["teacher"]["latency_ms_p50"]
                                               / models["student"]["latency_ms_p50"], 2)
    report = {"task": spec.name, "kind": spec.kind, "test_rows": len(texts), "models": models,
              "summary": summary, **({"json_fields": True} if spec.json_schema is not None else {})}
    labelled: dict[str, list[str | None]] = {}
    if spec.kind == "classify":  # rendered by render_generate_markdown, with the label columns
        from .causal_metrics import answer_label

        report["student_kind"] = "causal_lm"
        labelled = {k: [answer_label(a, inputs.labels) for a in v] for k, v in preds.items()}
    run.report_json.write_text(json.dumps(report, indent=2))
    run.report_md.write_text(render_generate_markdown(report))
    out = run.root / "eval"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w") as f:
        for i, (t, g) in enumerate(zip(texts, gold)):
            row = {"text": t, "gold": g, **{k: v[i] for k, v in preds.items()}}
            for k, v in labelled.items():  # classify: the label read from the answer, and the answer
                row[k], row[f"{k}_answer"] = v[i], preds[k][i]
            for name, conf in confidence.items():
                row[f"{name}_confidence"] = conf[i]
            f.write(json.dumps(row) + "\n")
    write_manifest(out, "eval", spec, dataset_hash=inputs.dataset_hash,
                   parents={k: str(run.model_dir(k)) for k in models if k != "teacher"},
                   report=str(run.report_json))
    log(f"eval: " + ", ".join(f"{k} exact match {v['exact_match']:.4f}" for k, v in models.items()))
    return report


def render_generate_markdown(report: dict[str, Any]) -> str:
    cls = report.get("kind") == "classify"
    rows = [("| model | accuracy | macro-F1 | no label |" if cls else "| model |")
            + " exact match | token F1 | agreement | general ppl (base → student) | params |",
            "|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if cls else "")]
    for name, m in report["models"].items():
        ppl = (f"{m['general_ppl_base']:.2f} → {m['general_ppl_student']:.2f}"
               if m.get("general_ppl_base") and m.get("general_ppl_student") else "—")
        params = f"{m['params'] / 1e6:.1f}M" if m.get("params") else "—"
        lab = (f" {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['invalid_label_share']:.4f} |"
               if cls and "accuracy" in m else (" — | — | — |" if cls else ""))
        rows.append(f"| {name} |{lab} {m['exact_match']:.4f} | {m['token_f1']:.4f} | "
                    f"{m.get('agreement_with_teacher', '—')} | {ppl} | {params} |")
    if report.get("json_fields"):
        rows += ["", "| model | layers | field F1 | valid JSON | object exact match | field F1 vs teacher | "
                 "p50 ms (batch 1) | tokens/s (batch 1) | answers/s (batched) |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, m in report["models"].items():
            rows.append(f"| {name} | {m.get('layers', '—')} | {m.get('field_f1', '—')} | {m.get('json_validity', '—')} | "
                        f"{m.get('exact_match', '—')} | {m.get('field_f1_vs_teacher', '—')} | "
                        f"{m.get('latency_ms_p50', '—')} | {m.get('gen_tokens_per_s_b1', '—')} | "
                        f"{m.get('answers_per_s', '—')} |")
        rows += ["", *(f"- {k}: {v}" for k, v in report.get("summary", {}).items())]
    return "\n".join([f"# potstill report: {report['task']} ({report['kind']})", "",
                      f"Held-out test: {report['test_rows']} rows.", "", *rows, ""])
