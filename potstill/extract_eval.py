"""Stage `eval` for `kind: extract`: teacher vs tagger student vs gold-only baseline, field level.

Metrics are pure functions of predicted objects (None = no valid JSON object):
- `json_validity`: share of inputs answered with a schema-valid object;
- `exact_match`: share whose whole object equals the gold one (values compared normalised);
- field-level precision / recall / F1, micro over all (field, value) pairs and per field: a
  predicted pair is right when the gold object has the same field with the same normalised value
  (Unicode NFKC, case-folded, whitespace collapsed); an invalid answer predicts no pairs;
- agreement with the teacher: exact match against the teacher's objects, and field F1 with the
  teacher's objects as the reference.
Timing (this machine): p50/p95 latency of one input at a time through the whole path (tokenise,
forward, decode to JSON), after warm-up, and batch throughput over the test texts.
"""

from __future__ import annotations

import json
import random
import time
import unicodedata
from typing import Any, Sequence

from .data.prepare import prepare_inputs
from .evaluate import _machine, percentile, summarise
from .extract_schema import clean_fields, validate_fields
from .manifest import read_manifest, write_manifest
from .paths import FILTER_REPORT, MANIFEST, RunPaths
from .progress import progress
from .spec import TaskSpec
from .store import Store

Obj = dict[str, Any]


def norm_value(v: Any) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(v)).casefold().split())


def _pairs(obj: Obj | None) -> set[tuple[str, str]]:
    return {(k, norm_value(v)) for k, v in (obj or {}).items()}


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4)}


def field_scores(gold: Sequence[Obj], pred: Sequence[Obj | None], fields: Sequence[str]) -> dict[str, Any]:
    """Micro precision/recall/F1 over (field, value) pairs, and the same per field (with support,
    the number of gold values). Fields are those of the schema, in its order."""
    counts = {f: [0, 0, 0] for f in fields}  # tp, fp, fn
    for g, p in zip(gold, pred):
        gp, pp = _pairs(g), _pairs(p)
        for f, _ in gp & pp:
            counts.setdefault(f, [0, 0, 0])[0] += 1
        for f, _ in pp - gp:
            counts.setdefault(f, [0, 0, 0])[1] += 1
        for f, _ in gp - pp:
            counts.setdefault(f, [0, 0, 0])[2] += 1
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    per = {f: {**_prf(*c), "support": c[0] + c[2]} for f, c in counts.items()}
    return {**_prf(tp, fp, fn), "per_field": per}


def exact_match(gold: Sequence[Obj | None], pred: Sequence[Obj | None]) -> float:
    """Share of rows whose predicted object equals the reference (None never matches)."""
    hits = sum(g is not None and p is not None and _pairs(g) == _pairs(p) for g, p in zip(gold, pred))
    return hits / max(len(gold), 1)


def json_validity(pred: Sequence[Obj | None]) -> float:
    return sum(p is not None for p in pred) / max(len(pred), 1)


def model_metrics(gold: Sequence[Obj], pred: Sequence[Obj | None], fields: Sequence[str],
                  teacher: Sequence[Obj | None] | None = None) -> dict[str, Any]:
    fs = field_scores(gold, pred, fields)
    m = {"json_validity": round(json_validity(pred), 4), "exact_match": round(exact_match(gold, pred), 4),
         "field_precision": fs["precision"], "field_recall": fs["recall"], "field_f1": fs["f1"],
         "per_field": fs["per_field"]}
    if teacher is not None:
        m["agreement_with_teacher"] = round(exact_match(teacher, pred), 4)
        ref = [t for t in teacher if t is not None]
        got = [p for t, p in zip(teacher, pred) if t is not None]
        m["field_f1_vs_teacher"] = field_scores(ref, got, fields)["f1"]
    return m


# ---------------------------------------------------------------------------------------------
# local taggers: predict and time


def tagger_objects(model, tok, texts: Sequence[str], schema: Obj, batch_size: int, max_length: int
                   ) -> list[Obj | None]:
    from .students.tagger import predict_tags

    out: list[Obj | None] = []
    for p in predict_tags(model, tok, texts, batch_size, max_length):
        obj = {k: v for k, v in p.fields.items() if k in schema["properties"]}
        out.append(obj if validate_fields(obj, schema) is None else None)
    return out


def time_tagger(model, tok, texts: Sequence[str], n_single: int, batch_size: int, max_length: int,
                seed: int = 0) -> dict[str, float]:
    """p50/p95 single-input latency (ms) of the whole path to JSON, and batch throughput."""
    from .students.tagger import predict_tags

    rng = random.Random(seed)
    sample = [texts[rng.randrange(len(texts))] for _ in range(n_single)]
    for t in sample[:10]:  # warm-up: allocator, kernels
        predict_tags(model, tok, [t], 1, max_length)
    times = []
    for t in sample:
        t0 = time.perf_counter()
        predict_tags(model, tok, [t], 1, max_length)
        times.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    predict_tags(model, tok, texts, batch_size, max_length)
    elapsed = time.perf_counter() - t0
    return {"latency_ms_p50": round(percentile(times, 50), 3),
            "latency_ms_p95": round(percentile(times, 95), 3),
            "throughput_per_s": round(len(texts) / elapsed, 1)}


# ---------------------------------------------------------------------------------------------
# the stage


