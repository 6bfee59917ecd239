"""Which student kind for slot extraction: the causal-LM students of examples/snips-json (JSON
generated token by token) beside the BIO-tagger students of examples/snips-extract (an encoder
that tags spans), scored on the same test rows. Not a test; prints a table and writes
docs/bench_snips_student_kinds.md.

The 100 test rows of snips-json are drawn from the SNIPS test split that snips-extract tests on
in full; both runs' eval/predictions.jsonl are read (nothing is retrained or re-run), the rows
are joined on their text, and every model's answers are scored with the extract task's scorer
(tasks/extract.py: field-level micro F1 over (field, value) pairs, JSON validity, object exact
match). Latency and size come from each run's report.json (batch-1 p50, measured in that run on
its own machine state).

Usage: python bench/snips_student_kinds.py [--json-run DIR --extract-run DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json-run", type=Path, default=ROOT / "examples/snips-json/runs/snips-json")
    ap.add_argument("--extract-run", type=Path, default=ROOT / "examples/snips-extract/runs/snips-extract")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/bench_snips_student_kinds.md")
    args = ap.parse_args()

    from potstill.answers import schema_fields
    from potstill.data.inputs import read_jsonl
    from potstill.tasks.extract import model_metrics
    from potstill.tasks.generate import json_objects

    runs = {"snips-json": args.json_run, "snips-extract": args.extract_run}
    for name, run in runs.items():
        for f in ("eval/predictions.jsonl", "report.json"):
            if not (run / f).exists():
                sys.exit(f"{run / f}: missing; run examples/{name} first (its README says how)")
    reports = {name: json.loads((run / "report.json").read_text()) for name, run in runs.items()}
    schema = json.loads((args.json_run / "spec.resolved.json").read_text())["json_schema"]
    fields = schema_fields(schema)
    gen = read_jsonl(args.json_run / "eval/predictions.jsonl")
    tag = {r["text"]: r for r in read_jsonl(args.extract_run / "eval/predictions.jsonl")}
    missing = [r["text"] for r in gen if r["text"] not in tag]
    if missing:
        sys.exit(f"{len(missing)} snips-json test rows are not in the snips-extract run's predictions "
                 f"(first: {missing[0]!r}): the two runs do not share their test rows")
    texts = [r["text"] for r in gen]
    gold = [json.loads(r["gold"]) if isinstance(r["gold"], str) else r["gold"] for r in gen]
    for g, t in zip(gold, texts):
        if tag[t]["gold"] != g:
            sys.exit(f"gold differs between the runs for {t!r}: {g} vs {tag[t]['gold']}")

    lines = [
        "# Which student kind for slot extraction (bench/snips_student_kinds.py)", "",
        f"The same {len(texts)} SNIPS test rows (examples/snips-json's test split, all inside "
        "examples/snips-extract's), every model scored with the extract task's scorer. Latency: "
        "batch-1 p50 from each run's own report (generation for the causal LMs, one forward pass "
        "for the taggers).", "",
        f"Command: `python bench/snips_student_kinds.py --json-run {_rel(args.json_run)} "
        f"--extract-run {_rel(args.extract_run)}`", "",
        "| run | model | kind | layers | params (M) | field F1 | JSON validity | exact match | p50 ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run_name, rows, parse in (("snips-json", gen, lambda v: json_objects([v], schema)[0]),
                                  ("snips-extract", [tag[t] for t in texts], lambda v: v)):
        rep = reports[run_name]
        for model in ("teacher", "student", "baseline"):
            if model not in rows[0]:
                continue
            pred = [parse(r[model]) if isinstance(r[model], str) or r[model] is None else r[model] for r in rows]
            m = model_metrics(gold, pred, fields)
            info = rep["models"].get(model, {})
            kind = "causal LM" if run_name == "snips-json" else "BIO tagger"
            params = f"{info['params'] / 1e6:.1f}" if info.get("params") else "—"
            p50 = f"{info['latency_ms_p50']:.1f}" if info.get("latency_ms_p50") else "—"
            lines.append(f"| {run_name} | {model} | {kind} | {info.get('layers', '—')} | {params} | "
                         f"{m['field_f1']:.4f} | {m['json_validity']:.2f} | {m['exact_match']:.2f} | {p50} |")
    lines += ["", "Training data differ by design: snips-json's models see its 400 gold rows (teacher, "
              "baseline) and, for the student, the teacher's answers to its 799 unlabelled requests; "
              "snips-extract's tagger teacher "
              "and students see 4,000 training rows. Each row is the example as its spec ships.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


if __name__ == "__main__":
    main()
