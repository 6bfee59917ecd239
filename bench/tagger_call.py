"""What one tagger call costs besides the model: `predict_tags` with and without `model.eval()` on
every call (what it did until 2026-11-30: eval() walks every module of the model).

An extract run's teacher and student answer the same seeded test texts one request at a time, in
turn (potstill/timing.py, as the evaluation times them), each once through today's `predict_tags`
("now") and once with `model.eval()` before each call ("eval() per call", the old path). Prints a
table and writes docs/bench_tagger_call.md.

    .venv/bin/python bench/tagger_call.py /work/runs/snips-extract     # about a minute
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from potstill.data.inputs import read_jsonl  # noqa: E402
from potstill.paths import RunPaths  # noqa: E402
from potstill.serve.calibrate import load_run_spec, resolve_data_path  # noqa: E402
from potstill.students.tagger import load_tagger, tagger_timer  # noqa: E402
from potstill.timing import Timer, time_interleaved  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the evaluation's default: 1)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_tagger_call.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = load_run_spec(a.run)
    texts = [r[spec.data.text_field] for r in read_jsonl(resolve_data_path(spec.data.test, spec, RunPaths(a.run)))]
    n = spec.student.max_length
    timers = {}
    for name in ("teacher", "student"):
        model, tok = load_tagger(a.run / name)
        now = tagger_timer(model, tok, a.samples, n)  # what the evaluation times

        def old(text, model=model, call=now.call):
            model.eval()
            return call(text)

        timers[f"{name}, now"] = now
        timers[f"{name}, eval() per call"] = Timer(old, a.samples)
    res = time_interleaved(timers, texts, seed=0)
    p50 = {k: v["latency_ms_p50"] for k, v in res.items()}
    lines = ["# One tagger call, with and without model.eval() on every call", "",
             f"Run {a.run}; {a.samples} test texts, batch 1, {a.threads} torch thread(s), the four "
             f"timers taking turns input by input. Load average at the end: "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}.", "",
             "| timer | p50 ms | p95 ms |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['latency_ms_p50']:.2f} | {v['latency_ms_p95']:.2f} |" for k, v in res.items()]
    for path in ("now", "eval() per call"):
        lines.append(f"\nteacher p50 / student p50, {path}: "
                     f"**{p50[f'teacher, {path}'] / p50[f'student, {path}']:.2f}x**")
    lines += ["", f"Command: `python bench/tagger_call.py {a.run}" +
              (f" --samples {a.samples}" if a.samples != 300 else "") +
              (f" --threads {a.threads}" if a.threads != 1 else "") + "`", ""]
    md = "\n".join(lines)
    print(md)
    a.out.write_text(md, encoding="utf-8")


if __name__ == "__main__":
    main()
