"""Stage `eval`: teacher vs distilled student vs gold-only baseline on the held-out gold split.

Metrics are pure functions of predictions; timing is measured here on this machine: p50/p95
latency of one input at a time (after warm-up) and batch throughput over the test texts.
Writes `report.json` and `report.md` in the run directory.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Sequence

import numpy as np

from .data.prepare import prepare_inputs
from .manifest import read_manifest, write_manifest
from .paths import FILTER_REPORT, MANIFEST, RunPaths
from .progress import log, progress
from .spec import TaskSpec
from .store import Store


def accuracy(gold: Sequence[str], pred: Sequence[str | None]) -> float:
    return sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1)


def macro_f1(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> float:
    """Macro-F1 over the labels that occur in gold or predictions (sklearn's convention)."""
    from sklearn.metrics import f1_score

    return float(f1_score(gold, [p if p is not None else "<none>" for p in pred],
                          labels=[l for l in labels if l in set(gold) | set(pred)],
                          average="macro", zero_division=0))


def agreement(a: Sequence[str | None], b: Sequence[str | None]) -> float:
    return sum(x == y and x is not None for x, y in zip(a, b)) / max(len(a), 1)


def percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


def time_model(model, tokenizer, texts: Sequence[str], n_single: int, batch_size: int,
               max_length: int, seed: int = 0) -> dict[str, float]:
    """p50/p95 single-input latency (ms) over `n_single` texts, and batch throughput (inputs/s)."""
    import torch

    from .students.classifier import predict_logits

    rng = random.Random(seed)
    sample = [texts[rng.randrange(len(texts))] for _ in range(n_single)]
    model.eval()
    with torch.inference_mode():
        for t in sample[:10]:  # warm-up: allocator, kernels
            model(**tokenizer(t, return_tensors="pt", truncation=True, max_length=max_length))
        times = []
        for t in sample:
            t0 = time.perf_counter()
            enc = tokenizer(t, return_tensors="pt", truncation=True, max_length=max_length)
            model(**enc).logits.argmax(-1).item()
            times.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    predict_logits(model, tokenizer, texts, batch_size=batch_size, max_length=max_length)
    elapsed = time.perf_counter() - t0
    return {"latency_ms_p50": round(percentile(times, 50), 3),
            "latency_ms_p95": round(percentile(times, 95), 3),
            "throughput_per_s": round(len(texts) / elapsed, 1)}


def _local_model_metrics(path, texts: list[str], spec: TaskSpec, name: str):
    from .students.classifier import count_params, dir_size_mb, load_classifier, model_labels, predict_logits

    model, tok = load_classifier(path)
    own = model_labels(model)
    max_len = spec.student.max_length if name != "teacher" else spec.teacher.max_length
    logits = predict_logits(model, tok, texts, spec.eval.batch_size, max_len, show=f"eval {name}")
    pred = [own[i] for i in logits.argmax(-1)]
    timing = time_model(model, tok, texts, spec.eval.latency_samples, spec.eval.batch_size, max_len)
    return pred, {"params": count_params(model), "size_mb": dir_size_mb(path),
                  "layers": model.config.num_hidden_layers, **timing}, (own, logits)


def evaluate(spec: TaskSpec, run: RunPaths) -> dict[str, Any]:
    import torch

    from .teachers import answer_cached, make_teacher

    if spec.kind == "extract":
        from .extract_eval import evaluate_extract

        return evaluate_extract(spec, run)
    if spec.kind == "generate" or spec.student.kind == "causal_lm":
        from .generate_eval import evaluate_generate

        return evaluate_generate(spec, run)
    if spec.eval.threads:
        torch.set_num_threads(spec.eval.threads)
    inputs = prepare_inputs(spec, run)
    if not inputs.test:
        raise ValueError("no test split: set data.test to a gold-labelled file")
    labels = inputs.labels
    texts = [ex.text for ex in inputs.test]
    gold = [ex.gold for ex in inputs.test]
    models: dict[str, dict[str, Any]] = {}
    preds: dict[str, list[str | None]] = {}
    scores: dict[str, tuple[list[str], np.ndarray]] = {}  # name -> (its label order, (N, C) logits)

    # teacher: through the same cached interface that labelled the data
    with Store(run.db) as store:
        teacher = make_teacher(spec, run, labels)
        before = store.spend(teacher.identity)
        with progress(len(texts), "eval teacher") as bar:
            answers = answer_cached(teacher, texts, store, spec.spec_hash(), bar.advance)
        after = store.spend(teacher.identity)
    preds["teacher"] = [a.label for a in answers]
    t_info: dict[str, Any] = {"identity": teacher.identity}
    if spec.teacher.kind in ("fit", "hf"):
        t_info.update(_timing_only(teacher, texts, spec))
    else:
        lat = [a.latency_ms for a in answers if a.latency_ms is not None]
        t_info.update({"params": None, "latency_ms_p50": round(percentile(lat, 50), 1) if lat else None,
                       "latency_ms_p95": round(percentile(lat, 95), 1) if lat else None,
                       "throughput_per_s": None,
                       "eval_spend_usd": round(after["cost_usd"] - before["cost_usd"], 6)})
    models["teacher"] = t_info

    for name in ("student", "baseline"):
        d = run.model_dir(name)
        if not (d / "config.json").exists():
            continue
        pred, info, scores[name] = _local_model_metrics(d, texts, spec, name)
        m = read_manifest(d)
        info.update({"objective": m.get("objective"), "init_from": m.get("init_from"),
                     "best_val_accuracy": m.get("metrics", {}).get("best_val_accuracy"),
                     "train_seconds": m.get("metrics", {}).get("seconds")})
        preds[name], models[name] = pred, info

    for name, pred in preds.items():
        models[name]["accuracy"] = round(accuracy(gold, pred), 4)
        models[name]["macro_f1"] = round(macro_f1(gold, pred, labels), 4)
        if name != "teacher":
            models[name]["agreement_with_teacher"] = round(agreement(pred, preds["teacher"]), 4)
    summary = summarise(models, "accuracy")
    from .verdict import verdict

    verdict_doc = verdict(models["teacher"]["accuracy"], (models.get("student") or {}).get("accuracy"),
                          (models.get("baseline") or {}).get("accuracy"), len(texts))
    log(f"verdict: {verdict_doc['deploy']}: {verdict_doc['reason']}")

    filt = json.loads((run.filtered / FILTER_REPORT).read_text()) if (run.filtered / FILTER_REPORT).exists() else {}
    label_m = read_manifest(run.labels) if (run.labels / MANIFEST).exists() else {}
    report = {
        "task": spec.name,
        "test_rows": len(texts),
        "labels": len(labels),
        "models": models,
        "summary": summary,
        "verdict": verdict_doc,
        "data": {
            "inputs": filt.get("inputs", len(inputs.train)),
            "augmented": (label_m.get("summary") or {}).get("augmented", 0),
            "labeled": filt.get("labelled"),
            "kept": filt.get("kept"),
            "dropped": filt.get("dropped"),
            "dropped_by_reason": filt.get("dropped_by_reason"),
            "teacher_spend_usd": (label_m.get("summary") or {}).get("spend_total", {}).get("cost_usd"),
        },
        "machine": _machine(),
    }
    run.root.mkdir(parents=True, exist_ok=True)
    run.report_json.write_text(json.dumps(report, indent=2))
    run.report_md.write_text(render_markdown(report))
    write_predictions(run.root / "eval", texts, gold, preds, scores.get("student"))
    write_manifest(run.root / "eval", "eval", spec, dataset_hash=inputs.dataset_hash,
                   parents={k: str(run.model_dir(k)) for k in models if k != "teacher"},
                   report=str(run.report_json))
    return report


def write_predictions(out, texts: list[str], gold: list[str], preds: dict[str, list[str | None]],
                      student: tuple[list[str], np.ndarray] | None) -> None:
    """`eval/predictions.jsonl`: one row per test input (text, gold, each model's prediction, the
    student's top-1 probability); `eval/student_logits.npy` (N, C) + `student_labels.json` (C)."""
    out.mkdir(parents=True, exist_ok=True)
    p1 = None
    if student is not None:
        own, logits = student
        z = np.asarray(logits, dtype=np.float64)
        e = np.exp(z - z.max(-1, keepdims=True))
        p1 = (e / e.sum(-1, keepdims=True)).max(-1)  # (N,) softmax top-1 at T=1
        np.save(out / "student_logits.npy", np.asarray(logits, dtype=np.float32))
        (out / "student_labels.json").write_text(json.dumps(own))
    with open(out / "predictions.jsonl", "w") as f:
        for i, (t, g) in enumerate(zip(texts, gold)):
            row = {"text": t, "gold": g, **{k: v[i] for k, v in preds.items()}}
            if p1 is not None:
                row["student_prob"] = round(float(p1[i]), 6)
            f.write(json.dumps(row) + "\n")


def summarise(models: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """The report's summary: student / teacher on `metric`, the p50 latency speed-up, and
    student - baseline on `metric` (each when its models were evaluated)."""
    s, t = models.get("student"), models["teacher"]
    summary: dict[str, Any] = {}
    if s:
        summary[f"student_over_teacher_{metric}"] = round(s[metric] / max(t[metric], 1e-9), 4)
        if t.get("latency_ms_p50"):
            summary["latency_speedup"] = round(t["latency_ms_p50"] / s["latency_ms_p50"], 2)
        if "baseline" in models:
            summary[f"student_minus_baseline_{metric}"] = round(s[metric] - models["baseline"][metric], 4)
    return summary


def _timing_only(teacher, texts: list[str], spec: TaskSpec) -> dict[str, Any]:
    from .students.classifier import count_params

    info = {"params": count_params(teacher.model), "layers": teacher.model.config.num_hidden_layers}
    info.update(time_model(teacher.model, teacher.tokenizer, texts, spec.eval.latency_samples,
                           spec.eval.batch_size, spec.teacher.max_length))
    return info


def _machine() -> dict[str, Any]:
    import os
    import platform

    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "cuda": torch.cuda.is_available()}


def render_markdown(report: dict[str, Any]) -> str:
    rows = ["| model | accuracy | macro-F1 | agreement | params | p50 ms | p95 ms | inputs/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in report["models"].items():
        params = f"{m['params'] / 1e6:.1f}M" if m.get("params") else "—"
        rows.append(
            f"| {name} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | "
            f"{m.get('agreement_with_teacher', '—')} | {params} | {m.get('latency_ms_p50') or '—'} | "
            f"{m.get('latency_ms_p95') or '—'} | {m.get('throughput_per_s') or '—'} |")
    s = report["summary"]
    d = report["data"]
    from .verdict import verdict_lines

    lines = [f"# potstill report: {report['task']}", "",
             *[x + "\n" for x in verdict_lines(report.get("verdict"))],
             f"Held-out test: {report['test_rows']} rows, {report['labels']} labels.", "", *rows, ""]
    if s:
        lines += [f"- student / teacher accuracy: {s.get('student_over_teacher_accuracy')}",
                  f"- student latency speed-up (p50): {s.get('latency_speedup')}x",
                  f"- student − baseline accuracy: {s.get('student_minus_baseline_accuracy')}", ""]
    lines += ["## Data", "",
              f"inputs {d['inputs']} (of which {d.get('augmented') or 0} augmented) → labelled "
              f"{d['labeled']} → kept {d['kept']} (dropped {d['dropped']})", ""]
    if d.get("dropped_by_reason"):
        lines += [f"- {k}: {v}" for k, v in d["dropped_by_reason"].items() if v] + [""]
    return "\n".join(lines)
