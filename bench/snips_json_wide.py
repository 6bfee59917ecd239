"""examples/snips-json's causal models scored on more test rows than the example's 100, with
paired bootstrap intervals: is one model better than another, or is the difference the noise of
a small test set? Not a test; prints a table and writes docs/bench_snips_json_wide.{md,json}.

The rows are the SNIPS test split's (shared/data/snips, CC0 1.0, filtered as make_data.py does:
no repeated slot) that are in none of the example's data files, so no model has seen them. Each
model answers them greedily, batched, with the example's prompt (potstill's `generate`), and is
scored with the extract task's scorer (field-level micro F1 over (field, value) pairs). Intervals:
1,000 bootstrap resamples of the rows, the same resample for every model, so a difference
between two models gets a paired interval.

Usage: python bench/snips_json_wide.py --model teacher=DIR --model student=DIR [--model ...]
           [--reuse docs/bench_snips_json_wide.json] [--pair student-teacher ...] [--rows 600]
           [--restricted student ...] [--span-values] [--span-similarity 0.5 ...]
           [--rows-from held-out|test] [--schema-decoding student ...]
           [--src /work/shared/data/snips]

The JSON it writes keeps every model's per-row counts and answers; `--reuse` reads them back, so a
model scored once joins later comparisons, and is scored under new span rules, without answering
the rows again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EX = ROOT / "examples" / "snips-json"
RESAMPLES = 1000


def held_out_rows(src: Path, n: int | None) -> list[dict]:
    """The SNIPS test rows (every slot one string) that none of the example's files holds."""
    seen = set()
    for f in EX.glob("data/*.jsonl"):
        seen |= {json.loads(line)["text"] for line in f.read_text(encoding="utf-8").splitlines() if line.strip()}
    out = []
    for line in (src / "test.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["text"] in seen or any(not isinstance(v, str) for v in r["fields"].values()):
            continue
        out.append({"text": r["text"], "gold": r["fields"]})
    return out[:n]


def example_test_rows(n: int | None) -> list[dict]:
    """The example's own test rows (data/test.jsonl)."""
    lines = (EX / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    return [{"text": r["text"], "gold": json.loads(r["label"])} for r in map(json.loads, filter(None, lines))][:n]


def counts(gold: dict, pred: dict | None) -> tuple[int, int, int]:
    """(tp, fp, fn) of one row's (field, value) pairs, as the extract scorer counts them."""
    from potstill.tasks.extract import field_pairs

    g, p = field_pairs(gold), field_pairs(pred)
    return len(g & p), len(p - g), len(g - p)


def f1(rows: list[tuple[int, int, int]]) -> float:
    tp, fp, fn = (sum(r[i] for r in rows) for i in range(3))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def dump(results: dict) -> str:
    """The results as JSON, one line per model (their per-row counts make a long line)."""
    models = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in results["models"].items())
    rest = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in results.items() if k != "models")
    return "{\n" + rest + ',\n "models": {\n' + models + "\n }\n}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="NAME=DIR (a causal model directory)")
    ap.add_argument("--reuse", action="append", default=[],
                    help="an earlier run's JSON: its models' per-row counts join without generating again")
    ap.add_argument("--pair", action="append", default=[], help="A-B: a paired interval for F1(A) - F1(B)")
    ap.add_argument("--restricted", action="append", default=[],
                    help="NAME: decode that model over its answer ids and the request's tokens "
                         "(student.output_vocab answers+input)")
    ap.add_argument("--span-values", action="store_true",
                    help="also score each generated model with its values made spans of the request "
                         "(the spec's span_values), as NAME+spans")
    ap.add_argument("--span-similarity", type=float, action="append", default=[],
                    help="X: also score each generated model with span_values at min_similarity X, as "
                         "NAME+spansX (choosing the rule's threshold)")
    ap.add_argument("--rows-from", choices=("held-out", "test"), default="held-out",
                    help="held-out: the SNIPS test rows in none of the example's files (default); test: "
                         "the example's own 100 test rows")
    ap.add_argument("--schema-decoding", action="append", default=[], metavar="NAME",
                    help="model NAME writes under json_decoding: schema (repeatable; the others write freely)")
    ap.add_argument("--rows", type=int, default=None, help="the first N held-out rows (default: all)")
    ap.add_argument("--src", type=Path, default=Path("/work/shared/data/snips"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_snips_json_wide"))
    args = ap.parse_args()

    import torch

    from potstill.config import load_spec
    from potstill.students.causal_lm import STUDENT_META, generate, load_causal_lm
    from potstill.students.output_vocab import ANSWERS_AND_INPUT, FULL, decode_ids
    from potstill.tasks.align import SNAP_SIMILARITY
    from potstill.tasks.extract import model_metrics
    from potstill.tasks.generate import json_objects, spans_only

    torch.set_num_threads(args.threads)
    spec = load_spec(EX / "potstill.yaml")
    rows = held_out_rows(args.src, args.rows) if args.rows_from == "held-out" else example_test_rows(args.rows)
    prompts = [spec.render_prompt(r["text"], []) for r in rows]
    fields = list(spec.json_schema["properties"])
    models = dict(m.split("=", 1) for m in args.model)
    rows_sha = hashlib.sha256(json.dumps([r["text"] for r in rows]).encode()).hexdigest()[:16]
    per_row: dict[str, list[tuple[int, int, int]]] = {}
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": len(rows),
                     "rows_sha": rows_sha, "models": {}}
    reused = {f: json.loads(Path(f).read_text()) for f in args.reuse}
    span_rules = ([("+spans", SNAP_SIMILARITY)] if args.span_values else []) + [
        (f"+spans{x:g}", x) for x in args.span_similarity]
    answered = set(models) | {n for old in reused.values() for n, m in old["models"].items() if "answers" in m}
    names = {n + tag for n in answered for tag, _ in span_rules} | set(models) | {n for old in reused.values() for n in old["models"]}
    pairs = {}  # "A-B" -> (A, B): the one split at a hyphen whose two sides are model names
    for pair in args.pair:
        splits = [(pair[:i], pair[i + 1:]) for i, c in enumerate(pair) if c == "-"]
        ok = [(a, b) for a, b in splits if a in names and b in names]
        if len(ok) != 1:
            sys.exit(f"--pair {pair}: not one A-B split into two of the models {sorted(names)}")
        pairs[pair] = ok[0]

    def with_spans(name: str, answers: list[str], entry: dict) -> None:
        """NAME+spans* entries: `answers` scored under each span rule (no generating again)."""
        for tag, sim in span_rules:
            snapped = [spans_only(a, r["text"], spec.json_schema, sim) for a, r in zip(answers, rows)]
            pred = json_objects(snapped, spec.json_schema)
            m = model_metrics([r["gold"] for r in rows], pred, fields)
            per_row[name + tag] = [counts(r["gold"], p) for r, p in zip(rows, pred)]
            results["models"][name + tag] = {
                **{k: entry[k] for k in ("dir", "output_vocab", "json_decoding", "seconds", "reused_from")
                   if k in entry},
                "span_values": sim, "field_f1": m["field_f1"], "json_validity": m["json_validity"],
                "exact_match": m["exact_match"], "per_row": per_row[name + tag]}
            print(f"{name}{tag}: field F1 {m['field_f1']:.4f}, valid JSON {m['json_validity']:.3f}", flush=True)

    for f, old in reused.items():
        if old.get("rows_sha") != rows_sha:
            sys.exit(f"--reuse {f}: scored on other rows than these {len(rows)} (rows_sha differs)")
        for name, m in old["models"].items():
            # a span rule's entry already made from a model's stored answers is not overwritten
            if name not in models and name not in results["models"] and "per_row" in m:
                per_row[name] = [tuple(c) for c in m["per_row"]]
                results["models"][name] = {**m, "reused_from": f}
                print(f"{name}: field F1 {m['field_f1']:.4f} (from {f})", flush=True)
                if "answers" in m and "span_values" not in m:
                    with_spans(name, m["answers"], results["models"][name])
    for name, path in models.items():
        model, tok = load_causal_lm(path)
        vocab = ANSWERS_AND_INPUT if name in args.restricted else FULL
        ids = decode_ids(json.loads((Path(path) / STUDENT_META).read_text()), vocab, Path(path))
        t0 = time.perf_counter()
        answers = [g.text for g in generate(model, tok, prompts, max_new_tokens=spec.student.max_new_tokens,
                                            batch_size=args.batch, max_length=spec.student.max_length,
                                            answer_ids=ids,
                                            json_keys=fields if name in args.schema_decoding else None)]
        secs = time.perf_counter() - t0
        pred = json_objects(answers, spec.json_schema)
        m = model_metrics([r["gold"] for r in rows], pred, fields)
        per_row[name] = [counts(r["gold"], p) for r, p in zip(rows, pred)]
        assert abs(f1(per_row[name]) - m["field_f1"]) < 1e-3, (f1(per_row[name]), m["field_f1"])
        results["models"][name] = {"dir": path, "output_vocab": vocab,
                                   "json_decoding": "schema" if name in args.schema_decoding else "free",
                                   "field_f1": m["field_f1"], "json_validity": m["json_validity"],
                                   "exact_match": m["exact_match"], "seconds": round(secs, 1),
                                   "per_row": per_row[name]}
        results["models"][name]["answers"] = answers
        print(f"{name}: field F1 {m['field_f1']:.4f}, valid JSON {m['json_validity']:.3f} ({secs:.0f} s)", flush=True)
        del model
        with_spans(name, answers, results["models"][name])

    if not per_row:
        sys.exit("nothing to score: give --model NAME=DIR or --reuse FILE")
    rng = random.Random(0)
    draws = [[rng.randrange(len(rows)) for _ in rows] for _ in range(RESAMPLES)]

    def interval(score) -> tuple[float, float]:
        vals = sorted(score(d) for d in draws)
        return vals[int(0.025 * RESAMPLES)], vals[int(0.975 * RESAMPLES) - 1]

    for name, c in per_row.items():
        results["models"][name]["ci95"] = interval(lambda d, c=c: f1([c[i] for i in d]))
    results["pairs"] = {}
    for pair in args.pair:
        a, b = pairs[pair]
        ca, cb = per_row[a], per_row[b]
        diff = f1(ca) - f1(cb)
        lo, hi = interval(lambda d: f1([ca[i] for i in d]) - f1([cb[i] for i in d]))
        results["pairs"][pair] = {"diff": round(diff, 4), "ci95": (round(lo, 4), round(hi, 4)),
                                  "ratio": round(f1(ca) / f1(cb), 4) if f1(cb) else None}

    cmd = "python bench/snips_json_wide.py " + " ".join(
        [f"--model {m}" for m in args.model] + [f"--reuse {f}" for f in args.reuse]
        + [f"--pair {p}" for p in args.pair] + [f"--restricted {r}" for r in args.restricted]
        + [f"--schema-decoding {n}" for n in args.schema_decoding]
        + (["--span-values"] if args.span_values else []) + [f"--span-similarity {x:g}" for x in args.span_similarity]
        + ([f"--rows-from {args.rows_from}"] if args.rows_from != "held-out" else [])
        + ([f"--rows {args.rows}"] if args.rows else []))
    where = ("SNIPS test rows in none of examples/snips-json's data files" if args.rows_from == "held-out"
             else "test rows of examples/snips-json (its data/test.jsonl)")
    title = "the held-out SNIPS test rows" if args.rows_from == "held-out" else "the example's test rows"
    lines = [f"# snips-json's models on {title} (bench/snips_json_wide.py)", "",
             f"{len(rows)} {where}; greedy answers, batch "
             f"{args.batch}; field-level micro F1 with 95% bootstrap intervals ({RESAMPLES} resamples of the rows).",
             "", f"Command: `{cmd}`", "",
             "| model | output vocabulary | decoding | field F1 | 95% interval | valid JSON | exact match | seconds |",
             "|---|---|---|---:|---|---:|---:|---:|"]
    for name, m in results["models"].items():
        lo, hi = m["ci95"]
        lines.append(f"| {name} | {m.get('output_vocab', FULL)} | {m.get('json_decoding', 'free')} | {m['field_f1']:.4f} | {lo:.4f}-{hi:.4f} | {m['json_validity']:.3f} | "
                     f"{m['exact_match']:.3f} | {m['seconds']:.0f}{' (reused)' if 'reused_from' in m else ''} |")
    if results["pairs"]:
        lines += ["", "| pair | F1 difference | paired 95% interval | ratio |", "|---|---:|---|---:|"]
        for pair, p in results["pairs"].items():
            lines.append(f"| {' - '.join(pairs[pair])} | {p['diff']:+.4f} | {p['ci95'][0]:+.4f} to "
                         f"{p['ci95'][1]:+.4f} | {p['ratio']} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    Path(args.out + ".json").write_text(dump(results))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
