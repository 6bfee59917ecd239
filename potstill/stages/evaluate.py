"""Stage `eval`: teacher vs distilled student vs gold-only baseline on the held-out gold split.

One harness for every task and student kind: the teacher is asked once, through the same cached
interface that labelled the data; each trained model answers through its `Student`; the `Task`
scores the predictions and renders its section. Timing is measured here on this machine: batch
throughput over the test texts, and p50/p95 latency of one input at a time, the local models
(teacher, student, baseline) taking turns on the same inputs (timing.py), so their ratio is not
the machine's drift between one model's timing and the next.
Writes `report.json` (with the task and student kinds, so readers never guess the renderer),
`report.md` and `eval/predictions.jsonl`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import PotstillError
from ..manifest import read_manifest, write_manifest
from ..paths import (
    CALIBRATION_JSON,
    EVAL_DIR,
    FILTER_REPORT,
    MANIFEST,
    PREDICTIONS,
    STUDENT_LABELS,
    STUDENT_LOGITS,
    RunPaths,
)
from ..progress import log, progress
from ..spec import TaskSpec
from ..store import Store
from ..students import get_student
from ..students.hf import percentile
from ..tasks import get_task
from ..teachers import answer_cached, make_teacher
from ..threads import limit_threads
from ..timing import Timer, calls, time_interleaved
from ..verdict import next_steps, verdict, with_verdict
from .prepare import prepare_inputs


def teacher_answers(spec: TaskSpec, run: RunPaths, texts: list[str], labels: list[str]
                    ) -> tuple[list[Any], dict[str, Any], Timer | None]:
    """The teacher's predictions on `texts` (the task's form), its report row (a local model's
    size and throughput, or an API's latency and what this evaluation spent) and, for a local
    model, its batch-1 timer."""
    task = get_task(spec.kind)
    with Store(run.db) as store:
        teacher = make_teacher(spec, run, labels)
        before = store.spend(teacher.identity)
        with progress(len(texts), "eval teacher") as bar:
            answers = answer_cached(teacher, texts, store, spec.spec_hash(), bar.advance)
        after = store.spend(teacher.identity)
    info: dict[str, Any] = {"identity": teacher.identity}
    describe, timer = getattr(teacher, "describe", None), getattr(teacher, "timer", None)
    if describe is not None:  # a local model: its size and throughput on this machine
        info.update(describe(texts, spec.eval))
    else:
        lat = [a.latency_ms for a in answers if a.latency_ms is not None]
        info.update({"params": None, "latency_ms_p50": round(percentile(lat, 50), 1) if lat else None,
                     "latency_ms_p95": round(percentile(lat, 95), 1) if lat else None,
                     "throughput_per_s": None,
                     "eval_spend_usd": round(after["cost_usd"] - before["cost_usd"], 6)})
    return [task.teacher_prediction(a) for a in answers], info, timer(spec.eval) if timer else None


def evaluate(spec: TaskSpec, run: RunPaths) -> dict[str, Any]:
    task, student = get_task(spec.kind), get_student(spec.student.kind)
    limit_threads(spec.eval.threads)  # torch and numpy's BLAS: threads.py
    inputs = prepare_inputs(spec, run)
    if not inputs.test:
        raise PotstillError("no test split: set data.test to a file with gold answers")
    labels = inputs.labels
    texts = [ex.text for ex in inputs.test]
    gold = [task.gold_answer(ex.gold) for ex in inputs.test]
    preds: dict[str, list[Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    extras: dict[str, dict[str, Any]] = {}
    timers: dict[str, Timer] = {}
    preds["teacher"], models["teacher"], teacher_timer = teacher_answers(spec, run, texts, labels)
    if teacher_timer is not None:
        timers["teacher"] = teacher_timer
    for name in ("student", "baseline"):
        d = run.model_dir(name)
        if not student.trained(d):
            continue
        preds[name], info, extras[name] = student.evaluate(spec, task, d, texts, labels, name)
        if (timer := extras[name].pop("timer", None)) is not None:
            timers[name] = timer
        m = read_manifest(d)
        info.update({"objective": m.get("objective"), "init_from": m.get("init_from"),
                     "train_seconds": m.get("metrics", {}).get("seconds")})
        models[name] = info
    if spec.eval.runtimes and "student" in models:  # the same student on ONNX Runtime, own rows
        timers.update(_runtime_rows(spec, run, preds, models))
    if timers:
        with progress(calls(timers), f"eval latency ({', '.join(timers)}, in turn)") as bar:
            for name, lat in time_interleaved(timers, texts, advance=bar.advance).items():
                models[name].update(lat)
    timers.clear()  # the models they hold are not needed any more
    preds = {name: [task.within_input(p, t, spec) for p, t in zip(pred, texts)] for name, pred in preds.items()}
    for name, pred in preds.items():
        models[name].update(task.score(gold, pred, labels, None if name == "teacher" else preds["teacher"], spec))
    metric = task.metric_for(spec)
    deploy = verdict(models["teacher"][metric], (models.get("student") or {}).get(metric),
                     (models.get("baseline") or {}).get(metric), len(texts))
    log(f"verdict: {deploy['deploy']}: {deploy['reason']}")
    report = {
        "task": spec.name,
        "kind": spec.kind,
        "student_kind": spec.student.kind,
        "metric": metric,
        "test_rows": len(texts),
        "spec_file": str(spec.source) if spec.source else None,
        **task.report_header(labels, spec),
        "models": models,
        "summary": summarise(models, metric),
        "verdict": deploy,
        **({"baseline_skipped": _why_no_baseline(spec, inputs)} if "baseline" not in models else {}),
        "data": data_section(run, len(inputs.train)),
        "machine": _machine(),
    }
    run.root.mkdir(parents=True, exist_ok=True)
    run.report_json.write_text(json.dumps(report, indent=2))
    run.report_md.write_text(with_verdict(task.render_markdown(report), deploy, next_steps(
        report, str(run.root), report["spec_file"], calibrated=(run.root / CALIBRATION_JSON).exists())))
    write_predictions(run.root / EVAL_DIR, texts, [task.to_json(g) for g in gold],
                      {k: [task.to_json(p) for p in ps] for k, ps in preds.items()}, extras)
    write_manifest(run.root / EVAL_DIR, "eval", spec, dataset_hash=inputs.dataset_hash,
                   parents={k: str(run.model_dir(k)) for k in ("student", "baseline") if k in models},
                   report=str(run.report_json))
    log("eval: " + ", ".join(f"{k} {metric} {m[metric]:.4f}" for k, m in models.items()))
    return report


def _runtime_rows(spec: TaskSpec, run: RunPaths, preds: dict[str, list[Any]],
                  models: dict[str, dict[str, Any]]) -> dict[str, Timer]:
    """`eval.runtimes`: the student on ONNX Runtime as rows `student_<runtime>`, scored like the
    others (onnx_eval.py exports the graphs when missing or stale); returns their timers, which
    the evaluation times in turn with the other models'."""
    from ..onnx_eval import evaluate_onnx
    from ..tasks.base import agreement

    res = evaluate_onnx(spec, run, "student", runtimes=list(spec.eval.runtimes), timed=False)
    for rt, row in res["rows"].items():
        preds[f"student_{rt}"] = res["predictions"][rt]
        models[f"student_{rt}"] = {"params": models["student"].get("params"), "runtime": rt,
                                   **{k: row[k] for k in ("size_mb", "throughput_per_s")},
                                   "agreement_with_student": round(agreement(res["predictions"][rt],
                                                                             preds["student"]), 4)}
    return {f"student_{rt}": t for rt, t in res["timers"].items()}


def _why_no_baseline(spec: TaskSpec, inputs) -> str:
    from .train import baseline_skip_reason

    return baseline_skip_reason(spec, inputs) or "not trained yet (`potstill train SPEC --baseline`)"


def data_section(run: RunPaths, n_train: int) -> dict[str, Any]:
    """The data funnel from the filter report and the label manifest (empty parts when missing)."""
    filt = json.loads((run.filtered / FILTER_REPORT).read_text()) if (run.filtered / FILTER_REPORT).exists() else {}
    label_m = read_manifest(run.labels) if (run.labels / MANIFEST).exists() else {}
    data = {
        "inputs": filt.get("inputs", n_train),
        "augmented": (label_m.get("summary") or {}).get("augmented", 0),
        "labeled": filt.get("labelled"),
        "kept": filt.get("kept"),
        "dropped": filt.get("dropped"),
        "dropped_by_reason": filt.get("dropped_by_reason"),
        "teacher_spend_usd": (label_m.get("summary") or {}).get("spend_total", {}).get("cost_usd"),
    }
    if "values_dropped_by_reason" in filt:
        data["values_dropped_by_reason"] = filt["values_dropped_by_reason"]
    return data


def write_predictions(out: Path, texts: Sequence[str], gold: Sequence[Any], preds: dict[str, list[Any]],
                      extras: dict[str, dict[str, Any]]) -> None:
    """`eval/predictions.jsonl`: one row per test input (text, gold, each model's prediction; the
    student's top-1 probability for a classifier, each causal model's answer logprobs); for a
    classifier student also `eval/student_logits.npy` (N, C) + `student_labels.json` (C)."""
    out.mkdir(parents=True, exist_ok=True)
    p1 = None
    if "logits" in extras.get("student", {}):
        own, logits = extras["student"]["logits"]
        z = np.asarray(logits, dtype=np.float64)
        e = np.exp(z - z.max(-1, keepdims=True))
        p1 = (e / e.sum(-1, keepdims=True)).max(-1)  # (N,) softmax top-1 at T=1
        np.save(out / Path(STUDENT_LOGITS).name, np.asarray(logits, dtype=np.float32))
        (out / Path(STUDENT_LABELS).name).write_text(json.dumps(own))
    with open(out / Path(PREDICTIONS).name, "w") as f:
        for i, (t, g) in enumerate(zip(texts, gold)):
            row = {"text": t, "gold": g, **{k: v[i] for k, v in preds.items()}}
            if p1 is not None:
                row["student_prob"] = round(float(p1[i]), 6)
            for name, ex in extras.items():
                if "confidence" in ex:
                    row[f"{name}_confidence"] = ex["confidence"][i]
            f.write(json.dumps(row) + "\n")


def summarise(models: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """The report's summary: student / teacher on `metric`, the p50 latency speed-up, and
    student - baseline on `metric` (each when its models were evaluated)."""
    s, t = models.get("student"), models["teacher"]
    summary: dict[str, Any] = {}
    if s:
        summary[f"student_over_teacher_{metric}"] = round(s[metric] / max(t[metric], 1e-9), 4)
        if t.get("latency_ms_p50") and s.get("latency_ms_p50"):
            summary["latency_speedup"] = round(t["latency_ms_p50"] / s["latency_ms_p50"], 2)
        if "baseline" in models:
            summary[f"student_minus_baseline_{metric}"] = round(s[metric] - models["baseline"][metric], 4)
    return summary


def _machine() -> dict[str, Any]:
    import os
    import platform

    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "cuda": torch.cuda.is_available()}
