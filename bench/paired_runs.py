"""Two models from two runs on the same test rows: the difference, with a paired bootstrap interval.

The verdict's noise margin is for one accuracy alone. When two runs share their test split (a
variant against the recipe it changes: a copy of a run with one option changed), every row is
answered by both models, and the interval of their *difference* is far tighter: resample the
rows, the same resample for both. Reads each run's eval/predictions.jsonl (`potstill eval`
writes it): accuracy for classify runs, field-level micro F1 for extract runs (the extract task's
scorer). Not a test; prints a table and writes it to --out (.md, and .json beside it).

    python bench/paired_runs.py --pair /work/runs/a:student /work/runs/b:student \\
        [--pair RUN:MODEL RUN:MODEL ...] [--out docs/bench_paired_runs.md]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESAMPLES = 1000

from snips_json_wide import counts, f1  # noqa: E402  (the extract scorer's per-row counts, micro F1)


def per_row(run: Path, model: str) -> tuple[list[str], list[tuple[int, int, int]]]:
    """(texts, per-row (hits, wrong, missed)): for a label, (1, 0, 0) right and (0, 1, 1) wrong;
    for fields, the (tp, fp, fn) of the row's (field, value) pairs."""
    path = run / "eval" / "predictions.jsonl"
    if not path.exists():
        raise SystemExit(f"{path}: no predictions (run `potstill eval` on {run})")
    texts, rows = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if model not in r:
            raise SystemExit(f"{path}: no {model!r} column")
        texts.append(r["text"])
        if isinstance(r["gold"], dict):
            rows.append(counts(r["gold"], r[model]))
        else:
            rows.append((1, 0, 0) if r[model] == r["gold"] else (0, 1, 1))
    return texts, rows


score = f1
"""Micro F1 of the rows' counts; for labels, where every row is (1,0,0) or (0,1,1), accuracy."""


def paired(a: list[tuple[int, int, int]], b: list[tuple[int, int, int]], seed: int = 0) -> dict:
    rng = random.Random(seed)
    n = len(a)
    diffs = []
    for _ in range(RESAMPLES):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(score([b[i] for i in idx]) - score([a[i] for i in idx]))
    diffs.sort()
    return {"score_a": round(score(a), 4), "score_b": round(score(b), 4), "diff": round(score(b) - score(a), 4),
            "ci95": [round(diffs[int(0.025 * RESAMPLES)], 4), round(diffs[int(0.975 * RESAMPLES) - 1], 4)],
            "rows": n, "disagree": sum(x != y for x, y in zip(a, b))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("A_RUN:MODEL", "B_RUN:MODEL"),
                    help="the difference reported is B - A")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_paired_runs.md")
    args = ap.parse_args()
    results = []
    for a_spec, b_spec in args.pair:
        (a_run, a_model), (b_run, b_model) = (s.rpartition(":")[::2] for s in (a_spec, b_spec))
        ta, ra = per_row(Path(a_run), a_model)
        tb, rb = per_row(Path(b_run), b_model)
        if ta != tb:
            raise SystemExit(f"{a_spec} and {b_spec}: not the same test rows in the same order")
        results.append({"a": a_spec, "b": b_spec, **paired(ra, rb)})
    lines = ["| A | B | A's score | B's score | B − A | paired 95% | rows | rows right in one only |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    lines += [f"| `{r['a']}` | `{r['b']}` | {r['score_a']:.4f} | {r['score_b']:.4f} | {100 * r['diff']:+.1f} | "
              f"{100 * r['ci95'][0]:+.1f} to {100 * r['ci95'][1]:+.1f} | {r['rows']} | {r['disagree']} |"
              for r in results]
    table = "\n".join(lines)
    print(table)
    cmd = "python bench/paired_runs.py " + " ".join(sys.argv[1:])
    args.out.with_suffix(".md").write_text(f"# Paired differences between runs\n\n`{cmd}` "
                                           f"({time.strftime('%Y-%m-%d')}); differences in points\n\n{table}\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": cmd, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
