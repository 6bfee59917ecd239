"""Training throughput and peak memory of the snips-json causal-LM recipe on a CUDA GPU: bf16
(LoRA and full fine-tuning, 30 layers and the depth-pruned 10-layer student) and QLoRA
(`lora.quantize_4bit`: the frozen base in 4-bit NF4 through bitsandbytes).

SELF-CONTAINED on purpose: the GPU machine has torch, transformers, peft (and maybe a
bitsandbytes wheel) but not potstill's other dependencies and no network, so this file imports
only those and never potstill. The SmolLM2-135M architecture comes from
bench/gpu_assets/smollm2/ (config.json + tokenizer, 3.4 MB; the 98 MB GGUF does not travel),
and the model is built from that config with RANDOM weights: tokens/s and peak memory depend on
the architecture, sequence lengths and batch, not on the weight values (the table says so).
The rows are examples/snips-json/data/train.jsonl formatted as the example formats them (chat
template, the example's instruction, the slots JSON as the completion, loss on completion
tokens only).

    python3 bench/gpu_causal.py                      # on the GPU machine: every variant, bf16 + QLoRA
    python3 bench/gpu_causal.py --device cpu --steps 2 --variants lora-30,full-10   # CPU, real width
    python3 bench/gpu_causal.py --device cpu --steps 2 --tiny   # dry run of every path in seconds

Writes a markdown table to stdout and to $OUT/gpu_causal.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ASSETS = HERE / "gpu_assets" / "smollm2"
DATA = ROOT / "examples" / "snips-json" / "data" / "train.jsonl"
# the example's prompt (examples/snips-json/potstill.yaml: instruction + "\n\n" + text)
INSTRUCTION = "Extract the slots of this voice-assistant request as one JSON object."
IGNORE = -100
TINY = False

# name -> (decoder layers kept, method, 4-bit base)
VARIANTS = {
    "full-30": (None, "full", False),
    "lora-30": (None, "lora", False),
    "qlora-30": (None, "lora", True),
    "full-10": ("spread10", "full", False),
    "lora-10": ("spread10", "lora", False),
    "qlora-10": ("spread10", "lora", True),
    "full-12": ("spread12", "full", False),  # examples/snips-json's student shape
}


def spread(n: int, keep: int) -> list[int]:
    """`keep` of n layers evenly spread, first and last included (as potstill/students/prune.py)."""
    return sorted({round(i * (n - 1) / (keep - 1)) for i in range(keep)}) if keep > 1 else [0]


def load_tokenizer():
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(ASSETS)
    except Exception:  # an older transformers may not know the saved tokenizer class
        from transformers import PreTrainedTokenizerFast

        cfg = json.loads((ASSETS / "tokenizer_config.json").read_text())
        tok = PreTrainedTokenizerFast(tokenizer_file=str(ASSETS / "tokenizer.json"),
                                      **{k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")})
        tok.chat_template = (ASSETS / "chat_template.jinja").read_text()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def encode_rows(tok, max_length: int, limit: int | None) -> list[dict]:
    rows = [json.loads(l) for l in DATA.read_text(encoding="utf-8").splitlines() if l.strip()]
    out = []
    for r in rows[:limit]:
        prompt = tok.apply_chat_template([{"role": "user", "content": f"{INSTRUCTION}\n\n{r['text']}"}],
                                         tokenize=False, add_generation_prompt=True)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(r["label"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (p + c)[-max_length:]
        labels = ([IGNORE] * len(p) + c)[-max_length:]
        out.append({"input_ids": ids, "labels": labels})
    return out


def batches(enc: list[dict], batch_size: int, pad: int, seed: int):
    """Length-grouped, shuffled batches, right-padded (as potstill's loop); endless."""
    rng = random.Random(seed)
    while True:
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]["input_ids"]))
        groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        rng.shuffle(groups)
        for g in groups:
            T = max(len(enc[i]["input_ids"]) for i in g)
            ids = torch.full((len(g), T), pad, dtype=torch.long)
            lab = torch.full((len(g), T), IGNORE, dtype=torch.long)
            att = torch.zeros((len(g), T), dtype=torch.long)
            for k, i in enumerate(g):
                n = len(enc[i]["input_ids"])
                ids[k, :n] = torch.tensor(enc[i]["input_ids"])
                lab[k, :n] = torch.tensor(enc[i]["labels"])
                att[k, :n] = 1
            yield ids, att, lab


