"""Which fine-tuning recipe learns fastest from gold labels? Learning rate, head learning rate and
step budget for the `fit` teacher (MiniLM-L6, all layers) and the gold-only 2-layer baseline.

Each variant fine-tunes a fresh model from the packaged MiniLM-L6 on the same seeded subset of one
classification data set (train/validation/test JSONL) for a fixed number of optimizer steps
(linear decay to 0 at the last step, no early stopping), validates a few times on the way, and
scores the last model on the test split. Variants are comma-separated `key=value` lists joined by
`;`, keys: lr, head (head_lr_scale: the classifier and pooler learn at lr x head), layers (a
`+`-joined cut, e.g. 0+5; default all 6), steps (overrides --steps), freeze (1: word embeddings
fixed, `train.freeze_embeddings`).

    python bench/fit_recipe.py --data examples/clinc150/data --name clinc150 --max-train 4500 \\
        --steps 300 --variants "lr=1e-4;lr=2e-4;lr=1e-4,head=10"

Prints one row per variant and appends the table to --out (markdown) and the raw numbers, curves
included, to --out with .json. Accuracy does not depend on the machine's load; seconds do.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_rows(path: Path, field: str, limit: int | None, seed: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [(r["text"], r[field]) for r in rows if r.get(field) is not None]
    if limit and len(rows) > limit:
        rows = random.Random(seed).sample(rows, limit)
    return rows


def parse_variant(text: str) -> dict:
    v: dict = {"name": text}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, _, val = part.partition("=")
        if k == "layers":
            v[k] = [int(x) for x in val.split("+")]
        elif k == "steps":
            v[k] = int(val)
        elif k in ("lr", "head"):
            v[k] = float(val)
        elif k == "freeze":
            v[k] = val == "1"
        else:
            raise SystemExit(f"unknown variant key {k!r} in {text!r}; keys: lr, head, layers, steps, freeze")
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--label-field", default="label")
    ap.add_argument("--max-train", type=int, default=4500)
    ap.add_argument("--max-val", type=int, default=1000)
    ap.add_argument("--max-test", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--evals", type=int, default=4, help="validations over the run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--variants", default="lr=1e-4;lr=2e-4;lr=1e-4,head=10")
    ap.add_argument("--work", type=Path, default=Path("/tmp/potstill-fit-recipe"))
    ap.add_argument("--out", type=Path, default=Path("docs/bench_fit_recipe.md"))
    args = ap.parse_args()

    import torch

    from potstill.students.classifier import TrainConfig, TrainRow, build_classifier, predict_logits, train_classifier

    train = read_rows(args.data / "train.jsonl", args.label_field, args.max_train, args.seed)
    val = read_rows(args.data / "validation.jsonl", args.label_field, args.max_val, args.seed)
    test = read_rows(args.data / "test.jsonl", args.label_field, args.max_test, args.seed)
    labels = sorted({y for _, y in train})
    index = {y: i for i, y in enumerate(labels)}
    val = [(t, y) for t, y in val if y in index]
    test = [(t, y) for t, y in test if y in index]
    print(f"{args.name}: {len(train)} train rows, {len(labels)} labels, {len(val)} validation, "
          f"{len(test)} test; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    results = []
    for text in args.variants.split(";"):
        v = parse_variant(text)
        steps = v.get("steps", args.steps)
        model, tok = build_classifier("minilm", labels, v.get("layers"), seed=args.seed)
        cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=v.get("lr", 1e-4),
                          head_lr_scale=v.get("head", 1.0), kd_weight=0.0, ce_weight=1.0,
                          freeze_embeddings=v.get("freeze", False),
                          seed=args.seed, schedule="adaptive", min_steps=steps, max_steps=steps,
                          eval_every=max(1, steps // args.evals), patience=None,
                          checkpoint_every=10**9)
        out = args.work / args.name / v["name"].replace(",", "_").replace("=", "")
        t0 = time.monotonic()
        res = train_classifier(model, tok, [TrainRow(t, index[y]) for t, y in train],
                               [TrainRow(t, index[y]) for t, y in val], out, cfg,
                               fingerprint=f"{text}-{time.time()}", desc=v["name"])
        secs = time.monotonic() - t0
        logits = predict_logits(model, tok, [t for t, _ in test])
        acc = float((logits.argmax(-1) == torch.tensor([index[y] for _, y in test]).numpy()).mean())
        row = {"variant": v["name"], "steps": steps, "epochs": round(steps * args.batch_size / len(train), 2),
               "curve": [(h["step"], round(h["val_accuracy"], 4)) for h in res["history"]],
               "best_val": round(res["best_val_accuracy"], 4), "test": round(acc, 4),
               "seconds": round(secs, 1)}
        print(json.dumps(row), flush=True)
        results.append(row)

    head = (f"\n## {args.name}: {len(train)} train rows, {len(labels)} labels, batch {args.batch_size} "
            f"({time.strftime('%Y-%m-%d %H:%M')})\n\nCommand: `python bench/fit_recipe.py "
            + shlex.join(sys.argv[1:]) + "`\n\n"
            "| variant | steps (epochs) | validation accuracy along the run (step: acc) | test accuracy | seconds |\n"
            "|---|---:|---|---:|---:|\n")
    lines = [f"| {r['variant']} | {r['steps']} ({r['epochs']}) | "
             + ", ".join(f"{s}: {a:.3f}" for s, a in r["curve"]) + f" | {r['test']:.4f} | {r['seconds']} |"
             for r in results]
    table = head + "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.out.exists():
        args.out.write_text("# Fine-tuning recipe: learning rate, head learning rate, steps\n\n"
                            "Produced by bench/fit_recipe.py (one section per run).\n")
    with args.out.open("a") as f:
        f.write(table)
    raw = args.out.with_suffix(".json")
    old = json.loads(raw.read_text()) if raw.exists() else []
    raw.write_text(json.dumps(old + [{"name": args.name, "argv": sys.argv[1:], "rows": results}], indent=1))


if __name__ == "__main__":
    main()
