"""`json_decoding: schema` on examples/snips-json: why answers break, and what holding them costs.
Not a test; prints tables and writes docs/bench_json_decoding.{md,json}.

- `--answers FILE`: the stored answers of a bench/snips_json_wide.py JSON (each model that
  generated them). Per model: how many hold no object the schema accepts (answers.parse_answer's
  reason: invalid_json, schema_invalid) and how many write one key twice (`"key":` found twice).
- `--model DIR`: that causal model answers the example's first `--rows` test rows at batch 32
  with its trimmed output vocabulary, freely and under the schema in turn, `--repeats` times
  after one warm-up of each (so the constraint's caches are warm): seconds per pass, and the
  seconds spent in the constraint's own calls (SchemaLogitsProcessor.__call__).

Usage: python bench/json_decoding.py --answers docs/bench_snips_json_wide_more_inputs.json \\
           --model /work/runs/sj12/student [--rows 64] [--repeats 2] [--out docs/bench_json_decoding]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EX = ROOT / "examples" / "snips-json"
KEY = re.compile(r'"([^"\\]+)"\s*:')


def answer_faults(answers: list[str], schema: dict) -> dict[str, int]:
    from potstill.answers import parse_answer

    reasons = collections.Counter(parse_answer(a, schema)[1] or "ok" for a in answers)
    repeated = sum(1 for a in answers if a and len(KEY.findall(a)) > len(set(KEY.findall(a))))
    return {"answers": len(answers), "ok": reasons["ok"], "invalid_json": reasons["invalid_json"],
            "schema_invalid": reasons["schema_invalid"], "a_key_twice": repeated}


def time_decoding(model_dir: Path, spec, rows: int, repeats: int) -> dict[str, float]:
    import torch

    from potstill.students import json_decoding
    from potstill.students.causal_lm import STUDENT_META, generate, load_causal_lm
    from potstill.students.output_vocab import ANSWERS_AND_INPUT, decode_ids

    torch.set_num_threads(2)
    model, tok = load_causal_lm(model_dir)
    ids = decode_ids(json.loads((model_dir / STUDENT_META).read_text()), ANSWERS_AND_INPUT, model_dir)
    lines = (EX / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
    prompts = [spec.render_prompt(json.loads(line)["text"], []) for line in lines]
    keys = list(spec.json_schema["properties"])
    in_constraint = [0.0]
    call = json_decoding.SchemaLogitsProcessor.__call__

    def timed(self, input_ids, scores):
        t0 = time.perf_counter()
        try:
            return call(self, input_ids, scores)
        finally:
            in_constraint[0] += time.perf_counter() - t0

    json_decoding.SchemaLogitsProcessor.__call__ = timed  # type: ignore[method-assign]
    out = {"free_s": 0.0, "schema_s": 0.0}
    for rep in range(repeats + 1):  # the first pass of each warms up, and is not counted
        for mode in ("free", "schema"):
            in_constraint[0] = 0.0
            t0 = time.perf_counter()
            generate(model, tok, prompts, spec.student.max_new_tokens, 32, max_length=spec.student.max_length,
                     answer_ids=ids, json_keys=keys if mode == "schema" else None)
            if rep:
                out[f"{mode}_s"] += (time.perf_counter() - t0) / repeats
                if mode == "schema":
                    out["constraint_s"] = out.get("constraint_s", 0.0) + in_constraint[0] / repeats
    return {k: round(v, 2) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--answers", type=Path, help="a bench/snips_json_wide.py JSON with stored answers")
    ap.add_argument("--model", type=Path, help="a causal model directory trained by potstill")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_json_decoding"))
    args = ap.parse_args()
    from potstill.config import load_spec

    spec = load_spec(EX / "potstill.yaml")
    cmd = "python bench/json_decoding.py " + " ".join(sys.argv[1:])
    result: dict = {"command": cmd}
    lines = ["# json_decoding on snips-json (bench/json_decoding.py)", "", f"Command: `{cmd}`", ""]
    if args.answers:
        stored = json.loads(args.answers.read_text())["models"]
        faults = {n: answer_faults(m["answers"], spec.json_schema) for n, m in stored.items() if "answers" in m}
        result["faults"] = faults
        lines += [f"Stored answers of {args.answers}:", "",
                  "| model | answers | parse | no JSON object | breaks the schema | a key written twice |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {n} | {f['answers']} | {f['ok']} | {f['invalid_json']} | {f['schema_invalid']} | "
                  f"{f['a_key_twice']} |" for n, f in faults.items()]
        lines.append("")
    if args.model:
        t = time_decoding(args.model, spec, args.rows, args.repeats)
        result["timing"] = {"model": str(args.model), "rows": args.rows, **t}
        lines += [f"{args.model} on the example's first {args.rows} test rows, batch 32, trimmed output "
                  f"vocabulary, mean of {args.repeats} passes after a warm-up:", "",
                  "| free, s | schema, s | ratio | in the constraint's calls, s |", "|---:|---:|---:|---:|",
                  f"| {t['free_s']} | {t['schema_s']} | {t['schema_s'] / t['free_s']:.2f} | {t['constraint_s']} |", ""]
    Path(args.out + ".md").write_text("\n".join(lines))
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