def evaluate_extract(spec: TaskSpec, run: RunPaths) -> dict[str, Any]:
    import torch

    from .students.classifier import count_params, dir_size_mb
    from .students.tagger import load_tagger
    from .teachers import answer_cached, make_teacher

    if spec.eval.threads:
        torch.set_num_threads(spec.eval.threads)
    schema = spec.json_schema
    assert schema is not None
    inputs = prepare_inputs(spec, run)
    if not inputs.test:
        raise ValueError("no test split: set data.test to a file with gold fields")
    fields = inputs.labels
    texts = [ex.text for ex in inputs.test]
    gold = [clean_fields(json.loads(ex.gold)) if ex.gold else {} for ex in inputs.test]
    preds: dict[str, list[Obj | None]] = {}
    models: dict[str, dict[str, Any]] = {}

    with Store(run.db) as store:  # the teacher through the same cached interface that labelled
        teacher = make_teacher(spec, run, fields)
        before = store.spend(teacher.identity)
        with progress(len(texts), "eval teacher") as bar:
            answers = answer_cached(teacher, texts, store, spec.spec_hash(), bar.advance)
        after = store.spend(teacher.identity)
    preds["teacher"] = [json.loads(a.label) if a.label is not None else None for a in answers]
    t_info: dict[str, Any] = {"identity": teacher.identity}
    if hasattr(teacher, "model"):  # a local tagger
        t_info.update({"params": count_params(teacher.model), "layers": teacher.model.config.num_hidden_layers,
                       **time_tagger(teacher.model, teacher.tokenizer, texts, spec.eval.latency_samples,
                                     spec.eval.batch_size, spec.teacher.max_length)})
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
        model, tok = load_tagger(d)
        ml = spec.student.max_length
        preds[name] = tagger_objects(model, tok, texts, schema, spec.eval.batch_size, ml)
        m = read_manifest(d)
        models[name] = {"params": count_params(model), "size_mb": dir_size_mb(d),
                        "layers": model.config.num_hidden_layers,
                        **time_tagger(model, tok, texts, spec.eval.latency_samples, spec.eval.batch_size, ml),
                        "objective": m.get("objective"), "signal": m.get("signal"),
                        "init_from": m.get("init_from"),
                        "best_val_token_f1": m.get("metrics", {}).get("best_val_accuracy"),
                        "train_seconds": m.get("metrics", {}).get("seconds")}

    for name, pred in preds.items():
        models[name].update(model_metrics(gold, pred, fields, None if name == "teacher" else preds["teacher"]))
    summary = summarise(models, "field_f1")

    filt = json.loads((run.filtered / FILTER_REPORT).read_text()) if (run.filtered / FILTER_REPORT).exists() else {}
    label_m = read_manifest(run.labels) if (run.labels / MANIFEST).exists() else {}
    report = {
        "task": spec.name,
        "kind": "extract",
        "test_rows": len(texts),
        "fields": len(fields),
        "models": models,
        "summary": summary,
        "data": {
            "inputs": filt.get("inputs", len(inputs.train)),
            "labeled": filt.get("labelled"),
            "kept": filt.get("kept"),
            "dropped": filt.get("dropped"),
            "dropped_by_reason": filt.get("dropped_by_reason"),
            "values_dropped_by_reason": filt.get("values_dropped_by_reason"),
            "teacher_spend_usd": (label_m.get("summary") or {}).get("spend_total", {}).get("cost_usd"),
        },
        "machine": _machine(),
    }
    run.root.mkdir(parents=True, exist_ok=True)
    run.report_json.write_text(json.dumps(report, indent=2))
    run.report_md.write_text(render_markdown(report))
    write_manifest(run.root / "eval", "eval", spec, dataset_hash=inputs.dataset_hash,
                   parents={k: str(run.model_dir(k)) for k in models if k != "teacher"},
                   report=str(run.report_json))
    return report


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (report.md and the CLI print the same)."""
    head = ["model", "field F1", "precision", "recall", "exact match", "valid JSON", "agree w/ teacher",
            "params", "p50 ms", "p95 ms", "inputs/s"]
    rows = []
    for name, m in report["models"].items():
        rows.append([name, f"{m['field_f1']:.4f}", f"{m['field_precision']:.4f}", f"{m['field_recall']:.4f}",
                     f"{m['exact_match']:.4f}", f"{m['json_validity']:.4f}",
                     str(m.get("agreement_with_teacher", "—")),
                     f"{m['params'] / 1e6:.1f}M" if m.get("params") else "—",
                     str(m.get("latency_ms_p50") or "—"), str(m.get("latency_ms_p95") or "—"),
                     str(m.get("throughput_per_s") or "—")])
    return head, rows


def render_markdown(report: dict[str, Any]) -> str:
    head, rows = table_rows(report)
    lines = [f"# potstill report: {report['task']} (extract)", "",
             f"Held-out test: {report['test_rows']} rows, {report['fields']} fields.", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    s, d = report["summary"], report["data"]
    lines.append("")
    if s:
        lines += [f"- student / teacher field F1: {s.get('student_over_teacher_field_f1')}",
                  f"- student latency speed-up (p50): {s.get('latency_speedup')}x",
                  f"- student − baseline field F1: {s.get('student_minus_baseline_field_f1')}", ""]
    lines += ["## Per field (F1, support)", "", "| field | " + " | ".join(report["models"]) + " | support |",
              "|---|" + "---:|" * (len(report["models"]) + 1)]
    first = next(iter(report["models"].values()))
    for f, v in first["per_field"].items():
        cells = [f"{m['per_field'].get(f, {}).get('f1', 0):.4f}" for m in report["models"].values()]
        lines.append(f"| {f} | " + " | ".join(cells) + f" | {v['support']} |")
    lines += ["", "## Data", "",
              f"inputs {d['inputs']} → labelled {d['labeled']} → kept {d['kept']} (dropped {d['dropped']})", ""]
    for key in ("dropped_by_reason", "values_dropped_by_reason"):
        if d.get(key):
            lines += [f"- {key.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in d[key].items() if v)]
    return "\n".join(lines) + "\n"
