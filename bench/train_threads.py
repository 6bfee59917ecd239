"""How training uses a machine's cores: threads in one process, two jobs side by side, or DDP.

`potstill run` trains the teacher, the gold-only baseline and the student one after the other, each
with all of torch's threads. On a small CPU that is not the only choice: two independent jobs (the
baseline needs no teacher) could each take one core, or one job could run as two data-parallel
processes (`torchrun --nproc_per_node 2 -m potstill train`). This script times each, on CLINC150's
training texts in length-sorted batches of 32 (as the trainer forms them), for MiniLM-L6 (the
fitted teacher) and its 2-layer cut (layers 0 and 5: the student and the baseline), plain
cross-entropy, fused AdamW:

- one process at 1 thread and at 2 threads;
- two 1-thread processes at once (their steps/s added up: the work done per second);
- two 1-thread DDP processes (gloo), each on half of every batch of 32;
- one process at 2 threads with the word embeddings frozen (`train.freeze_embeddings`): no
  gradient and no AdamW update for the 30,522 x 384 matrix. It and the plain 2-thread job run in
  turn, twice, and each column is the mean of its two.

Prints a table of optimizer steps per second and writes docs/bench_train_threads.{md,json}.

    .venv/bin/python bench/train_threads.py            # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "clinc150" / "data" / "train.jsonl"


def worker(layers: str, threads: int, steps: int, ddp: bool, freeze: bool = False) -> None:
    """One timed training job; prints `steps/s` on its last line (rank 0 only under DDP)."""
    import random

    import torch

    sys.path.insert(0, str(ROOT))
    from potstill.students.classifier import build_classifier
    from potstill.students.hf import resolve_model_path

    rank, world = 0, 1
    if ddp:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(threads)
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    labels = sorted({r["label"] for r in rows})
    index = {x: i for i, x in enumerate(labels)}
    torch.manual_seed(0)
    model, tok = build_classifier(resolve_model_path("minilm"), labels,
                                  layers=None if layers == "6" else [0, 5])
    model.train()
    if freeze:
        model.get_input_embeddings().weight.requires_grad_(False)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    rows.sort(key=lambda r: len(r["text"]))
    rng = random.Random(0)
    starts = [rng.randrange(0, len(rows) - 32) for _ in range(steps + 10)]
    t0 = time.perf_counter()
    for i, s in enumerate(starts):
        if i == 10:  # the first steps warm the allocator up
            t0 = time.perf_counter()
        batch = rows[s : s + 32][rank::world]
        enc = tok([r["text"] for r in batch], padding=True, truncation=True, max_length=64,
                  return_tensors="pt")
        y = torch.tensor([index[r["label"]] for r in batch])
        model(**enc, labels=y).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if rank == 0:
        print(f"{steps / (time.perf_counter() - t0):.4f}")


def run(cmds: list[list[str]]) -> list[float]:
    """Start `cmds` at once; each one's last stdout line as a float."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
             for c in cmds]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmds[0])}: exit {p.returncode}")
        out.append(float(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--worker", nargs=3, metavar=("LAYERS", "THREADS", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_train_threads")
    args = ap.parse_args()
    if args.worker:
        layers, threads, mode = args.worker
        worker(layers, int(threads), args.steps, mode == "ddp", mode == "freeze")
        return
    me = [sys.executable, __file__, "--steps", str(args.steps), "--worker"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    rows = []
    for layers, name in (("6", "MiniLM-L6 (teacher)"), ("2", "2-layer cut (student, baseline)")):
        one = run([me + [layers, "1", "-"]])[0]
        # plain and frozen at 2 threads in turn, twice (their ratio is what counts): the means
        two_frozen = [run([me + [layers, "2", mode]])[0] for mode in ("-", "freeze", "-", "freeze")]
        two, frozen = sum(two_frozen[0::2]) / 2, sum(two_frozen[1::2]) / 2
        pair = run([me + [layers, "1", "-"], me + [layers, "1", "-"]])
        ddp = run([torchrun + [__file__, "--steps", str(args.steps), "--worker", layers, "1", "ddp"]])[0]
        rows.append({"model": name, "1 thread": one, "2 threads": two, "two 1-thread jobs": sum(pair),
                     "DDP, 2 x 1 thread": ddp, "2 threads, embeddings frozen": frozen})
        print(rows[-1], flush=True)
    head = ["1 thread", "2 threads", "two 1-thread jobs", "DDP, 2 x 1 thread", "2 threads, embeddings frozen"]
    lines = ["| model | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for r in rows:
        base = r["2 threads"]
        lines.append(f"| {r['model']} | " + " | ".join(f"{r[h]:.2f} ({r[h] / base:.2f}x)" for h in head) + " |")
    table = "\n".join(lines)
    cmd = "python bench/train_threads.py" + (f" --steps {args.steps}" if args.steps != 50 else "")
    note = (f"Optimizer steps per second, batch 32 (the ratio to one process at 2 threads in brackets); "
            f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}.")
    print(table)
    args.out.with_suffix(".json").write_text(json.dumps({"command": cmd, "date": time.strftime("%Y-%m-%d"),
                                                         "cores": os.cpu_count(), "rows": rows}, indent=2))
    args.out.with_suffix(".md").write_text(f"# Training threads\n\n`{cmd}` ({time.strftime('%Y-%m-%d')})\n\n"
                                           f"{note}\n\n{table}\n")


if __name__ == "__main__":
    main()
