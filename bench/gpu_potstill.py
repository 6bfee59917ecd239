"""potstill's own training loop on a CUDA GPU: `potstill train examples/snips-json/teacher.yaml
--baseline` (the example's teacher recipe: the snips-json rows, chat template, loss on the answer)
with train.precision bf16, as full fine-tuning, LoRA and QLoRA (`student.lora.quantize_4bit`) of
the 30-layer model and as full fine-tuning of the example's 12-layer student shape; each row's
tokens/s and peak GPU memory are those potstill's history.json records (`tokens_per_s`,
`peak_gpu_mib`). Beside them, bench/gpu_causal.py's plain PyTorch loop on the same rows, batch
and length, so the table reads as a ratio: what potstill's loop costs over a bare one.

The model is SmolLM2-135M's architecture with RANDOM weights, built from
bench/gpu_assets/smollm2/ (the 98 MB GGUF cannot travel to the GPU machine): throughput and
memory depend on the shapes, not on the weight values. Quality is measured on CPU (RESULTS).

    python3 bench/gpu_potstill.py --steps 50          # on the GPU machine (bench/gpu_check.sh)

Writes a table to stdout and $OUT/gpu_potstill.md (+ .json) or --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ASSETS = HERE / "gpu_assets" / "smollm2"
SPEC = ROOT / "examples" / "snips-json" / "teacher.yaml"

# name (gpu_causal.py's variant of the same shape) -> --set overrides
VARIANTS = {
    "full-30": ["student.lora.method=full"],
    "lora-30": ["student.lora.method=lora", "student.lora.r=16", "student.lora.alpha=32"],
    "qlora-30": ["student.lora.method=lora", "student.lora.r=16", "student.lora.alpha=32",
                 "student.lora.quantize_4bit=true"],
    "full-12": ["student.lora.method=full", "student.layers=12", "student.prune=spread"],
}


def random_model(dest: Path) -> Path:
    """SmolLM2-135M's config and tokenizer with random weights, saved as a transformers directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (dest / "config.json").exists():
        return dest
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ASSETS)).save_pretrained(dest)
    for f in ASSETS.iterdir():
        if f.name != "config.json":
            shutil.copy(f, dest / f.name)
    return dest


def potstill_train(variant: str, model: Path, steps: int, work: Path, precision: str = "bf16") -> dict:
    # the adaptive schedule capped at `steps`, with no validation inside them (a throughput run)
    sets = ["student.model=" + str(model), "teacher.model=" + str(model), f"train.precision={precision}", f"train.max_steps={steps}",
            "train.eval_every=1000000", *VARIANTS[variant]]
    cmd = [sys.executable, "-m", "potstill", "train", str(SPEC), "--baseline", "--workdir", str(work)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"variant": variant, "error": (p.stderr or p.stdout).strip().splitlines()[-1][:200]}
    h = json.loads((work / "baseline" / "history.json").read_text())
    m = json.loads((work / "baseline" / "manifest.json").read_text())
    return {"variant": variant, "steps": h["steps"], "precision": h["precision"],
            "params_m": round(m["params"] / 1e6, 1), "trainable_m": round(m["trainable_params"] / 1e6, 2),
            "tokens_per_s": h["tokens_per_s"], "peak_gpu_mib": h.get("peak_gpu_mib"),
            "loop_s": h["seconds"], "command_s": round(wall, 1)}


def plain_loop(variants: list[str], steps: int, out: Path) -> dict[str, dict]:
    """bench/gpu_causal.py on the same rows, batch 8 and max length 96 (teacher.yaml's)."""
    cmd = [sys.executable, str(HERE / "gpu_causal.py"), "--steps", str(steps), "--batch-size", "8",
           "--max-length", "96", "--variants", ",".join(variants), "--out", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stderr[-2000:], file=sys.stderr)
        return {}
    return {r["variant"]: r for r in json.loads(out.with_suffix(".json").read_text())["results"]}


def render(rows: list[dict], plain: dict[str, dict], meta: dict) -> str:
    lines = ["# potstill's training loop on a CUDA GPU: the snips-json teacher recipe", "",
             f"Device: {meta['device']}; torch {meta['torch']}, transformers {meta['transformers']}, "
             f"peft {meta['peft']}, bitsandbytes {meta['bitsandbytes']}. `potstill train "
             f"examples/snips-json/teacher.yaml --baseline` with train.precision={meta['precision']}, "
             f"train.max_steps={meta['steps']}, no validation inside them (batch 8, max length 96; tokens/s over the whole loop, first "
             "steps included); plain loop: bench/gpu_causal.py, same rows, batch and length "
             f"({meta['plain_steps']} timed steps after 3 warm-up). SmolLM2-135M's architecture with RANDOM "
             "weights (throughput and memory do not depend on weight values).", "",
             "| variant | params (M) | trainable (M) | potstill tokens/s | plain loop tokens/s | potstill / plain "
             "| potstill peak GPU MiB | plain peak GPU MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} | | | | | | |")
            continue
        q = plain.get(r["variant"], {})
        ratio = round(r["tokens_per_s"] / q["tokens_per_s"], 2) if q.get("tokens_per_s") else "—"
        lines.append(f"| {r['variant']} | {r['params_m']} | {r['trainable_m']} | {r['tokens_per_s']} | "
                     f"{q.get('tokens_per_s', '—')} | {ratio} | {r['peak_gpu_mib']} | {q.get('peak_mb', '—')} |")
    lines += ["", f"Command: `{meta['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50, help="potstill's train.max_steps per variant")
    ap.add_argument("--plain-steps", type=int, default=30)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--precision", default="bf16", help="fp32 for a dry run on a CPU without native bf16")
    ap.add_argument("--out", default=None, help="markdown file (default: $OUT/gpu_potstill.md when OUT is set)")
    args = ap.parse_args(argv)
    import peft
    import torch
    import transformers

    try:
        import bitsandbytes
        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = "not installed"
    variants = args.variants.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="gpu-potstill-"))
    model = random_model(tmp / "smollm2-random")
    rows = []
    for v in variants:
        rows.append(potstill_train(v, model, args.steps, tmp / f"run-{v}", args.precision))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out or Path(os.environ.get("OUT", ".")) / "gpu_potstill.md")
    plain = plain_loop(variants, args.plain_steps, out.with_name("gpu_causal_same_shapes.md"))
    meta = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bnb, "steps": args.steps, "precision": args.precision, "plain_steps": args.plain_steps,
            "command": "python3 bench/gpu_potstill.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    text = render(rows, plain, meta)
    print(text)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "potstill": rows, "plain": plain}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
