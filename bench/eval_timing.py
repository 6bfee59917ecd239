"""Timing a classify run's models fairly: batch-1 latency interleaved, and validation batch order.

1. Batch-1 latency. The run's models (teacher, student, baseline: those that are encoder
   classifiers in the run directory) answer the same seeded test texts one request at a time, in
   turn: text 1 to each model, then text 2, and so on (potstill/timing.py, as the evaluation stage
   times them). Their p50 / p95 and the teacher's p50 over each model's are comparable; timed
   minutes apart, on a shared or noisy machine, they would not be. Repeated `--repeats` times
   with a new sample each.
2. Validation batch order. One pass over the validation split at batch 128, in file order and in
   length order (what the trainer does since 2026-11-29). It shows what padding to each batch's
   longest text costs. This part runs at torch's default thread count, as training does.

`--extra NAME=DIR` adds another classifier directory to both (a student of another shape).

Prints both tables and writes docs/bench_eval_timing.{md,json}.

    .venv/bin/python bench/eval_timing.py runs/clinc150          # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from potstill.data.inputs import read_jsonl  # noqa: E402
from potstill.paths import RunPaths  # noqa: E402
from potstill.serve.calibrate import load_run_spec, resolve_data_path  # noqa: E402
from potstill.students.classifier import classifier_timer, load_classifier  # noqa: E402
from potstill.timing import time_interleaved  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the evaluation's default: 1)")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=DIR",
                    help="another classifier directory timed in turn with the run's models (another "
                         "student shape, say)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_eval_timing")
    args = ap.parse_args()
    train_threads = torch.get_num_threads()  # the trainer's: torch's default
    torch.set_num_threads(args.threads)
    run = RunPaths(args.run.resolve())
    spec = load_run_spec(run.root)
    max_len = spec.student.max_length
    test = [r["text"] for r in read_jsonl(resolve_data_path(spec.data.test, spec, run))]
    val = [r["text"] for r in read_jsonl(resolve_data_path(spec.data.validation, spec, run))]
    models = {name: load_classifier(run.root / name) for name in ("teacher", "student", "baseline")
              if (run.root / name / "config.json").exists()}
    for extra in args.extra:
        name, sep, path = extra.partition("=")
        if not sep or name in models:
            raise SystemExit(f"--extra {extra!r}: give NAME=DIR, with a NAME not already timed")
        models[name] = load_classifier(path)
    for m, _ in models.values():
        m.eval()

    latency = []
    timers = {name: classifier_timer(m, tok, args.samples, max_len) for name, (m, tok) in models.items()}
    for rep in range(args.repeats):  # the evaluation stage's own interleaved timing (potstill/timing.py)
        res = time_interleaved(timers, test, seed=rep)
        latency.append({n: {"p50": v["latency_ms_p50"], "p95": v["latency_ms_p95"]} for n, v in res.items()})
        print(f"repeat {rep + 1}: " + ", ".join(f"{n} p50 {v['p50']:.2f} ms" for n, v in latency[-1].items()),
              flush=True)

    order = []
    torch.set_num_threads(train_threads)
    with torch.inference_mode():
        for name, (m, tok) in models.items():
            row = {"model": name}
            for how, texts in (("file order", val), ("length order", sorted(val, key=len))):
                t0 = time.perf_counter()
                for s in range(0, len(texts), 128):
                    m(**tok(texts[s : s + 128], padding=True, truncation=True, max_length=max_len,
                            return_tensors="pt"))
                row[how] = time.perf_counter() - t0
            order.append(row)
            print(row, flush=True)

    lines = [f"Batch-1 latency, the models interleaved request by request on {args.samples} seeded test "
             f"texts, {args.threads} torch thread(s):", "",
             "| repeat | " + " | ".join(f"{n} p50 / p95 ms" for n in models) + " | teacher p50 / model p50 |",
             "|---|" + "---:|" * (len(models) + 1)]
    for i, rep in enumerate(latency):
        ratio = ", ".join(f"{n} {rep['teacher']['p50'] / rep[n]['p50']:.2f}x" for n in rep if n != "teacher") \
            if "teacher" in rep else "—"
        lines.append(f"| {i + 1} | " + " | ".join(f"{rep[n]['p50']:.2f} / {rep[n]['p95']:.2f}" for n in models)
                     + f" | {ratio} |")
    lines += ["", f"One pass over the {len(val)} validation rows at batch 128, {train_threads} torch threads "
              "(the trainer's), in seconds:", "",
              "| model | file order | length order |", "|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['file order']:.1f} | {r['length order']:.1f} |" for r in order]
    table = "\n".join(lines)
    print(table)
    cmd = "python bench/eval_timing.py " + " ".join(sys.argv[1:])
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": cmd, "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
         "latency": latency, "validation_order": order}, indent=2))
    args.out.with_suffix(".md").write_text(f"# Evaluation timing\n\n`{cmd}` ({time.strftime('%Y-%m-%d')})\n\n{table}\n")


if __name__ == "__main__":
    main()
