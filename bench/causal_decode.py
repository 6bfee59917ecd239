"""What one generated token costs at batch 1, by depth: where a depth-pruned causal student's
speed-up comes from and where it stops. Not a test; prints a table and writes
docs/bench_causal_decode.{md,json}.

Greedy decoding at batch 1 reads every weight once per token. On a CPU that is bound by memory
bandwidth, not by arithmetic, so a token costs about the bytes of weights it reads: each decoder
layer, plus the LM head (SmolLM2-135M: 49,152 x 576 = 28.3M weights, 113 MB in float32, tied to
the input embeddings but read whole for every token's logits). Cutting layers shrinks only the
first part.

For each depth in `--layers` (decoder layers kept by `students/prune.py` `spread`; which layers
does not change the cost), the bench times, one thread as in the evaluation:
- one decoding step with a KV cache after a prompt of the example (`model(next_token,
  past_key_values)`), the median of `--steps` steps;
- the LM head alone on one hidden state;
- a whole answer through potstill's `generate` (HF `generate`, greedy, logprobs kept), per token;
- the same answers decoded over a trimmed output vocabulary (`student.output_vocab: answers+input`,
  students/output_vocab.py: the tokens of the example's gold training answers and of the request),
  and that restricted head alone.
The depths take turns, `--repeat` rounds, so a drift of the machine falls on all alike; medians.
From the step times, a least-squares line step = fixed + depth x per-layer gives the per-layer
cost and the cost that no cut removes, and so the largest speed-up a cut to k layers can give.

Usage: python bench/causal_decode.py [--model DIR] [--layers 6,8,10,30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    ap.add_argument("--model", default=str(EX / "runs/snips-json-teacher/baseline"),
                    help="a causal-LM directory, packaged GGUF name or GGUF file (default: the "
                         "example's fine-tuned teacher)")
    ap.add_argument("--layers", default="6,8,10,30")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--answers", type=int, default=3, help="whole answers through generate per round")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_causal_decode"))
    args = ap.parse_args()

    import torch

    from potstill.config import load_spec
    from potstill.data.inputs import read_jsonl
    from potstill.students.causal_lm import build_causal_lm, generate, prompt_ids, resolve_causal_path
    from potstill.students.output_vocab import RestrictedHead, answer_ids, request_ids, union_ids
    from potstill.students.prune import spread

    torch.set_num_threads(1)
    spec = load_spec(EX / "potstill.yaml")
    prompts = [spec.render_prompt(r["text"], []) for r in read_jsonl(EX / "data/test.jsonl")[:args.answers]]
    from transformers import AutoConfig

    n = AutoConfig.from_pretrained(resolve_causal_path(args.model)).num_hidden_layers
    depths = [int(x) for x in args.layers.split(",")]
    models = {}
    for k in depths:
        model, tok = build_causal_lm(args.model, "full", layers=None if k >= n else spread(n, k))
        models[k] = model.eval()
    head = next(iter(models.values())).get_output_embeddings()
    head_mb = head.weight.numel() * head.weight.element_size() / 1e6
    layer_mb = {k: sum(p.numel() * p.element_size() for p in m.model.layers.parameters()) / 1e6
                for k, m in models.items()}
    times: dict[int, dict[str, list[float]]] = {k: {"step": [], "head": [], "answer": [], "head_av": [],
                                                    "answer_av": []} for k in depths}
    ids = torch.tensor([prompt_ids(tok, prompts[0])])
    kept = answer_ids(tok, [r["label"] for r in read_jsonl(EX / "data/train.jsonl")])
    allowed = union_ids([set(kept) | request_ids(tok, prompts[0])], torch.device("cpu"))
    for rnd in range(args.repeat):
        for k in depths[rnd % len(depths):] + depths[:rnd % len(depths)]:
            m = models[k]
            with torch.inference_mode():
                out = m(input_ids=ids, use_cache=True, logits_to_keep=1)
                past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                steps = []
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    out = m(input_ids=nxt, past_key_values=past, use_cache=True)
                    steps.append(time.perf_counter() - t0)
                    past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                h = torch.randn(1, 1, m.config.hidden_size)
                small = RestrictedHead(m.get_output_embeddings(), *allowed)
                for head, key in ((m.get_output_embeddings(), "head"), (small, "head_av")):
                    heads = []
                    for _ in range(args.steps):
                        t0 = time.perf_counter()
                        head(h)
                        heads.append(time.perf_counter() - t0)
                    times[k][key].append(statistics.median(heads) * 1e3)
            for key, vocab in (("answer", None), ("answer_av", kept)):
                t0, toks = time.perf_counter(), 0
                for p in prompts:
                    toks += len(generate(m, tok, [p], spec.student.max_new_tokens, 1,
                                         answer_ids=vocab)[0].token_logprobs)
                times[k][key].append((time.perf_counter() - t0) / max(toks, 1) * 1e3)
            times[k]["step"].append(statistics.median(steps) * 1e3)
        print(f"round {rnd + 1}: " + ", ".join(f"{k} layers {times[k]['step'][-1]:.1f} ms/step" for k in depths),
              flush=True)
    med = {k: {key: round(statistics.median(v), 2) for key, v in t.items()} for k, t in times.items()}
    # step = fixed + k * per_layer, least squares over the depths
    xs, ys = depths, [med[k]["step"] for k in depths]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    per_layer = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    fixed = my - per_layer * mx
    from causal_distill import _cpu

    results = {"args": vars(args), "machine": _cpu(), "layers_total": n, "head_mb": round(head_mb, 1),
               "answer_vocab": len(kept), "allowed_ids": len(allowed[0]),
               "decoder_mb": {k: round(v, 1) for k, v in layer_mb.items()}, "median_ms": med,
               "fit": {"per_layer_ms": round(per_layer, 3), "fixed_ms": round(fixed, 2)}}
    write(results, Path(args.out))


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    a, med, fit = results["args"], results["median_ms"], results["fit"]
    full = max(med, key=int)
    lines = [
        "# What a generated token costs, by depth (bench/causal_decode.py)", "",
        f"Model: `{Path(a['model']).name}` ({results['layers_total']} layers), cut to each depth by "
        f"`spread`; one thread; medians of {a['repeat']} rounds, depths in turn. Machine: "
        f"{results['machine']}.", "",
        f"Command: `python bench/causal_decode.py --layers {a['layers']} --steps {a['steps']} "
        f"--answers {a['answers']} --repeat {a['repeat']}`", "",
        "| layers | decoder weights MB (fp32) | decode step ms | of which LM head ms | "
        "whole answer ms/token (generate) | speed-up per step vs full depth | trimmed head ms | "
        "whole answer ms/token, trimmed | speed-up per token, both trimmed | speed-up per token, "
        "this depth trimmed vs full depth untrimmed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in sorted(med, key=int):
        m = med[k]
        row = (f"| {k} | {results['decoder_mb'][k]} | {m['step']} | {m['head']} | {m['answer']} | "
               f"{med[full]['step'] / m['step']:.2f}x |")
        if "answer_av" in m:
            row += (f" {m['head_av']} | {m['answer_av']} | {med[full]['answer_av'] / m['answer_av']:.2f}x | "
                    f"{med[full]['answer'] / m['answer_av']:.2f}x |")
        lines.append(row)
    lines += [
        "", f"LM head: {results['head_mb']} MB of float32 weights, read whole for every token.",
        *([f"Trimmed: {results['allowed_ids']} ids scored for the first test request ({results['answer_vocab']} "
           "from the gold training answers, the rest from the request); the other rows are -inf.", ""]
          if "allowed_ids" in results else []),
        f"Least-squares fit over the depths: a decode step costs {fit['fixed_ms']} ms whatever the depth "
        f"(LM head, embeddings, final norm, Python) plus {fit['per_layer_ms']} ms per decoder layer. "
        "Largest speed-up a cut to k of the full depth's layers can give at batch 1: (fixed + full x "
        "per_layer) / (fixed + k x per_layer).", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