def build(variant: str, device: str, tmp: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    layers, method, four_bit = VARIANTS[variant]
    cfg = AutoConfig.from_pretrained(ASSETS)
    if TINY:  # --tiny: a dry run of every code path on a CPU in seconds (same vocabulary, tiny width)
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 30, 64, 128
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 2, 16
    if layers is not None:  # "spreadN": N of the layers, evenly spread
        keep = spread(cfg.num_hidden_layers, int(layers.removeprefix("spread")))
        cfg.num_hidden_layers = len(keep)  # a pruned model is a plain model of fewer layers
    torch.manual_seed(0)
    if four_bit:
        from transformers import BitsAndBytesConfig

        src = tmp / f"init-{cfg.num_hidden_layers}"
        if not src.exists():
            AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(src)
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(src, quantization_config=q, device_map={"": 0})
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        # fp32 master weights + bf16 autocast: what potstill's loop does (train.precision bf16)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(device)
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32,
                                                 lora_dropout=0.05))
    return model, cfg.num_hidden_layers


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_train(variant: str, device: str, enc: list[dict], pad: int, steps: int, warmup: int,
                batch_size: int, tmp: Path) -> dict:
    model, n_layers = build(variant, device, tmp)
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    it = batches(enc, batch_size, pad, seed=13)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    tokens = 0
    t0 = None
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            t0, tokens = time.perf_counter(), 0
        ids, att, lab = (x.to(device) for x in next(it))
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(att.sum())
    sync(device)
    secs = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    gen = bench_generate(model, enc, pad, device)
    del model, opt
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"variant": variant, "layers": n_layers, "params_m": round(total / 1e6, 1),
            "trainable_m": round(sum(p.numel() for p in params) / 1e6, 2), "steps": steps,
            "tokens_per_s": round(tokens / secs, 1), "s_per_step": round(secs / steps, 4),
            "peak_mb": round(peak, 1) if peak is not None else None, **gen, "loss": round(float(loss), 3)}


@torch.no_grad()
def bench_generate(model, enc: list[dict], pad: int, device: str, n: int = 4, new: int = 24) -> dict:
    """Greedy decoding at batch 1 (EOS ignored so every model writes `new` tokens): tokens/s."""
    model.eval()
    prompts = []
    for e in enc[:n]:
        p = [t for t, l in zip(e["input_ids"], e["labels"]) if l == IGNORE]
        prompts.append(torch.tensor([p], device=device))
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
        model.generate(input_ids=prompts[0], max_new_tokens=2, do_sample=False, pad_token_id=pad)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for p in prompts:
            model.generate(input_ids=p, attention_mask=torch.ones_like(p), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=pad)
        sync(device)
    secs = time.perf_counter() - t0
    model.train()
    return {"gen_tokens_per_s_b1": round(n * new / secs, 1)}


def render(results: list[dict], meta: dict) -> str:
    lines = ["# Causal-LM training on a GPU: snips-json recipe (SmolLM2-135M architecture)", "",
             f"Device: {meta['device_name']}; torch {meta['torch']}, transformers {meta['transformers']}, "
             f"peft {meta['peft']}, bitsandbytes {meta['bitsandbytes']}; batch {meta['batch_size']}, "
             f"{meta['rows']} rows of examples/snips-json (mean {meta['mean_tokens']:.0f} tokens), "
             f"{meta['steps']} timed steps after {meta['warmup']} warm-up; bf16 autocast (fp32 master "
             "weights), QLoRA: NF4 base + double quantisation, bf16 compute; LoRA r=16 on q_proj, v_proj.",
             "",
             *(["**DRY RUN (--tiny): a tiny-width config, not SmolLM2's; figures mean nothing.**", ""]
               if TINY else []),
             "Weights are a RANDOM initialisation built from SmolLM2-135M's config.json: throughput and "
             "memory depend on the architecture and the shapes, not on the weight values; quality is "
             "not measured here.", "",
             "| variant | layers | params (M) | trainable (M) | train tokens/s | s/step | peak GPU MiB | "
             "greedy tokens/s (batch 1) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | — | — | — | skipped: {r['error']} | — | — | — |")
            continue
        lines.append(f"| {r['variant']} | {r['layers']} | {r['params_m']} | {r['trainable_m']} | "
                     f"{r['tokens_per_s']} | {r['s_per_step']} | {r['peak_mb'] if r['peak_mb'] is not None else '—'} | "
                     f"{r['gen_tokens_per_s_b1']} |")
    lines += ["", f"Command: `{meta['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=None, help="markdown file (default: $OUT/gpu_causal.md when OUT is set)")
    ap.add_argument("--tiny", action="store_true", help="dry run: the same code on a tiny-width config")
    a = ap.parse_args(argv)
    global TINY
    TINY = a.tiny
    import peft
    import transformers

    try:
        import bitsandbytes as bnb

        bnb_version = bnb.__version__
    except Exception as e:  # noqa: BLE001 - reported in the table
        bnb_version = f"not available ({type(e).__name__})"
    tok = load_tokenizer()
    enc = encode_rows(tok, a.max_length, a.rows)
    meta = {"device_name": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else platform.processor() or "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bnb_version, "batch_size": a.batch_size, "rows": len(enc),
            "mean_tokens": sum(len(e["input_ids"]) for e in enc) / len(enc), "steps": a.steps, "warmup": a.warmup,
            "command": "python3 bench/gpu_causal.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in a.variants.split(","):
            v = v.strip()
            if v not in VARIANTS:
                ap.error(f"--variants: unknown {v!r}; one of {', '.join(VARIANTS)}")
            if VARIANTS[v][2] and (not a.device.startswith("cuda") or not bnb_version[0].isdigit()):
                results.append({"variant": v, "error": "QLoRA needs CUDA and bitsandbytes"})
                print(f"{v}: skipped (QLoRA needs CUDA and bitsandbytes)", file=sys.stderr)
                continue
            try:
                r = bench_train(v, a.device, enc, tok.pad_token_id, a.steps, a.warmup, a.batch_size, Path(tmp))
            except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others
                r = {"variant": v, "error": f"{type(e).__name__}: {str(e)[:120]}"}
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    md = render(results, meta)
    print(md)
    out = a.out or (str(Path(os.environ["OUT"]) / "gpu_causal.md") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(md, encoding="utf-8")
        Path(out).with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
