"""The encoder classifier student on PyTorch and on ONNX Runtime (fp32 and dynamic int8), side by
side on the held-out test split: what the fast runtime costs in accuracy and what it buys in
latency. `evaluate_onnx(spec, run)` returns one row per runtime (and writes `onnx_eval.json` in the
run directory); `potstill eval` can add them to its report as their own rows.

Each row: accuracy and macro-F1 against gold, agreement with the PyTorch student's labels,
p50/p95 latency of one input at a time (tokenisation included, after a warm-up; the runtimes take
turns input by input, timing.py), batch throughput over the test texts, and the size of the model
file. All runtimes use the same number of threads (`eval.threads`), so the comparison is of the
runtimes, not of the thread counts. `potstill eval` times them in turn with the teacher, student
and baseline instead (`timed=False` hands it the timers).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .paths import RunPaths
from .spec import TaskSpec
from .threads import limit_threads
from .timing import Timer, time_interleaved

RESULT = "onnx_eval.json"


def _throughput(predict_many, texts: Sequence[str]) -> float:
    t0 = time.perf_counter()
    predict_many(texts)
    return round(len(texts) / (time.perf_counter() - t0), 1)


def evaluate_onnx(spec: TaskSpec, run: RunPaths, which: str = "student",
                  runtimes: Sequence[str] = ("torch", "onnx", "onnx_int8"), timed: bool = True) -> dict[str, Any]:
    """Rows {runtime: metrics} for the run's classifier `which` (see module doc); exports the ONNX
    graphs first when missing or stale. `predictions` ({runtime: labels of the test texts}) is
    returned too (for `potstill eval`'s scoring), not written to onnx_eval.json. With
    `timed=False` the rows have no latency; `timers` ({runtime: Timer}) is returned for the caller
    to time them with its own models."""
    from .onnx_export import onnx_dir, session
    from .serve.onnx_runtime import ensure_export
    from .stages.prepare import prepare_inputs
    from .students.classifier import classifier_timer, load_classifier, model_labels, predict_logits
    from .tasks.base import agreement
    from .tasks.classify import accuracy, macro_f1

    if spec.student.kind != "classifier":
        from .errors import PotstillError

        raise PotstillError(f"ONNX evaluation (eval.runtimes) is for encoder classifier students, not "
                            f"{spec.student.kind!r}")
    inputs = prepare_inputs(spec, run)
    if not inputs.test:
        raise ValueError("no test split: set data.test to a gold-labelled file")
    texts = [ex.text for ex in inputs.test]
    gold = [ex.gold for ex in inputs.test]
    threads = spec.eval.threads
    limit_threads(threads)  # torch and numpy's BLAS: threads.py
    model_dir = run.root / which
    max_len, bs, n_single = spec.student.max_length, spec.eval.batch_size, spec.eval.latency_samples
    model, tok = load_classifier(model_dir)
    labels = model_labels(model)
    rows: dict[str, dict[str, Any]] = {}
    preds: dict[str, list[str]] = {}
    timers: dict[str, Timer] = {}
    for rt in runtimes:
        if rt == "torch":
            timer = classifier_timer(model, tok, n_single, max_len)

            def many(ts: Sequence[str]) -> np.ndarray:
                return predict_logits(model, tok, ts, batch_size=bs, max_length=max_len)

            size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
        else:
            path = ensure_export(model_dir, onnx_dir(run.root, which), rt == "onnx_int8", max_len)
            sess = session(path, threads)
            names = [i.name for i in sess.get_inputs()]

            def one(t: str, sess=sess, names=names) -> int:
                enc = tok(t, return_tensors="np", truncation=True, max_length=max_len)
                return int(sess.run(["logits"], {n: enc[n].astype(np.int64) for n in names})[0].argmax(-1)[0])

            timer = Timer(one, n_single)

            def many(ts: Sequence[str], sess=sess, names=names) -> np.ndarray:
                order = sorted(range(len(ts)), key=lambda i: len(ts[i]))
                out = np.zeros((len(ts), len(labels)), np.float32)
                for s in range(0, len(order), bs):
                    idx = order[s : s + bs]
                    enc = tok([ts[i] for i in idx], padding=True, truncation=True,
                              max_length=max_len, return_tensors="np")
                    out[idx] = sess.run(["logits"], {n: enc[n].astype(np.int64) for n in names})[0]
                return out

            size = path.stat().st_size
        logits = many(texts)
        preds[rt] = [labels[i] for i in logits.argmax(-1)]
        rows[rt] = {"accuracy": round(accuracy(gold, preds[rt]), 4),
                    "macro_f1": round(macro_f1(gold, preds[rt], inputs.labels), 4),
                    "size_mb": round(size / 2**20, 2), "throughput_per_s": _throughput(many, texts)}
        timers[rt] = timer
    if timed:
        for rt, lat in time_interleaved(timers, texts).items():
            rows[rt] = {**rows[rt], **lat}
    if "torch" in preds:
        for rt in rows:
            rows[rt]["agreement_with_torch"] = round(agreement(preds[rt], preds["torch"]), 4)
    result = {"which": which, "n_test": len(texts), "threads": threads, "rows": rows}
    (run.root / RESULT).write_text(json.dumps(result, indent=2))
    return {**result, "predictions": preds, **({} if timed else {"timers": timers})}


def markdown(result: dict[str, Any]) -> str:
    """The rows as a markdown table (for report.md or a bench file)."""
    rows = result["rows"]
    base = rows.get("torch", {})
    out = [f"{result['which']} on {result['n_test']} test inputs, {result['threads'] or 'default'} thread(s)",
           "", "| runtime | accuracy | agreement with torch | p50 ms | p95 ms | inputs/s (batched) | size MB | p50 speed-up |",
           "|---|---|---|---|---|---|---|---|"]
    for rt, r in rows.items():
        up = (base["latency_ms_p50"] / r["latency_ms_p50"]) if base and r["latency_ms_p50"] else float("nan")
        out.append(f"| {rt} | {r['accuracy']:.4f} | {r.get('agreement_with_torch', float('nan')):.4f} | "
                   f"{r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} | {r['throughput_per_s']:.0f} | "
                   f"{r['size_mb']:.1f} | {up:.2f}x |")
    return "\n".join(out) + "\n"


def run_dir_spec(run_dir: str | Path) -> tuple[TaskSpec, RunPaths]:
    """(spec, RunPaths) of a run directory, from its saved resolved spec."""
    from .serve.calibrate import load_run_spec

    run = RunPaths(Path(run_dir))
    return load_run_spec(run.root, []), run
