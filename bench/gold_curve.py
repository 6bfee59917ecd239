"""The fine-tune-or-distill curve, with SetFit as a peer line, in one run.

`potstill compare SPEC --gold-share ...` measures, on a run directory, the same student trained on
gold labels only, on the teacher's labels only (distill) and on both, at several shares of the gold
labels, and finds where gold-only catches up with distillation. Users with few labels today pick
SetFit (contrastive fine-tuning of a sentence-transformer body on pairs, then a logistic-regression
head). This script puts SetFit beside potstill's lines, trained on the *same* seeded gold subsets
(`potstill.compare.gold_subset`, the subsets compare uses) from the same MiniLM-L6 backbone, and
scored on the same test rows:

1. `potstill.compare.compare(...)` with the shares (everything already trained and evaluated in
   the run directory is reused by its fingerprints; nothing is relabelled);
2. per share, SetFit `Trainer` on the gold subset: the full MiniLM-L6 body (what `SetFitModel.
   from_pretrained("all-MiniLM-L6-v2")` gives a user; 6 layers, the teacher's size, not the
   2-layer student's), SetFit's own defaults (20 iterations of pair sampling, batch 16, body lr
   2e-5, one epoch, LogisticRegression head) but at most `--setfit-max-steps` body steps, so the
   larger shares finish on a CPU; test accuracy and macro-F1;
3. the table, both crossovers (gold-only against distillation, SetFit against distillation), to
   stdout and to docs/bench_gold_curve.{md,json}.

Each SetFit point is cached under `--work` by a hash of its data and settings, so a rerun after a
crash trains only what is missing. `--setfit-only` skips step 1 (to fill the cache while another
process is running compare on the same run directory) and writes nothing to docs/.

    .venv/bin/pip install -e '.[bench]'      # setfit
    .venv/bin/python bench/gold_curve.py --spec examples/clinc150/potstill.yaml \\
        --workdir runs/clinc150 --gold-share 0.01 --gold-share 0.05 --gold-share 0.1 --gold-share 0.25
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from train_throughput import _BoundedPairs, digest, reset_accelerate, say, seed_all, versions  # noqa: E402

from potstill.compare import compare, gold_subset, noise_margin  # noqa: E402
from potstill.config import load_spec, run_paths  # noqa: E402
from potstill.curve import crossover  # noqa: E402
from potstill.data.inputs import read_jsonl  # noqa: E402
from potstill.tasks.classify import accuracy, macro_f1  # noqa: E402


def setfit_point(args, share: float, train: list[dict[str, Any]], test: list[dict[str, Any]],
                 labels: list[str], seed: int, work: Path) -> dict[str, Any]:
    """SetFit trained on compare's seeded `share` of the gold training labels, scored on `test`.
    Cached in work/setfit_<share>.json by a hash of the subset and the settings."""
    keep = gold_subset([r["id"] for r in train if r.get("label") is not None], share, seed)
    rows = [r for r in train if r["id"] in keep]
    settings = {"model": "minilm (all 6 layers)", "iterations": args.setfit_iterations,
                "batch_size": args.setfit_batch_size, "body_lr": args.setfit_lr, "epochs": 1,
                "max_steps": args.setfit_max_steps, "max_length": args.max_length, "seed": seed}
    fp = digest(["setfit-curve", sorted(keep), [r["label"] for r in rows], [r["text"] for r in test], settings])
    cache = work / f"setfit_{share:g}.json"
    if cache.exists() and (old := json.loads(cache.read_text())).get("fingerprint") == fp:
        say(f"setfit @ {share:g}: reusing {cache}")
        return old
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from potstill.students.hf import resolve_model_path

    say(f"setfit @ {share:g}: {len(rows)} gold labels, MiniLM-L6 body, at most {args.setfit_max_steps} steps")
    index = {label: i for i, label in enumerate(labels)}
    seed_all(seed)
    model = SetFitModel.from_pretrained(resolve_model_path("minilm"))
    model.model_body.max_seq_length = args.max_length

    class BoundedTrainer(_BoundedPairs, Trainer):
        pass

    reset_accelerate()
    targs = TrainingArguments(
        output_dir=str(work / "setfit_ckpt"), batch_size=args.setfit_batch_size, num_epochs=1,
        num_iterations=args.setfit_iterations, max_steps=args.setfit_max_steps,
        body_learning_rate=args.setfit_lr, seed=seed, max_length=args.max_length, use_amp=False,
        report_to="none", save_strategy="no", show_progress_bar=sys.stderr.isatty())
    trainer = BoundedTrainer(model=model, args=targs, train_dataset=Dataset.from_dict(
        {"text": [r["text"] for r in rows], "label": [index[r["label"]] for r in rows]}))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    pred_idx = model.predict([r["text"] for r in test], batch_size=64, show_progress_bar=False)
    predict_seconds = time.perf_counter() - t1
    pred = [labels[int(i)] for i in pred_idx]
    gold = [r["label"] for r in test]
    out = {"share": share, "gold_labels": len(rows), "accuracy": round(accuracy(gold, pred), 4),
           "macro_f1": round(macro_f1(gold, pred, labels), 4), "pairs_drawn": trainer.n_pairs,
           "pairs_trained": min(trainer.n_pairs, args.setfit_max_steps * args.setfit_batch_size),
           "train_seconds": round(seconds, 1), "predict_seconds": round(predict_seconds, 1),
           "settings": settings, "fingerprint": fp}
    work.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=2))
    say(f"setfit @ {share:g}: accuracy {out['accuracy']:.4f} ({out['train_seconds']:.0f} s training)")
    return out


def table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["gold share", "gold labels", "per class", "gold-only", "both", "distill (no gold)", "SetFit (6 layers)"]
    body = []
    for p in doc["points"]:
        def f(k):
            v = p.get(k)
            return f"{v:.4f}" if isinstance(v, float) else "—"
        body.append([f"{p['share']:.0%}", f"{p['gold_labels']:,}", f"{p['gold_labels'] / doc['n_classes']:.1f}",
                     f("gold"), f("both"), f("distill"), f("setfit")])
    return head, body


def markdown(doc: dict[str, Any]) -> str:
    head, body = table(doc)
    lines = ["# The fine-tune-or-distill curve, with SetFit beside it", "",
             f"Command: `{doc['command']}`", "",
             f"Run directory: `{doc['run_dir']}` ({doc['test_rows']:,} test rows, {doc['n_classes']} labels; "
             f"noise margin on a difference near {doc['margin_at']:.2f}: ±{doc['noise_margin']:.2%})."
             + (f" Teacher: {doc['teacher_accuracy']:.4f}." if doc.get("teacher_accuracy") else ""), "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    lines += ["", f"- gold-only against distillation (potstill compare): {doc['crossover']['message']}",
              f"- SetFit against potstill's distilled student: {doc['setfit_crossover']['message']}", "",
              "potstill's rows: the 2-layer student (layers 0 and 5 of the fitted teacher for distill and both; "
              "base MiniLM layers 0 and 5 for gold-only), the same adaptive step budget at every share. "
              "`distill` uses no gold, so it is one measurement drawn at every share. SetFit: "
              + json.dumps(doc["setfit_settings"]) + "; its body has all 6 MiniLM layers (3x the "
              "student's encoder depth), so at equal accuracy it answers at the teacher's latency, not "
              "the student's.", "",
              f"Machine: {doc['machine']}; versions: {json.dumps(doc['versions'])}.", ""]
    return "\n".join(lines)


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=str(ROOT / "examples/clinc150/potstill.yaml"))
    p.add_argument("--workdir", required=True, help="the run directory (potstill run done)")
    p.add_argument("--gold-share", type=float, action="append", default=None)
    p.add_argument("--setfit-max-steps", type=int, default=375,
                   help="cap on SetFit body steps: its own default (20 iterations, batch 16) at 150 rows")
    p.add_argument("--setfit-iterations", type=int, default=20, help="SetFit's default")
    p.add_argument("--setfit-batch-size", type=int, default=16, help="SetFit's default")
    p.add_argument("--setfit-lr", type=float, default=2e-5, help="SetFit's default body lr")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--setfit-only", action="store_true", help="train the SetFit points only")
    p.add_argument("--work", default=None, help="SetFit cache (default RUN/compare/setfit)")
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    shares = sorted(set(args.gold_share or [0.01, 0.05, 0.1, 0.25]))
    spec = load_spec(args.spec)
    run = run_paths(spec, args.workdir)
    work = Path(args.work) if args.work else Path(run.root) / "compare" / "setfit"
    labels = json.loads((run.inputs / "labels.json").read_text())
    train, test = read_jsonl(run.inputs / "train.jsonl"), read_jsonl(run.inputs / "test.jsonl")
    sf = {s: setfit_point(args, s, train, test, labels, spec.train.seed, work) for s in [*shares, 1.0]}
    if args.setfit_only:
        return {"setfit": sf}
    c = compare(args.spec, workdir=args.workdir, gold_shares=shares)
    by = {(r["objective"], r["gold_share"]): r for r in c["rows"]}
    distill = (by.get(("distill", 1.0)) or {}).get("accuracy")
    points = []
    for s in [*shares, 1.0]:
        g = by.get(("gold", s)) or {}
        points.append({"share": s, "gold_labels": sf[s]["gold_labels"], "gold": g.get("accuracy"),
                       "both": (by.get(("both", s)) or {}).get("accuracy"), "distill": distill,
                       "setfit": sf[s]["accuracy"], "setfit_macro_f1": sf[s]["macro_f1"],
                       "setfit_train_seconds": sf[s]["train_seconds"], "potstill_gold_labels": g.get("gold_labels")})
    n_classes = len(labels)
    sf_pts = {"gold": [(p["gold_labels"], p["setfit"]) for p in points],
              "distill": [(p["gold_labels"], distill) for p in points] if distill is not None else []}
    teacher = (c.get("teacher") or {}).get("accuracy")
    at = max(x for p in points for x in (p["gold"], p["setfit"], distill) if x is not None)
    margin = noise_margin(at, len(test))
    doc = {
        "command": "python bench/gold_curve.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "run_dir": str(run.root), "test_rows": len(test), "n_classes": n_classes, "teacher_accuracy": teacher,
        "points": points, "crossover": c["curve"]["crossover"],
        "setfit_crossover": crossover(sf_pts, n_classes, margin), "margin_at": at,
        "noise_margin": margin,
        "setfit_settings": next(iter(sf.values()))["settings"], "compare_rows": c["rows"],
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "versions": versions(),
    }
    out = Path(args.out)
    (out / "bench_gold_curve.json").write_text(json.dumps(doc, indent=2, default=str))
    (out / "bench_gold_curve.md").write_text(markdown(doc))
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    main()
