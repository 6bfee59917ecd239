"""What one escalation costs the server on top of the teacher's own latency: `OpenAITeacher.answer`
for one input, against tests/fake_openai.py answering at once (0 ms), side by side:

- kept: one teacher for every call, as the server holds it (its event loop and pooled client
  stay between calls);
- fresh: a new teacher per call, which pays what every call paid before the client was kept
  (a new event loop, SDK client and connection; over HTTPS a TLS handshake on top).

    .venv/bin/python bench/teacher_call.py [--calls 30]

Prints p50 / min / max ms per call; nothing is written to docs/ (the figure is quoted in
docs/RESULTS.md with this command).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    from fake_openai import FakeOpenAI

    from potstill.spec import TaskSpec
    from potstill.teachers.openai_compat import OpenAITeacher

    labels = ["balance", "transfer", "weather"]
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    with FakeOpenAI(lambda t: labels[0], labels=labels, delay_ms=0, record_bodies=False) as url:
        spec = TaskSpec(name="bench", labels=labels, data={"train": "unused.jsonl"}, teacher={
            "kind": "openai", "model": "m", "base_url": url, "max_retries": 0, "logprobs": False})

        def timed(make) -> list[float]:
            out = []
            for i in range(args.calls):
                t0 = time.perf_counter()
                list(make().answer([f"hello {i}"]))
                out.append((time.perf_counter() - t0) * 1000)
            return sorted(out)

        kept_teacher = OpenAITeacher(spec, labels)
        rows = {"kept (one teacher, as served)": timed(lambda: kept_teacher),
                "fresh (a new teacher per call)": timed(lambda: OpenAITeacher(spec, labels))}
        kept_teacher.close()
    print(f"one-input answer() against a 0 ms local endpoint, {args.calls} calls each\n")
    print("| teacher | p50 ms | min ms | max ms |\n|---|---:|---:|---:|")
    for name, xs in rows.items():
        print(f"| {name} | {xs[len(xs) // 2]:.1f} | {xs[0]:.1f} | {xs[-1]:.1f} |")


if __name__ == "__main__":
    main()
