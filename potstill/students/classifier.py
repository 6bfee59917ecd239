"""Encoder classifier: build (with DistilBERT-style layer selection), train, save, load, predict.

Training runs on `accelerate`, so the same function runs on one process, or on several with
`accelerate launch` (processes split each batch list; metrics are gathered). The artifact is a
plain Hugging Face model directory plus tokenizer; `history.json` holds the training curves.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

from ..data.inputs import Example, Inputs, read_jsonl
from ..errors import PotstillError
from ..losses import distill_loss, hidden_state_loss
from ..manifest import file_hash, fingerprint, read_manifest, up_to_date, write_manifest
from ..paths import CHECKPOINTS, HISTORY, KEPT, SOFT, RunPaths
from ..progress import log, progress
from ..schedule import EarlyStopping, plan_schedule, schedule_fields
from ..spec import TaskSpec
from ..timing import Timer
from .base import Student, baseline_train
from .hf import (
    build_encoder,
    count_params,
    dir_size_mb,
    encoder_init,
    length_grouped_batches,
    load_encoder,
    peak_gpu_mib,
    pick_precision,
    resolve_model_path,
)
from .hidden_kd import hidden_teacher, hidden_teacher_hash
from .width import narrow_ffn, width_note


def build_classifier(base: str, labels: list[str], layers: Sequence[int] | None = None,
                     seed: int = 13):
    """(model, tokenizer) for `labels`, from `base` (path or hub id), optionally cut to `layers`.

    When `base` is already a classifier over the same labels (a fitted teacher), its head is kept;
    otherwise a new head is initialised from `seed`.
    """
    model, tokenizer = build_encoder(base, labels, "sequence", layers, seed)
    model.config.problem_type = "single_label_classification"
    return model, tokenizer


def load_classifier(path: str | Path):
    return load_encoder(path, "sequence")


def model_labels(model) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


@torch.inference_mode()
def predict_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 64,
                   max_length: int = 128, show: str | None = None) -> np.ndarray:
    """Logits for `texts`, (N, C) float32. Batches are formed by length to pad little."""
    if model.training:  # eval() walks every module: once, not on each call (the server calls per request)
        model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    with progress(len(texts), show or "predict", enabled=show is not None) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt").to(device)
            out[idx] = model(**enc).logits.float().cpu().numpy()
            bar.advance(len(idx))
    return out


def log_softmax_np(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class TrainRow:
    text: str
    hard: int = -100
    """Index of the hard label (teacher's or gold), −100 when none."""
    soft: np.ndarray | None = None
    """(C,) teacher log-probabilities, or None."""


@dataclass
class TrainConfig:
    """What `train_classifier` needs; defaults are TrainSpec's (see spec.py for each field)."""

    epochs: float = 4
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    temperature: float = 2.0
    kd_weight: float = 1.0
    ce_weight: float = 0.1
    seed: int = 13
    precision: str = "auto"
    max_length: int = 64
    checkpoint_every: int = 200
    eval_batch_size: int = 128
    # schedule (potstill/schedule.py): fixed epochs, or a step budget from the data with
    # validation every `eval_every` steps and early stopping after `patience` validations
    schedule: str = "fixed"
    min_steps: int = 0
    max_steps: int | None = None
    patience: int | None = None
    eval_every: int | None = None
    decay: str = "linear"
    # intermediate-layer KD (losses.hidden_state_loss) against `teacher` given to train_classifier
    hidden_weight: float = 0.0
    layer_map: list[tuple[int, int]] | None = None
    """(student, teacher) hidden-state index pairs; None: losses.default_layer_map by depth."""
    head_lr_scale: float = 1.0
    """A new head's (classifier and pooler) learning rate is lr times this (a head kept from a
    fitted teacher, `potstill_new_head` False, learns at lr)."""
    freeze_embeddings: bool = False
    """Keep the input word embeddings as they are (no gradient, no optimizer state)."""


def _collate(tokenizer, max_length: int, n_labels: int):
    def collate(rows: list[TrainRow]) -> dict[str, torch.Tensor]:
        enc = tokenizer([r.text for r in rows], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        enc["hard"] = torch.tensor([r.hard for r in rows], dtype=torch.long)
        has_soft = [r.soft is not None for r in rows]
        if any(has_soft):
            soft = np.stack([r.soft if r.soft is not None else np.zeros(n_labels, np.float32)
                             for r in rows])
            enc["soft"] = torch.from_numpy(soft.astype(np.float32))  # (B, C) log-probs
            enc["soft_mask"] = torch.tensor(has_soft)
        return dict(enc)
    return collate


def _evaluate(accelerator, model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for batch in loader:
            hard = batch.pop("hard")
            batch.pop("soft", None), batch.pop("soft_mask", None)
            logits = model(**batch).logits
            pred, hard = accelerator.gather_for_metrics((logits.argmax(-1), hard))
            correct += int((pred == hard).sum())
            total += int(hard.numel())
    model.train()
    return correct / max(total, 1)


HEAD_PARAMS = ("classifier.", "score.", "pooler.")
"""Name parts of the head's parameters: the classifier layer, and BERT's pooler (for a
sentence-embedding checkpoint such as MiniLM-L6, trained with mean pooling, the pooler over
[CLS] was never trained for the task either)."""


def param_groups(model, lr: float, weight_decay: float, head_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; the head at lr * head_lr_scale."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups: dict[tuple[bool, bool], list] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = head_lr_scale != 1.0 and any(k in n for k in HEAD_PARAMS)
        groups.setdefault((head, any(k in n for k in no_decay)), []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if nd else weight_decay,
             "lr": lr * (head_lr_scale if head else 1.0)}
            for (head, nd), ps in sorted(groups.items())]


def train_classifier(
    model,
    tokenizer,
    train_rows: list[TrainRow],
    val_rows: list[TrainRow],
    out_dir: Path,
    cfg: TrainConfig,
    fingerprint: str,
    desc: str = "train",
    *,
    collate=None,
    loss_fn=None,
    metric_fn=None,
    teacher=None,
) -> dict[str, Any]:
    """Train `model` on `train_rows`, validate on the schedule's beat (`cfg.schedule`, see
    schedule.py), keep the best in `out_dir` and restore it into `model` at the end.

    With `teacher` (a local encoder sharing the student's tokenizer) and `cfg.hidden_weight` > 0,
    the loss adds hidden_weight * losses.hidden_state_loss between the student's hidden states and
    the teacher's on the same batch, pairs from `cfg.layer_map` (identity projection when the
    widths match, else a learned linear one, used in training only).

    Hooks for other heads (the tagger, students/tagger.py): `collate(rows) -> batch` (with
    `hard`, optional `soft`/`soft_mask` beside the model inputs), `loss_fn(logits, hard, soft,
    soft_mask) -> loss`, `metric_fn(accelerator, model, val_loader) -> float` (higher is better).

    Resumes from `out_dir/checkpoints` when one with the same `fingerprint` (a hash of data and
    config) exists — after a kill, training continues from the last saved step. Returns
    {"best_val_accuracy", "history", "steps", "seconds", "examples_per_s"}.
    """
    import time

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    out_dir = Path(out_dir)
    # accelerate keeps one global state per process; one `potstill run` trains several models
    # (teacher, student, baseline), each free to pick its precision. The process group stays.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    # cpu=True without CUDA: under `torchrun`/`accelerate launch` (WORLD_SIZE > 1) that makes
    # accelerate form a gloo process group (MULTI_CPU) instead of silently training N copies.
    accelerator = Accelerator(mixed_precision=pick_precision(cfg.precision),
                              cpu=not torch.cuda.is_available())
    set_seed(cfg.seed)
    is_main = accelerator.is_main_process
    n_labels = model.config.num_labels
    collate = collate or _collate(tokenizer, cfg.max_length, n_labels)

    sched = plan_schedule(len(train_rows), cfg.batch_size, mode=cfg.schedule, epochs=cfg.epochs,
                          min_steps=cfg.min_steps, max_steps=cfg.max_steps,
                          warmup_ratio=cfg.warmup_ratio, decay=cfg.decay, eval_every=cfg.eval_every,
                          patience=cfg.patience, processes=accelerator.num_processes)
    steps_per_epoch, total_steps, n_epochs = sched.steps_per_epoch, sched.total_steps, sched.n_epochs
    if is_main:
        log(f"{desc}: {sched.describe()}")
    projection, layer_map = None, None
    if teacher is not None and cfg.hidden_weight > 0:
        from ..losses import default_layer_map

        layer_map = cfg.layer_map or default_layer_map(None, model.config.num_hidden_layers,
                                                       teacher.config.num_hidden_layers)
        if model.config.hidden_size != teacher.config.hidden_size:
            torch.manual_seed(cfg.seed)
            projection = nn.Linear(model.config.hidden_size, teacher.config.hidden_size, bias=False)
        teacher.eval().requires_grad_(False)
        teacher.to(accelerator.device)
    else:
        teacher = None

    # fused AdamW: one kernel for all parameters. On CPU the default (foreach) step took about
    # 9x longer than the fused one for MiniLM-L6, more than forward and backward together.
    # a head kept from a fitted teacher is trained already: only a new one learns faster
    head_scale = cfg.head_lr_scale if getattr(model, "potstill_new_head", True) else 1.0
    if cfg.freeze_embeddings:
        # the word-embedding matrix is half of MiniLM-L6's parameters (30,522 x 384) and three
        # quarters of a 2-layer cut's: its gradient and AdamW update are a large share of a step
        model.get_input_embeddings().weight.requires_grad_(False)
    groups = param_groups(model, cfg.lr, cfg.weight_decay, head_scale)
    if projection is not None:
        groups.append({"params": list(projection.parameters()), "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, sched.lr_factor)
    # validation in length order: each batch pads to its own longest text, so sorted batches pad
    # little (docs/RESULTS.md: about a third less time per validation on CLINC150)
    val_loader = DataLoader(sorted(val_rows, key=lambda r: len(r.text)), batch_size=cfg.eval_batch_size,
                            collate_fn=collate)
    if projection is not None:
        model, projection, optimizer, scheduler, val_loader = accelerator.prepare(
            model, projection, optimizer, scheduler, val_loader)
    else:
        model, optimizer, scheduler, val_loader = accelerator.prepare(model, optimizer, scheduler, val_loader)

    ckpt = out_dir / CHECKPOINTS
    state_file = ckpt / "progress.json"
    state = {"fingerprint": fingerprint, "epoch": 0, "step_in_epoch": 0, "global_step": 0,
             "best": -1.0, "history": [], "seconds": 0.0, "stopping": None, "stopped_early": False,
             "best_step": None}
    if state_file.exists():
        saved = json.loads(state_file.read_text())
        if saved.get("fingerprint") == fingerprint:
            accelerator.load_state(str(ckpt / "state"))
            state = {"stopping": None, "stopped_early": False, "best_step": None, **saved}
            if is_main:
                log(f"{desc}: resuming at epoch {state['epoch'] + 1}, step {state['global_step']}/{total_steps}")
        elif is_main:
            log(f"{desc}: checkpoint in {ckpt} is for other data or config; starting afresh")

    def save_checkpoint() -> None:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(ckpt / "state"))
        if is_main:
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(state_file)

    def save_best() -> None:
        accelerator.wait_for_everyone()
        if is_main:
            accelerator.unwrap_model(model).save_pretrained(out_dir, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)

    lengths = [len(r.text) for r in train_rows]
    stopper = EarlyStopping.load(sched.patience, state["stopping"])
    model.train()
    t0 = time.monotonic() - state["seconds"]
    session_t0 = time.monotonic()
    peak_gpu_mib(accelerator.device, reset=True)
    seen = 0  # examples trained in this session (for throughput)
    loss = torch.tensor(float("nan"))

    def validate(epoch: int) -> None:
        val_acc = (metric_fn or _evaluate)(accelerator, model, val_loader)
        step = state["global_step"]
        at = epoch + 1 if sched.mode == "fixed" else round(step / steps_per_epoch, 3)
        state["history"].append({"epoch": at, "step": step, "val_accuracy": val_acc,
                                 "loss": float(loss.item())})
        new_best = stopper.update(val_acc)
        if is_main:
            where = f"epoch {epoch + 1}/{n_epochs}" if sched.mode == "fixed" else f"step {step}/{total_steps}"
            log(f"{desc}: {where}  val accuracy {val_acc:.4f}" + ("  (best so far)" if new_best else ""))
        if new_best:
            state["best"], state["best_step"] = val_acc, step
            save_best()
        state["stopping"] = stopper.state()

    with progress(total_steps, desc, enabled=is_main) as bar:
        bar.advance(state["global_step"])
        for epoch in range(state["epoch"], n_epochs):
            if state["stopped_early"] or state["global_step"] >= total_steps:
                break
            # fixed batches per epoch, so a resumed run sees the same ones
            batches = length_grouped_batches(lengths, cfg.batch_size, cfg.seed * 1000 + epoch)
            loader = accelerator.prepare_data_loader(
                DataLoader(train_rows, batch_sampler=batches, collate_fn=collate)
            )
            skip = state["step_in_epoch"]
            if skip:
                loader = accelerator.skip_first_batches(loader, skip)
            validated_at = -1
            for batch in loader:
                if state["global_step"] >= total_steps:
                    break
                hard = batch.pop("hard")
                soft = batch.pop("soft", None)
                soft_mask = batch.pop("soft_mask", None)
                with accelerator.autocast():
                    out = model(**batch, output_hidden_states=teacher is not None)
                    logits = out.logits  # (B, C)
                if loss_fn is not None:
                    loss = loss_fn(logits, hard, soft, soft_mask)
                elif soft is not None and not bool(soft_mask.all()):
                    # rows without a teacher distribution: CE only (the KD term sees the others)
                    loss = (distill_loss(logits[soft_mask], soft[soft_mask], None, cfg.temperature,
                                         cfg.kd_weight, 0.0) * soft_mask.float().mean()
                            + distill_loss(logits, None, hard, cfg.temperature, 0.0, cfg.ce_weight))
                else:
                    loss = distill_loss(logits, soft, hard, cfg.temperature, cfg.kd_weight, cfg.ce_weight)
                if teacher is not None:
                    with torch.no_grad(), accelerator.autocast():
                        t_hidden = teacher(**batch, output_hidden_states=True).hidden_states
                    loss = loss + cfg.hidden_weight * hidden_state_loss(
                        out.hidden_states, t_hidden, layer_map, batch["attention_mask"], projection)
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["global_step"] += 1
                state["step_in_epoch"] += 1
                seen += int(hard.shape[0]) * accelerator.num_processes
                if state["global_step"] % 10 == 0:  # .item() syncs a GPU: not every step
                    bar.set_postfix(f"loss {loss.item():.3f}")
                bar.advance()
                if sched.eval_every > 0 and sched.eval_due(state["global_step"], False):
                    validate(epoch)
                    validated_at = state["global_step"]
                    if stopper.should_stop:
                        state["stopped_early"] = True
                        if is_main:
                            log(f"{desc}: stopping early at step {state['global_step']}: no gain in "
                                f"{stopper.bad} validations; best {stopper.best:.4f} at step {state['best_step']}")
                        break
                if state["global_step"] % cfg.checkpoint_every == 0:
                    state["seconds"] = time.monotonic() - t0
                    save_checkpoint()
            if validated_at != state["global_step"] and sched.eval_due(state["global_step"], True):
                validate(epoch)
            state["epoch"] = epoch + 1
            state["step_in_epoch"] = 0
            state["seconds"] = time.monotonic() - t0
            save_checkpoint()
    seconds = time.monotonic() - t0
    accelerator.wait_for_everyone()
    if state["best_step"] is not None and state["best_step"] != state["global_step"]:
        _restore_best(accelerator.unwrap_model(model), out_dir)
    result = {
        "best_val_accuracy": state["best"],
        "best_step": state["best_step"],
        "stopped_early": state["stopped_early"],
        "schedule": sched.as_dict(),
        "history": state["history"],
        "steps": state["global_step"],
        "seconds": round(seconds, 2),
        "examples_per_s": round(seen / max(time.monotonic() - session_t0, 1e-9), 2) if seen else None,
        "precision": accelerator.mixed_precision,
        "processes": accelerator.num_processes,
    }
    if (peak := peak_gpu_mib(accelerator.device)) is not None:
        result["peak_gpu_mib"] = peak
    accelerator.wait_for_everyone()
    if is_main:
        (out_dir / HISTORY).write_text(json.dumps(result, indent=2))
        shutil.rmtree(ckpt, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return result


def _restore_best(model, out_dir: Path) -> None:
    """Load the best weights `save_best` wrote to `out_dir` back into `model` (in place)."""
    from safetensors.torch import load_file

    files = sorted(Path(out_dir).glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    if state:
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items() if k in own}, strict=False)


# ---------------------------------------------------------------------------------------------
# timing


THROUGHPUT_SAMPLE = 1024
"""Batch throughput is timed on at most this many texts (a seeded sample), warm: the evaluation
has just scored every text once, and a second pass over all of them only repeats that work."""


def throughput_sample(texts: Sequence[str], seed: int = 0) -> list[str]:
    """The texts batch throughput is timed on: all of them, or a seeded THROUGHPUT_SAMPLE."""
    if len(texts) <= THROUGHPUT_SAMPLE:
        return list(texts)
    return random.Random(seed).sample(list(texts), THROUGHPUT_SAMPLE)


def classifier_timer(model, tokenizer, samples: int, max_length: int) -> Timer:
    """One input at a time: tokenise, forward, the top label (the evaluation's latency columns)."""
    model.eval()

    def call(text: str) -> int:
        with torch.inference_mode():
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
            return int(model(**enc).logits.argmax(-1).item())

    return Timer(call, samples)


def batch_throughput(model, tokenizer, texts: Sequence[str], batch_size: int, max_length: int,
                     seed: int = 0) -> dict[str, float]:
    """Batch throughput (inputs/s) over `throughput_sample(texts)`."""
    batch = throughput_sample(texts, seed)
    t0 = time.perf_counter()
    predict_logits(model, tokenizer, batch, batch_size=batch_size, max_length=max_length)
    return {"throughput_per_s": round(len(batch) / (time.perf_counter() - t0), 1)}


# ---------------------------------------------------------------------------------------------
# the Student: stage hooks (teacher fit, train, evaluate)


def gold_rows(examples: list[Example], labels: list[str]) -> list[TrainRow]:
    index = {l: i for i, l in enumerate(labels)}
    return [TrainRow(ex.text, index[ex.gold]) for ex in examples if ex.gold is not None]


def fit_classifier_teacher(spec: TaskSpec, run: RunPaths, inputs: Inputs) -> dict[str, Any]:
    """Fine-tune `teacher.fit.model` (all layers) on the gold labels: the teacher of a `fit` spec,
    and the seeds' plain fine-tuning path."""
    f = spec.teacher.fit
    train_rows = gold_rows(inputs.train, inputs.labels)
    if not train_rows:
        raise PotstillError(f"{spec.data.train}: no gold labels to fit a teacher on")
    fp = fingerprint("teacher", inputs.gold_hash, inputs.labels, f.identity(), spec.train.seed,
                     spec.train.precision)
    if up_to_date(run.teacher, fp, "config.json"):
        log(f"teacher fit: up to date in {run.teacher}")
        return read_manifest(run.teacher)
    model, tok = build_classifier(f.model, inputs.labels, seed=spec.train.seed)
    cfg = TrainConfig(epochs=f.epochs, batch_size=f.batch_size, lr=f.lr, head_lr_scale=f.head_lr_scale,
                      max_length=f.max_length,
                      kd_weight=0.0, ce_weight=1.0, seed=spec.train.seed,
                      precision=spec.train.precision, checkpoint_every=spec.train.checkpoint_every,
                      freeze_embeddings=f.freeze_embeddings, **schedule_fields(f))
    result = train_classifier(model, tok, train_rows, gold_rows(inputs.validation, inputs.labels),
                              run.teacher, cfg, fp, desc="teacher fit")
    return write_manifest(run.teacher, "teacher_fit", spec, fingerprint=fp,
                          base_model=f.model, dataset_hash=inputs.dataset_hash,
                          parents={"inputs": str(run.inputs)}, params=count_params(model),
                          metrics=result)


def train_classifier_student(spec: TaskSpec, run: RunPaths, inputs: Inputs,
                  mode: Literal["student", "baseline"] = "student", *,
                  records: Path | None = None, out: Path | None = None) -> dict[str, Any]:
    """Train the student (objective from `train.objective`) or the gold-only baseline.

    `records` (default: the run's filtered/) is a folder with kept.jsonl + soft.npy to learn from;
    `out` (default: the run's student/ or baseline/) where the model goes: a round of
    `potstill iterate` trains on its own records into its own folder."""
    t = spec.train
    objective = "gold" if mode == "baseline" else t.objective
    out = out or run.model_dir(mode)
    records = records or run.filtered
    labels = inputs.labels
    index = {l: i for i, l in enumerate(labels)}
    val_rows = gold_rows(inputs.validation, labels)
    if not val_rows:
        raise PotstillError("the validation split has no gold labels")
    parents: dict[str, str] = {"inputs": str(run.inputs)}
    teacher_identity = None
    if objective == "gold":
        rows = gold_rows(inputs.train, labels)
        data_hash = inputs.gold_hash
        if not rows:
            raise PotstillError(f"{spec.data.train}: no gold labels for the gold-only objective")
    else:
        kept_path = records / KEPT
        if not kept_path.exists():
            raise PotstillError(f"{kept_path}: no filtered records; run `potstill filter` first")
        kept = read_jsonl(kept_path)
        soft = np.load(records / SOFT)  # (N, C) probabilities, NaN rows where none
        logp = np.log(np.clip(soft, 1e-12, 1.0)).astype(np.float32)
        rows = []
        for rec, lp, p in zip(kept, logp, soft):
            hard_label = rec["gold"] if objective == "both" and rec.get("gold") else rec["label"]
            rows.append(TrainRow(rec["text"], index[hard_label], None if np.isnan(p).any() else lp))
        if objective == "both":  # gold rows the filter dropped still teach through their gold label
            have = {r.text for r in rows}
            rows += [r for r in gold_rows(inputs.train, labels) if r.text not in have]
        data_hash = file_hash(kept_path, records / SOFT)
        teacher_identity = read_manifest(records).get("teacher")
        parents["filtered"] = str(records)
    if not rows:
        raise PotstillError(f"no training rows for the {mode} ({objective}); check the filter report")
    if mode == "baseline":
        t = baseline_train(t, records / KEPT, [r.text for r in rows])
    # the gold-only baseline never sees the teacher, not even its weights: it is what
    # fine-tuning the small model alone gives, the other side of "fine-tune or distill?"
    init = spec.student.model if mode == "baseline" else encoder_init(spec, run)
    s = spec.student
    init_path = Path(resolve_model_path(init))
    init_weights = file_hash(*sorted(init_path.glob("*.safetensors"))) if init_path.exists() else init
    teacher_weights = hidden_teacher_hash(spec, run, objective)
    # the baseline never reads the teacher: its hidden-state weight is not part of what it is
    skip = {"baseline", "hidden_weight"} if objective == "gold" else {"baseline"}
    fp = fingerprint(mode, objective, data_hash, labels, s.identity(), t.identity(exclude=skip),
                     init, init_weights, *([teacher_weights] if teacher_weights else []))
    if up_to_date(out, fp, "config.json", HISTORY):
        log(f"{mode}: up to date in {out}")
        return read_manifest(out)
    model, tok = build_classifier(init, labels, s.layers, seed=t.seed)
    narrow_ffn(model, tok, [r.text for r in rows], s.intermediate_size, s.max_length, t.seed)
    teacher, layer_map, _ = hidden_teacher(spec, run, model, tok, objective, init)
    log(f"{mode}: {objective} objective, {len(rows)} rows, init from {init if init != s.model else s.model}"
        f", layers {s.layers if s.layers is not None else 'all'}{width_note(s.intermediate_size)}"
        f", {count_params(model) / 1e6:.1f}M params")
    cfg = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, head_lr_scale=t.head_lr_scale,
                      weight_decay=t.weight_decay,
                      warmup_ratio=t.warmup_ratio, temperature=t.temperature,
                      kd_weight=0.0 if objective == "gold" else t.kd_weight,
                      ce_weight=1.0 if objective == "gold" else t.ce_weight,
                      seed=t.seed, precision=t.precision, max_length=s.max_length,
                      checkpoint_every=t.checkpoint_every, freeze_embeddings=t.freeze_embeddings,
                      **schedule_fields(t),
                      hidden_weight=t.hidden_weight if teacher is not None else 0.0, layer_map=layer_map)
    result = train_classifier(model, tok, rows, val_rows, out, cfg, fp, desc=mode, teacher=teacher)
    return write_manifest(out, mode, spec, fingerprint=fp, objective=objective, init_from=init,
                          teacher=teacher_identity, dataset_hash=inputs.dataset_hash,
                          train_data_hash=data_hash, parents=parents, params=count_params(model),
                          layers=s.layers, metrics=result)


class ClassifierStudent:
    """An encoder with a classification head (`student.kind: classifier`)."""

    kind = "classifier"
    marker = "config.json"

    def fit_teacher(self, spec: TaskSpec, run: RunPaths, inputs: Inputs) -> dict[str, Any]:
        return fit_classifier_teacher(spec, run, inputs)

    def train(self, spec: TaskSpec, run: RunPaths, inputs: Inputs, mode: Literal["student", "baseline"] = "student",
              *, records: Path | None = None, out: Path | None = None) -> dict[str, Any]:
        return train_classifier_student(spec, run, inputs, mode, records=records, out=out)

    def trained(self, path: Path) -> bool:
        return (Path(path) / "config.json").exists()

    def evaluate(self, spec: TaskSpec, task: Any, path: Path, texts: list[str], labels: list[str],
                 name: str) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        model, tok = load_classifier(path)
        own = model_labels(model)
        max_len = spec.student.max_length
        logits = predict_logits(model, tok, texts, spec.eval.batch_size, max_len, show=f"eval {name}")
        pred = [own[i] for i in logits.argmax(-1)]
        metrics = read_manifest(path).get("metrics", {})
        info = {"params": count_params(model), "size_mb": dir_size_mb(path),
                "layers": model.config.num_hidden_layers,
                **batch_throughput(model, tok, texts, spec.eval.batch_size, max_len),
                "best_val_accuracy": metrics.get("best_val_accuracy")}
        return pred, info, {"logits": (own, logits),
                            "timer": classifier_timer(model, tok, spec.eval.latency_samples, max_len)}


STUDENT: Student = ClassifierStudent()
