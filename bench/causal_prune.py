"""Depth pruning of a real pretrained LLM, then training: which layers to keep, and logit KD
against sequence-level KD, on examples/snips-json. Not a test; prints a table and writes
docs/bench_causal_prune.{md,json}.

Teacher: the example's 30-layer SmolLM2-135M fine-tuned on the gold slots
(`potstill train examples/snips-json/teacher.yaml --baseline`); its answers on the training
inputs come from the example's run (`potstill run examples/snips-json/potstill.yaml`:
runs/snips-json/filtered/kept.jsonl). Each variant cuts the teacher to `--keep` layers, by

- spread: evenly spread, first and last kept (students/prune.py `spread`);
- block: the contiguous block of layers whose input and output hidden states are closest in
  angular distance on the training rows is dropped, the last layer kept (Gromov et al., 2024,
  "The Unreasonable Ineffectiveness of the Deeper Layers"; students/prune.py `block_drop`),
- greedy: in 5 rounds, the layers whose removal alone raises the gold answers' NLL least on 16
  training rows are dropped (`causal_lm.choose_layers_greedy`),

then trains it with potstill's loop for the same steps, batch, lr and precision:

- gold: the gold JSON (the example's baseline);
- sequence: the teacher's answers, cross-entropy;
- logit_kd: the teacher's answers, forward KL against the full teacher's logits + ce_weight x CE.

A variant may add options after a third colon, joined by `+`: `rows=gold` (logit KD on the
gold answers instead of the teacher's: KL to the teacher's distributions along the gold sequence
plus ce_weight x CE on gold), `lr=5e-4`, `hidden=1.0` (hidden-state KD weight over the kept
layers' pairs, prune.hidden_pairs), `steps=200`, `cache=0` (run the teacher every step instead
of reading its cached hidden states: the same loss, for timing). Example: `block:logit_kd:rows=gold+hidden=1`.

Reported per variant: validation NLL of the gold answers right after the cut and after training,
field F1 / JSON validity / exact match of greedy answers on the example's 100 test rows (the extract
scorer), generated tokens/s at batch 1, training seconds.

Usage: python bench/causal_prune.py [--keep 10 --steps 100 --variants spread:gold,block:gold,...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
EX = ROOT / "examples" / "snips-json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=str(EX / "runs/snips-json-teacher/baseline"))
    ap.add_argument("--run", default=str(EX / "runs/snips-json"), help="the example's run (teacher answers)")
    ap.add_argument("--keep", type=int, default=10)
    ap.add_argument("--variants", default="spread:gold,block:gold,block:sequence,block:logit_kd")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--ce-weight", type=float, default=0.5)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--train-rows", type=int, default=None, help="train on the first N rows only")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_causal_prune"))
    args = ap.parse_args()

    import torch

    from potstill.config import load_spec
    from potstill.data.inputs import read_jsonl
    from potstill.students.causal_lm import (
        LMRow,
        LMTrainConfig,
        build_causal_lm,
        choose_layers_greedy,
        generate,
        load_teacher_lm,
        mean_nll,
        pruned_layers,
        record_target,
        time_generation,
        train_causal_lm,
    )
    from potstill.tasks.generate import json_metrics

    torch.set_num_threads(args.threads)
    spec = load_spec(EX / "potstill.yaml")
    render = lambda t: spec.render_prompt(t, [])  # noqa: E731
    train = read_jsonl(EX / "data/train.jsonl")
    val = [LMRow(render(r["text"]), r["label"]) for r in read_jsonl(EX / "data/validation.jsonl")]
    test = read_jsonl(EX / "data/test.jsonl")[:args.test]
    kept = read_jsonl(Path(args.run) / "filtered/kept.jsonl")
    rows = {"gold": [LMRow(render(r["text"]), r["label"]) for r in train],
            "teacher": [LMRow(render(r["text"]), record_target(r)) for r in kept if record_target(r)]}
    rows = {k: v[:args.train_rows] for k, v in rows.items()}
    hows = {v.split(":")[0] for v in args.variants.split(",")}
    layer_sets = {how: pruned_layers(args.teacher, args.keep, how, rows["gold"], spec.student.max_length)
                  for how in ("spread", "block")}
    if "greedy" in hows:
        full, tok = build_causal_lm(args.teacher, "full")
        t0 = time.perf_counter()
        layer_sets["greedy"] = choose_layers_greedy(full, tok, rows["gold"], args.keep, spec.student.max_length)
        print(f"greedy layers {layer_sets['greedy']} chosen in {time.perf_counter() - t0:.0f} s", flush=True)
        del full
    teacher = None
    results: dict = {"args": vars(args), "layers": layer_sets, "variants": {}}
    prompts = [render(r["text"]) for r in test]
    from potstill.students.prune import hidden_pairs

    for variant in args.variants.split(","):
        how, objective, *extra = variant.split(":")
        opts = dict(kv.split("=") for kv in extra[0].split("+")) if extra else {}
        keep = layer_sets[how]
        model, tok = build_causal_lm(args.teacher, "full", seed=1, layers=keep)
        nll_cut = mean_nll(model, tok, val, spec.student.max_length)
        if objective == "logit_kd" and teacher is None:
            teacher = load_teacher_lm(args.teacher, tok)
        hidden = float(opts.get("hidden", 0))
        cfg = LMTrainConfig(objective="sequence" if objective == "gold" else objective,
                            max_steps=int(opts.get("steps", args.steps)), batch_size=args.batch,
                            lr=float(opts.get("lr", args.lr)), precision="fp32",
                            ce_weight=args.ce_weight if objective == "logit_kd" else 1.0,
                            max_length=spec.student.max_length, seed=1, hidden_weight=hidden,
                            hidden_pairs=hidden_pairs(keep) if hidden else None,
                            cache_teacher=opts.get("cache", "1") != "0")
        source = opts.get("rows", "gold" if objective == "gold" else "teacher")
        t0 = time.perf_counter()
        hist = train_causal_lm(model, tok, rows[source], cfg,
                               teacher=teacher if objective == "logit_kd" else None, desc=variant)
        secs = time.perf_counter() - t0
        nll = mean_nll(model, tok, val, spec.student.max_length)
        gens = generate(model, tok, prompts, max_new_tokens=spec.student.max_new_tokens, batch_size=32,
                        max_length=spec.student.max_length)
        m = json_metrics([r["label"] for r in test], [g.text for g in gens], spec.json_schema)
        speed = time_generation(model, tok, prompts[:4], spec.student.max_new_tokens, spec.student.max_length)
        results["variants"][variant] = {
            "layers": keep, "val_nll_after_cut": round(nll_cut, 3), "val_nll": round(nll, 3),
            "field_f1": m["field_f1"], "json_validity": m["json_validity"], "exact_match": m["exact_match"],
            "train_seconds": round(secs, 1), "steps": hist["steps"], **speed,
            "example": gens[0].text}
        print(variant, {k: v for k, v in results["variants"][variant].items() if k != "layers"}, flush=True)
        del model
    from causal_distill import _cpu

    results["machine"] = {"cpu": _cpu(), "torch_threads": args.threads}
    write(results, Path(args.out))


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    a = results["args"]
    cmd = "python bench/causal_prune.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in a.items() if k not in ("out", "teacher", "run"))
    lines = [
        "# Depth pruning of SmolLM2-135M, then training (bench/causal_prune.py)", "",
        f"Teacher: examples/snips-json's 30-layer SmolLM2-135M fine-tuned on 400 gold rows. Each student "
        f"keeps {a['keep']} of its 30 layers and trains {a['steps']} steps x batch {a['batch']}, lr "
        f"{a['lr']}, fp32, full fine-tuning; greedy answers on {a['test']} test rows. Machine: "
        f"{results['machine']['cpu']}, {results['machine']['torch_threads']} torch threads.", "",
        f"Command: `{cmd}`", "",
        "Layers kept: " + "; ".join(f"{k} {v}" for k, v in results["layers"].items()) + ".", "",
        "| variant | val NLL after the cut | val NLL after training | field F1 | JSON validity | exact match "
        "| tokens/s (batch 1) | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["variants"].items():
        lines.append(f"| {name} | {r['val_nll_after_cut']} | {r['val_nll']} | {r['field_f1']:.4f} | "
                     f"{r['json_validity']:.2f} | {r['exact_match']:.2f} | {r.get('gen_tokens_per_s_b1', '—')} | "
                     f"{r['train_seconds']:.0f} |")
    lines += ["", "Validation NLL: mean per answer token of the gold answers on the 40 validation rows "
              "; right after the cut it measures the damage the cut did, after training what "
              "training repaired.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
