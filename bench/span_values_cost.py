"""What `span_values` costs per answer: `spans_only` timed on the answers a snips_json_wide run
stored (its JSON keeps every generated model's answers and the rows' sha). Not a test; prints a
table and writes docs/bench_span_values_cost.md.

Usage: python bench/span_values_cost.py [--from docs/bench_snips_json_wide_spans.json] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", default=str(ROOT / "docs" / "bench_snips_json_wide_spans.json"))
    ap.add_argument("--repeat", type=int, default=3, help="passes over the answers (the best per answer is kept)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_span_values_cost.md"))
    args = ap.parse_args()

    from snips_json_wide import EX, held_out_rows

    from potstill.config import load_spec
    from potstill.tasks.generate import spans_only

    doc = json.loads(Path(args.src).read_text())
    spec = load_spec(EX / "potstill.yaml")
    rows = held_out_rows(Path(doc["args"]["src"]), None)
    lines = ["# What span_values costs per answer (bench/span_values_cost.py)", "",
             f"`spans_only` on each model's {len(rows)} stored answers from {Path(args.src).name}, one thread, "
             f"the best of {args.repeat} passes per answer.", "",
             f"Command: `python bench/span_values_cost.py --from {args.src} --repeat {args.repeat}`", "",
             "| model | answers | p50 ms | p95 ms | max ms |", "|---|---:|---:|---:|---:|"]
    for name, m in doc["models"].items():
        if "answers" not in m:
            continue
        best = np.full(len(rows), np.inf)
        for _ in range(args.repeat):
            for i, (a, r) in enumerate(zip(m["answers"], rows)):
                t0 = time.perf_counter()
                spans_only(a, r["text"], spec.json_schema)
                best[i] = min(best[i], (time.perf_counter() - t0) * 1000)
        lines.append(f"| {name} | {len(rows)} | {np.percentile(best, 50):.2f} | {np.percentile(best, 95):.2f} | "
                     f"{best.max():.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
