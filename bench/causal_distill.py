"""Causal-LM distillation on SNIPS intents: sequence-level vs logit KD vs rationale, and training
throughput against TRL's SFTTrainer and distill-anything's trainer. Not a test; prints a table and
writes docs/bench_causal_distill.{md,json}.

The task: given an utterance, generate its intent name (7 intents, chance = 1/7).
Everything is built here, offline: a byte-level BPE tokenizer trained on the training texts, a
teacher Llama and a smaller student Llama from configs (random init; they share the tokenizer).

1. Teacher: trained first on gold, multi-task: "Intent: {text}" -> intent, and
   "[explain] Intent: {text}" -> "slots: {slot names}\\nAnswer: {intent}" (the gold slot names are
   its rationale, so it can later give one). Its exact match on the test subset is reported.
2. The teacher labels the student's training inputs (a disjoint subset): its greedy answer, and its
   rationale + answer for the rationale objective.
3. The same student init, steps, batch size, learning rate and precision, four ways:
   gold (fine-tuning baseline, no teacher), sequence (teacher answers, completion-only CE),
   logit_kd (forward KL at T=1 to the teacher's full logits on its answers + 0.1 CE), rationale
   ("[label]" -> teacher answer and "[rationale]" -> teacher rationale, as two tasks).
   Exact match of greedy answers on the test subset.
4. Throughput, same student model, same rows (prompt -> teacher answer), same batch size, same
   precision (fp32: distill-anything trains in fp32 on CPU), same number of optimizer steps:
   potstill's loop, TRL's SFTTrainer (prompt-completion dataset, completion-only loss, bf16 and
   gradient checkpointing off on purpose), distill-anything's DistillTrainer (seqkd mode), and for
   KD potstill logit_kd vs distill-anything logit mode (forward KL, T=1). Tokens/s = steps x batch
   x mean tokens per row of the trainer's own tokenized dataset / wall seconds of its train call.
   potstill bf16 is reported as an extra row where the CPU runs bf16.

Usage: python bench/causal_distill.py [--train 1500 --test 300 --steps 150 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = Path("/work/shared/data/snips")


def load(split: str) -> list[dict]:
    return [json.loads(l) for l in (DATA / f"{split}.jsonl").read_text().splitlines() if l.strip()]


def prompt(text: str) -> str:
    return f"Intent: {text}"


def explain_prompt(text: str) -> str:
    return f"[explain] Intent: {text}"


def rationale_of(row: dict) -> str:
    return "slots: " + (" ".join(row["fields"]) or "none")


def build_tokenizer(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_llama(path: Path, tok, layers: int, hidden: int, seed: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      num_key_value_heads=max(1, hidden // 64), max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def exact(gold: list[str], pred: list[str]) -> float:
    from potstill.tasks.generate import exact_match

    return round(exact_match(gold, pred), 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=1000, help="student training inputs (teacher-labelled)")
    ap.add_argument("--teacher-train", type=int, default=3000, help="gold rows the teacher trains on")
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--steps", type=int, default=150, help="student optimizer steps, every objective")
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--student", default="4x128", help="layers x hidden")
    ap.add_argument("--teacher", default="4x256")
    ap.add_argument("--vocab", type=int, default=1200)
    ap.add_argument("--tput-steps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=2, help="throughput rounds (order rotated); median reported")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; on this shared 2-core machine 2 threads trained 20-60x slower "
                         "than 1 (spin-waiting threads when the other core is taken)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_causal_distill"))
    args = ap.parse_args()

    import torch

    from potstill.students.causal_lm import (
        LMRow,
        LMTrainConfig,
        build_causal_lm,
        count_trainable,
        generate,
        rationale_rows,
        resolve_precision,
        split_rationale,
        train_causal_lm,
    )
    from potstill.students.hf import quiet_transformers

    quiet_transformers()
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    train_all, test_all = load("train"), load("test")
    rng.shuffle(train_all)
    teacher_rows = train_all[:args.teacher_train]
    student_rows = train_all[args.teacher_train:args.teacher_train + args.train]
    test = rng.sample(test_all, min(args.test, len(test_all)))
    intents = sorted({r["intent"] for r in train_all})
    work = Path(tempfile.mkdtemp(prefix="causal-bench-"))
    t_start = time.perf_counter()
    results: dict = {"args": vars(args), "intents": len(intents), "chance": round(1 / len(intents), 4),
                     "majority_test": round(max(Counter(r["intent"] for r in test).values()) / len(test), 4)}

    corpus = ([prompt(r["text"]) for r in train_all[:6000]] + intents
              + [rationale_of(r) for r in train_all[:2000]] + ["[explain]", "[label]", "[rationale]", "Answer:"])
    tok = build_tokenizer(corpus, args.vocab)
    sl, sh = map(int, args.student.split("x"))
    tl, th = map(int, args.teacher.split("x"))
    student_init = build_llama(work / "student-init", tok, sl, sh, seed=1)
    teacher_path = build_llama(work / "teacher-init", tok, tl, th, seed=2)

    # 1. teacher on gold (multi-task: answer, and rationale + answer)
    teacher, ttok = build_causal_lm(str(teacher_path), "full")
    gold_rows = ([LMRow(prompt(r["text"]), r["intent"]) for r in teacher_rows]
                 + [LMRow(explain_prompt(r["text"]), f"{rationale_of(r)}\nAnswer: {r['intent']}")
                    for r in teacher_rows])
    th_hist = train_causal_lm(teacher, ttok, gold_rows, LMTrainConfig(
        max_steps=args.teacher_steps, batch_size=32, lr=args.lr, precision="fp32", max_length=96,
        warmup_ratio=0.05), desc="teacher (gold)")
    test_gold = [r["intent"] for r in test]
    t_test = [g.text for g in generate(teacher, ttok, [prompt(r["text"]) for r in test], 8, 64)]
    n_t, _ = count_trainable(teacher)
    results["teacher"] = {"params": n_t, "train_seconds": th_hist["seconds"], "steps": args.teacher_steps,
                          "exact_match": exact(test_gold, t_test)}
    print(f"teacher: {n_t / 1e6:.1f}M params, exact match {results['teacher']['exact_match']:.3f} "
          f"(chance {results['chance']:.3f}, majority {results['majority_test']:.3f}), "
          f"{th_hist['seconds']:.0f}s", flush=True)

    # 2. the teacher labels the student's inputs
    t1 = time.perf_counter()
    answers = [g.text for g in generate(teacher, ttok, [prompt(r["text"]) for r in student_rows], 8, 64)]
    explained = [g.text for g in generate(teacher, ttok, [explain_prompt(r["text"]) for r in student_rows], 20, 64)]
    results["labelling_seconds"] = round(time.perf_counter() - t1, 1)
    results["teacher_train_agreement_with_gold"] = exact([r["intent"] for r in student_rows], answers)
    teacher.eval()

    # 3. objectives: same init, steps, batch, lr, precision
    seq_rows = [LMRow(prompt(r["text"]), a) for r, a in zip(student_rows, answers) if a]
    rat_rows: list[LMRow] = []
    no_rat = 0
    for r, a, e in zip(student_rows, answers, explained):
        sp = split_rationale(e)
        if sp is None or not a:
            no_rat += 1
            if a:
                rat_rows.append(LMRow(f"[label] {prompt(r['text'])}", a))
            continue
        rat_rows += rationale_rows(prompt(r["text"]), sp[0], a)
    results["rationale_missing"] = no_rat
    setups = {
        "gold (no teacher)": ("sequence", [LMRow(prompt(r["text"]), r["intent"]) for r in student_rows], None),
        "sequence": ("sequence", seq_rows, None),
        "logit_kd": ("logit_kd", seq_rows, teacher),
        "rationale": ("rationale", rat_rows, None),
    }
    results["objectives"] = {}
    for name, (objective, rows, tch) in setups.items():
        model, stok = build_causal_lm(str(student_init), "full", seed=1)
        cfg = LMTrainConfig(objective=objective, kd_loss="forward_kl", temperature=1.0, ce_weight=0.1,
                            max_steps=args.steps, batch_size=args.batch, lr=args.lr, precision="fp32",
                            max_length=96, seed=1, warmup_ratio=0.05)
        h = train_causal_lm(model, stok, rows, cfg, teacher=tch, desc=name)
        pred = [g.text for g in generate(model, stok, [prompt(r["text"]) for r in test], 8, 64,
                                         objective=objective)]
        results["objectives"][name] = {
            "rows": len(rows), "steps": h["steps"], "train_seconds": h["seconds"],
            "tokens_per_s": h["tokens_per_s"], "exact_match": exact(test_gold, pred),
            "agreement_with_teacher": exact(t_test, pred), "final_loss": h["losses"][-1]}
        print(f"{name:>18}: exact match {results['objectives'][name]['exact_match']:.3f}, "
              f"agreement {results['objectives'][name]['agreement_with_teacher']:.3f}, "
              f"{h['seconds']:.0f}s", flush=True)
    n_s, _ = count_trainable(model)
    results["student_params"] = n_s

    # 4. throughput side by side (fp32, same rows, batch, steps)
    results["throughput"] = throughput(args, student_init, seq_rows, teacher, tok, work)
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    results["machine"] = {"cpu": _cpu(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "bf16": resolve_precision("auto") == "bf16"}
    write(results, Path(args.out))


def throughput(args, student_init, rows, teacher, tok, work) -> dict:
    import torch

    from potstill.students.causal_lm import (
        LMTrainConfig,
        build_causal_lm,
        encode_row,
        resolve_precision,
        train_causal_lm,
    )

    steps, bs = args.tput_steps, args.batch
    out: dict = {}
    runs: dict[str, list[float]] = {}
    lens: dict[str, float] = {}
    notes: dict[str, str] = {}
    pot_len = statistics.mean(len(encode_row(tok, r, 96)["input_ids"]) for r in rows)

    def pot(objective, precision, tch=None):
        model, stok = build_causal_lm(str(student_init), "full", seed=1)
        cfg = LMTrainConfig(objective=objective, max_steps=steps, batch_size=bs, lr=args.lr,
                            precision=precision, max_length=96, seed=1)
        t0 = time.perf_counter()
        train_causal_lm(model, stok, rows, cfg, teacher=tch, desc=f"potstill {objective} {precision}")
        return time.perf_counter() - t0

    def row(name, seconds, mean_len, note=""):
        runs.setdefault(name, []).append(round(seconds, 2))
        lens[name], notes[name] = mean_len, note
        print(f"  {name:>36}: {steps * bs * mean_len / seconds:>8.0f} tokens/s ({seconds:.1f}s)", flush=True)

    from datasets import Dataset

    ds = Dataset.from_list([{"prompt": r.prompt + "\n", "completion": r.completion} for r in rows])

    def potstill_seq():
        row("potstill sequence (fp32)", pot("sequence", "fp32"), pot_len)

    def trl():
        _trl(args, student_init, ds, tok, work, steps, bs, row)

    def da():
        _da(args, student_init, rows, tok, work, steps, bs, teacher, row)

    def pot_kd():
        row("potstill logit_kd (fp32)", pot("logit_kd", "fp32", teacher), pot_len, "forward KL T=1 + 0.1 CE")

    def pot_bf16():
        if resolve_precision("auto") == "bf16":
            row("potstill sequence (bf16 autocast)", pot("sequence", "bf16"), pot_len, "extra: not the same precision")

    order = [potstill_seq, trl, da, pot_kd, pot_bf16]
    for k in range(args.repeat):
        for fn in order[k % len(order):] + order[:k % len(order)]:
            torch.set_num_threads(args.threads)  # a trainer may have changed it
            fn()
    for name, secs in runs.items():
        med = statistics.median(secs)
        out[name] = {"seconds": round(med, 2), "runs_seconds": secs, "mean_tokens_per_row": round(lens[name], 1),
                     "tokens_per_s": round(steps * bs * lens[name] / med, 1), "note": notes[name]}
    return out


def _trl(args, student_init, ds, tok, work, steps, bs, row) -> None:
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(student_init)
    cfg = SFTConfig(output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=bs,
                    learning_rate=args.lr, bf16=False, fp16=False, gradient_checkpointing=False,
                    completion_only_loss=True, max_length=96, logging_steps=10, save_strategy="no",
                    report_to=[], use_cpu=True, dataloader_num_workers=0, seed=1, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    trl_len = statistics.mean(len(x) for x in trainer.train_dataset["input_ids"])
    t0 = time.perf_counter()
    trainer.train()
    row("TRL SFTTrainer (fp32)", time.perf_counter() - t0, trl_len,
        "prompt-completion, completion_only_loss, bf16=False, gradient_checkpointing=False")


def _da(args, student_init, rows, tok, work, steps, bs, teacher, row) -> None:
    from distillanything.config import DistillConfig, LossConfig, TrainConfig
    from distillanything.data.tokenize import SFTDataset
    from distillanything.train.trainer import DistillTrainer
    from transformers import AutoModelForCausalLM

    recs = [{"prompt": r.prompt, "response": r.completion} for r in rows]
    da_ds = SFTDataset(recs, tok, max_seq_len=96)
    da_len = statistics.mean(len(e["input_ids"]) for e in da_ds.examples)
    for mode, tch in (("seqkd", None), ("logit", teacher)):
        model = AutoModelForCausalLM.from_pretrained(student_init)
        dcfg = DistillConfig(mode=mode, loss=LossConfig(kind="forward_kl", temperature=1.0, alpha=0.5),
                             train=TrainConfig(output_dir=str(work / f"da-{mode}"), lr=args.lr, max_steps=steps,
                                               batch_size=bs, grad_accum=1, log_every=10, seed=1,
                                               merge_lora=False))
        trainer = DistillTrainer(model, tok, da_ds, dcfg, teacher_model=tch)
        t0 = time.perf_counter()
        trainer.train()  # includes its save at the end (a small model: well under a second)
        row(f"distill-anything {mode} (fp32)", time.perf_counter() - t0, da_len,
            "DistillTrainer; fp32 on CPU is its only precision; its train() also saves the model")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores visible)"
    except OSError:
        pass
    return "unknown"


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    a = results["args"]
    lines = [
        "# Causal-LM distillation on SNIPS intents (bench/causal_distill.py)", "",
        f"Generate the intent name of an utterance ({results['intents']} intents; chance "
        f"{results['chance']:.3f}, majority class {results['majority_test']:.3f} on the test subset). "
        f"Teacher: Llama {a['teacher']} (layers x hidden) from a config, {results['teacher']['params'] / 1e6:.1f}M "
        f"params, trained {a['teacher_steps']} steps on {a['teacher_train']} gold rows. Student: Llama "
        f"{a['student']}, {results['student_params'] / 1e6:.1f}M params, full fine-tuning, "
        f"{a['steps']} steps x batch {a['batch']}, lr {a['lr']}, fp32, on {a['train']} inputs the teacher "
        f"labelled (disjoint from its own). Test subset: {a['test']} rows. Machine: {results['machine']['cpu']}, "
        f"{results['machine']['torch_threads']} torch threads, shared with other work. Total "
        f"{results['total_seconds']:.0f} s. Command: `python bench/causal_distill.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in a.items() if k != "out") + "`", "",
        "## Objectives (same student init, steps, batch, lr, precision)", "",
        "| model | exact match | agreement with teacher | rows | train s | tokens/s |",
        "|---|---:|---:|---:|---:|---:|",
        f"| teacher | {results['teacher']['exact_match']:.4f} | — | — | {results['teacher']['train_seconds']:.0f} | — |",
    ]
    for name, r in results["objectives"].items():
        lines.append(f"| student: {name} | {r['exact_match']:.4f} | {r['agreement_with_teacher']:.4f} | "
                     f"{r['rows']} | {r['train_seconds']:.0f} | {r['tokens_per_s']:.0f} |")
    lines += ["", f"The teacher's answers on the student's training inputs match gold "
              f"{results['teacher_train_agreement_with_gold']:.3f} of the time; "
              f"{results['rationale_missing']} inputs got no usable rationale. The rationale "
              "student trains on twice the rows (two tasks) in the same number of steps.", "",
              f"## Training throughput ({a['tput_steps']} steps x batch {a['batch']}, same rows and model)", "",
              "| trainer | tokens/s (median run) | seconds (each run) | mean tokens/row | note |", "|---|---:|---:|---:|---|"]
    for name, r in results["throughput"].items():
        lines.append(f"| {name} | {r['tokens_per_s']:.0f} | {r['seconds']:.1f} ({', '.join(map(str, r['runs_seconds']))}) "
                     f"| {r['mean_tokens_per_row']} | {r['note']} |")
    lines += ["", "Tokens/s = steps x batch x mean tokens per row of each trainer's own tokenized rows / "
              "wall seconds of its train call (model loading excluded; each trainer's own start-up "
              "inside train() included, which weighs more in a run this short). distill-anything's rows are longer "
              "(its plain-text prompt template adds words) and its batches are not length-grouped. The "
              "machine is shared with other work: differences under about 15% are noise; each run's time "
              "is listed.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
