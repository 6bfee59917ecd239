"""Causal-LM student: build (LoRA, prefix or prompt tuning through `peft`, or full fine-tuning;
QLoRA on CUDA), format prompt/completion rows, train, save, load, merge, generate with logprobs.

Any `AutoModelForCausalLM` works, from a hub id or a local path. Objectives (see `LMTrainConfig`):

- `sequence`: cross-entropy on the kept teacher outputs, completion tokens only (prompt tokens
  carry label -100);
- `logit_kd`: token-level KD (forward/reverse KL or JSD, `losses.py`) against the full logits of
  a local teacher that shares the student's tokenizer, or the top-k + tail KD against an API
  teacher's cached top-k logprobs; plus `ce_weight` times the sequence loss;
- `rationale`: Distilling step-by-step (Hsieh et al., 2023): each input becomes two tasks,
  "[label] prompt" -> answer and "[rationale] prompt" -> the teacher's rationale; at inference
  the student is asked the "[label]" task only, so it answers without writing a rationale.

General-data mixing: `general_ratio` of the rows are plain text (loss on every token) against
forgetting; the held-out general text gives the perplexity of the student and of its base model,
so a regression is visible in `history.json`.

Stage hooks: the kept teacher records (or gold, for the baseline)
-> prompt/completion rows -> a causal-LM student in `student/` (or `baseline/`).

What a record teaches: `output` when the record has one, else the parsed `label` (classify) or the
teacher's `raw` text (generate). Under `rationale`, the record's `rationale` field, or its raw
output split at its last "Answer:" line (see `causal_lm.split_rationale`). Under `logit_kd` with
an API teacher, the record's `token_logprobs` ([token, logprob, [[alt, logprob], ...]] per
generated token) become the top-k + tail targets, when those tokens are exactly the student's
tokens of the target (`aligned_topk`; else the row trains on its text alone).
The label stage writes these fields for `kind: generate` (tasks/generate.py). Training resumes
from `out/checkpoints` after a kill (`causal_lm.train_causal_lm`, students/lm_checkpoint.py).

Why a small loop rather than TRL's SFTTrainer: `logit_kd` runs a teacher forward pass and our
losses on every batch, the top-k KD needs per-row teacher data that SFTTrainer's collator does
not carry, and one loop for the three objectives means the comparison between them shares
batches, schedule and precision exactly. TRL's SFTTrainer is measured side by side on the same
model and data in `bench/causal_distill.py` (tokens/s).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F

from ..answers import TokenLP, split_rationale
from ..data.inputs import Inputs, read_jsonl
from ..errors import MissingOutput, PotstillError
from ..losses import token_kd_loss, topk_tail_kd
from ..manifest import file_hash, fingerprint, read_manifest, up_to_date, write_manifest
from ..paths import CHECKPOINTS, HISTORY, KEPT, RunPaths
from ..progress import log, progress
from ..schedule import EarlyStopping, Schedule, plan_schedule, schedule_fields
from ..spec import TaskSpec
from ..timing import Timer, time_alone
from .base import Student, baseline_train
from .hf import dir_size_mb
from .lm_checkpoint import load_best, load_lm_checkpoint, load_trainable, save_best, save_lm_checkpoint, trainable_state
from .output_vocab import META_KEY, answer_ids, decode_ids, request_ids, restricted_output
from .prune import hidden_pairs, select_layers

LABEL_TAG = "[label]"
RATIONALE_TAG = "[rationale]"
STUDENT_META = "potstill_student.json"  # beside the weights: base model, method, objective
IGNORE = -100


# ---------------------------------------------------------------------------------------------
# rows and formatting (pure)


@dataclass
class LMRow:
    """One training example: the prompt (no loss) and the completion (loss)."""

    prompt: str
    completion: str
    kind: str = "task"
    """task | rationale | general (general text: empty prompt, loss on every token, no KD)."""
    weight: float = 1.0
    topk: tuple[list[list[int]], list[list[float]]] | None = None
    """API teacher: per completion token, its top-k token ids and logprobs (same tokenizer)."""


def task_prompt(prompt: str, objective: str) -> str:
    """The prompt the student sees for the answer: tagged "[label]" under the rationale objective."""
    return f"{LABEL_TAG} {prompt}" if objective == "rationale" else prompt


def rationale_rows(prompt: str, rationale: str, answer: str, rationale_weight: float = 1.0) -> list[LMRow]:
    """Distilling step-by-step: one input, two tasks told apart by a tag in the prompt."""
    return [LMRow(f"{LABEL_TAG} {prompt}", answer, "task"),
            LMRow(f"{RATIONALE_TAG} {prompt}", rationale, "rationale", rationale_weight)]


def render_for_model(tokenizer, prompt: str) -> str:
    """The prompt as the model expects it: through the chat template when the tokenizer has one
    (instruct models), else as plain text followed by a newline."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt as the model sees it. A chat template writes its own special tokens
    (BOS included), so the tokenizer adds none then; plain text gets the tokenizer's BOS."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(render_for_model(tokenizer, prompt), add_special_tokens=not templated)["input_ids"]


def encode_row(tokenizer, row: LMRow, max_length: int) -> dict[str, list[int]]:
    """input_ids and labels for one row: prompt tokens get label -100, completion tokens (and the
    EOS closing them) their own id. A too-long prompt is cut from the left, keeping the
    completion; a too-long completion is cut at the right."""
    if row.kind == "general":
        p_ids: list[int] = []
        c_ids = tokenizer(row.completion, add_special_tokens=False)["input_ids"]
        bos = tokenizer.bos_token_id
        if bos is not None:
            p_ids = [bos]
    else:
        p_ids = prompt_ids(tokenizer, row.prompt)
        c_ids = tokenizer(row.completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        c_ids = c_ids + [tokenizer.eos_token_id]
    c_ids = c_ids[:max_length - 1]
    p_ids = p_ids[-(max_length - len(c_ids)):] if len(p_ids) + len(c_ids) > max_length else p_ids
    return {"input_ids": p_ids + c_ids, "labels": [IGNORE] * len(p_ids) + list(c_ids),
            "prompt_len": len(p_ids)}


def collate(tokenizer, encoded: list[dict[str, Any]], rows: list[LMRow]) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels (B, T); row weights and KD flags (B,);
    for rows with API top-k data, topk_ids / topk_logprobs (B, T, K) aligned with the labels
    (position t holds the teacher's alternatives for the token at t; -1 where none)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    T = max(len(e["input_ids"]) for e in encoded)
    B = len(encoded)
    ids = torch.full((B, T), pad, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    for i, e in enumerate(encoded):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        attn[i, :n] = 1
    batch = {"input_ids": ids, "attention_mask": attn, "labels": labels,
             "weight": torch.tensor([r.weight for r in rows], dtype=torch.float32),
             "kd": torch.tensor([r.kind != "general" for r in rows])}
    if any(r.topk is not None for r in rows):
        K = max(len(a) for r in rows if r.topk for a in r.topk[0])
        tk_ids = torch.full((B, T, K), -1, dtype=torch.long)
        tk_lp = torch.zeros((B, T, K), dtype=torch.float32)
        has = torch.zeros(B, dtype=torch.bool)
        for i, (e, r) in enumerate(zip(encoded, rows)):
            if r.topk is None:
                continue
            start = e["prompt_len"]
            for j, (a_ids, a_lp) in enumerate(zip(*r.topk)):
                if start + j >= T:
                    break
                tk_ids[i, start + j, :len(a_ids)] = torch.tensor(a_ids)
                tk_lp[i, start + j, :len(a_lp)] = torch.tensor(a_lp)
            has[i] = True
        batch.update(topk_ids=tk_ids, topk_logprobs=tk_lp, has_topk=has)
    if encoded and all("t_hidden" in e for e in encoded):
        batch["teacher_hidden"] = torch.cat([e["t_hidden"] for e in encoded])
    if encoded and all("t_layers" in e for e in encoded):  # (pairs, B, T, H), zeros at the padding
        first = encoded[0]["t_layers"]
        t_layers = torch.zeros((first.shape[0], B, T, first.shape[2]), dtype=torch.float32)
        for i, e in enumerate(encoded):
            t_layers[:, i, :e["t_layers"].shape[1]] = e["t_layers"]
        batch["teacher_layers"] = t_layers
    return batch


def topk_from_token_logprobs(tokenizer, tokens: list[tuple[str, float, list[tuple[str, float]]]],
                             ) -> tuple[list[list[int]], list[list[float]]] | None:
    """An OpenAI-style logprobs record (per generated token: text, logprob, top alternatives) ->
    per-position top-k token ids and logprobs in the student's vocabulary. The student must share
    the teacher's tokenizer: None when a token text is not one token of the student's vocabulary
    (the row then trains on its text only). Duplicate ids keep the first (highest) logprob."""
    vocab = tokenizer.get_vocab()
    out_ids, out_lp = [], []
    for tok, lp, alts in tokens:
        ids: list[int] = []
        lps: list[float] = []
        for t, a_lp in (alts or [(tok, lp)]):
            tid = vocab.get(t)
            if tid is None:
                enc = tokenizer(t, add_special_tokens=False)["input_ids"]
                if len(enc) != 1:
                    return None
                tid = enc[0]
            if tid not in ids:
                ids.append(tid)
                lps.append(float(a_lp))
        out_ids.append(ids)
        out_lp.append(lps)
    return out_ids, out_lp


# ---------------------------------------------------------------------------------------------
# build, save, load, merge


def resolve_causal_path(name: str) -> str:
    """A local model directory (checked) or a hub id (transformers resolves it; offline it fails
    with transformers' own message). A GGUF file or packaged GGUF name (`smollm2-135m-instruct`)
    -> its plain transformers copy (students/model_source.py)."""
    from .model_source import resolve_source

    if (plain := resolve_source(name)) is not None:
        return plain
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise MissingOutput(f"{p}: not a Hugging Face model directory (no config.json)")
        return str(p.resolve())
    return name


def _dtype_for(precision: str):
    return torch.bfloat16 if precision == "bf16" else torch.float32


def build_causal_lm(model_name: str, method: str = "lora", r: int = 16, alpha: float = 32,
                    dropout: float = 0.05, target_modules: Any = "auto", num_virtual_tokens: int = 16,
                    quantize_4bit: bool = False, seed: int = 13, gradient_checkpointing: bool = False,
                    layers: Any = None):
    """(model, tokenizer): the base causal LM wrapped for `method` (lora | prefix | prompt | full).

    target_modules "auto": peft's default for known architectures (e.g. q_proj, v_proj for
    Llama), else every linear layer except the LM head ("all-linear"). quantize_4bit loads the
    frozen base in 4-bit NF4 (QLoRA) and needs CUDA and bitsandbytes. layers: keep these decoder layers
    (depth pruning, `prune.select_layers`: null, auto, a count or a list) before adapters wrap it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hf import quiet_transformers

    quiet_transformers()
    if method not in ("lora", "prefix", "prompt", "full"):
        raise PotstillError(f"student.lora.method {method!r}: one of lora, prefix, prompt, full")
    path = resolve_causal_path(model_name)
    kwargs: dict[str, Any] = {}
    if quantize_4bit:
        if not torch.cuda.is_available():
            raise RuntimeError("student.lora.quantize_4bit (QLoRA 4-bit loading) needs a CUDA GPU and "
                               "bitsandbytes; on this machine set student.lora.quantize_4bit=false")
        if method == "full":
            raise PotstillError("student.lora.quantize_4bit needs an adapter method: 4-bit weights do not train")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if layers is not None:
        from .prune import prune_decoder, select_layers

        keep = select_layers(layers, model.config.num_hidden_layers)
        if keep != list(range(model.config.num_hidden_layers)):
            prune_decoder(model, keep)
            model._potstill_layers = keep
    if quantize_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # so the recomputed graph reaches frozen-base adapters
    if not quantize_4bit and torch.cuda.is_available():
        model.to("cuda")  # 4-bit weights were placed by device_map already
    if method == "full":
        return model, tok
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    if method == "lora":
        targets = None if target_modules in ("auto", None) else target_modules
        if targets is None:
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known

            if model.config.model_type not in known:
                targets = "all-linear"
        cfg = LoraConfig(task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=dropout,
                         target_modules=targets)
    elif method == "prefix":
        cfg = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens)
    else:
        cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens)
    return get_peft_model(model, cfg), tok


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def save_causal_lm(model, tokenizer, out_dir: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Adapters only for peft models (adapter_config.json + adapter_model.safetensors), the whole
    model otherwise; the tokenizer and `potstill_student.json` beside them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {"adapter": is_peft(model), **(meta or {})}
    if is_peft(model):
        info.setdefault("base_model", model.peft_config["default"].base_model_name_or_path)
        info.setdefault("method", str(model.peft_config["default"].peft_type.value).lower())
    (out / STUDENT_META).write_text(json.dumps(info, indent=2))
    return out


def load_causal_lm(path: str | Path, merge: bool = False):
    """(model, tokenizer) from a directory `save_causal_lm` wrote (adapters or a whole model).
    merge=True folds LoRA adapters into the base weights (a plain transformers model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hf import quiet_transformers

    quiet_transformers()
    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        base_name = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(resolve_causal_path(base_name))
        model = PeftModel.from_pretrained(base, path)
        if merge:
            model = merge_adapters(model)
    elif (path / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(path)
    else:
        raise MissingOutput(f"{path}: no trained causal LM here (no adapter_config.json or config.json)")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok


def merge_adapters(model):
    """LoRA adapters folded into the base weights -> a plain transformers model. Prefix and
    prompt tuning add virtual tokens, not weight deltas, so they cannot be merged."""
    if not is_peft(model):
        return model
    kind = str(model.peft_config["default"].peft_type.value).lower()
    if kind != "lora":
        raise PotstillError(f"a {kind} adapter adds virtual tokens and cannot be merged into the weights; "
                         "export it with --format adapter")
    return model.merge_and_unload()


def count_trainable(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train, total


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class LMTrainConfig:
    objective: str = "sequence"  # sequence | logit_kd | rationale
    kd_loss: str = "forward_kl"
    temperature: float = 1.0
    jsd_beta: float = 0.5
    kd_weight: float = 1.0
    ce_weight: float = 0.1
    """logit_kd: weight of the sequence cross-entropy next to the KD term (other objectives: 1)."""
    epochs: float = 1
    max_steps: int | None = None
    """fixed: exactly this many steps when set (else `epochs` passes); adaptive: the cap."""
    schedule: str = "fixed"
    """fixed | adaptive (potstill/schedule.py). adaptive: `epochs` passes clamped to
    [min_steps, max_steps], the gold answers' NLL on the validation rows every `eval_every` steps,
    early stopping after `patience` validations without a new best, the best weights kept."""
    min_steps: int = 0
    patience: int | None = None
    eval_every: int | None = None
    decay: str = "linear"
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    seed: int = 13
    precision: str = "fp32"  # fp32 | bf16 | auto
    max_length: int = 256
    log_every: int = 10
    checkpoint_every: int = 200
    """With a checkpoint_dir: save a resumable checkpoint every N steps, at each epoch end and at
    the last step (students/lm_checkpoint.py)."""
    kd_chunk: int = 128
    """> 0: the loss at supervised positions only, this many positions at a time (causal_kd.py):
    no (B, T, V) logits for LoRA / full fine-tuning. 0: the full-logits path below."""
    hidden_weight: float = 0.0
    """logit_kd with a depth-pruned student: weight of hidden-state KD over `hidden_pairs`."""
    hidden_pairs: list[tuple[int, int]] | None = None
    """(student, teacher) hidden-state indices paired for hidden-state KD (prune.hidden_pairs)."""
    cache_teacher: bool = True
    """logit_kd with a local teacher, rows visited more than once: run the teacher once per row and
    keep its final hidden states at the answer positions, and under hidden-state KD its paired
    layers' states (causal_kd.cache_teacher_hidden)."""


def shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at t predict the token at t + 1: (B, T, V), (B, T) -> (B, T-1, V), targets (B, T-1),
    mask (B, T-1) of completion positions."""
    logits = logits[:, -labels.shape[1]:]  # prompt/prefix tuning prepend virtual positions
    tgt = labels[:, 1:]
    return logits[:, :-1], tgt, tgt != IGNORE


def weighted_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                weight: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy, (B, T, V) and (B, T) -> scalar: mean over masked tokens, each row's
    tokens weighted by weight (B,)."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets.clamp_min(0), reduction="none")  # (B, T)
    w = mask.float() * weight[:, None]
    return (ce * w).sum() / w.sum().clamp_min(1e-9)


def lm_loss(model, batch: dict[str, torch.Tensor], cfg: LMTrainConfig, teacher=None,
            vocab_size: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch for cfg.objective; returns (loss, parts for logging, detached tensors:
    read them only to log, each read is a host sync on a GPU)."""
    if cfg.kd_chunk > 0 and "topk_ids" not in batch:
        from .causal_kd import chunked_lm_loss, supports_chunked

        if supports_chunked(model) and (teacher is None or supports_chunked(teacher)):
            return chunked_lm_loss(model, batch, cfg, teacher, vocab_size)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    s_logits, tgt, mask = shifted(logits, batch["labels"])  # (B, T-1, V), (B, T-1), (B, T-1)
    ce = weighted_ce(s_logits, tgt, mask, batch["weight"])
    if cfg.objective != "logit_kd":
        return ce, {"ce": ce.detach()}
    kd_mask = mask & batch["kd"][:, None]  # general text trains on CE only
    kd = s_logits.new_zeros((), dtype=torch.float32)
    if teacher is not None:
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t_logits = t_logits[:, :-1]
        v = vocab_size or s_logits.shape[-1]  # ids past the tokenizer's size are padding rows
        kd = token_kd_loss(s_logits[..., :v], t_logits[..., :v], kd_mask, cfg.kd_loss,
                           cfg.temperature, cfg.jsd_beta)
    elif "topk_ids" in batch:
        m = kd_mask & batch["has_topk"][:, None]
        kd = topk_tail_kd(s_logits, batch["topk_ids"][:, 1:], batch["topk_logprobs"][:, 1:], m)
    loss = cfg.kd_weight * kd + cfg.ce_weight * ce
    return loss, {"ce": ce.detach(), "kd": kd.detach()}


def _autocast(precision: str, device: torch.device):
    import contextlib

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(precision: str) -> str:
    from .hf import pick_precision

    return "bf16" if pick_precision(precision) == "bf16" else "fp32"


@torch.no_grad()
def mean_nll(model, tokenizer, rows: Sequence[LMRow], max_length: int = 256, batch_size: int = 16,
             precision: str = "fp32") -> float:
    """Mean negative log-likelihood per supervised token of `rows` (general text: every token)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = n = 0.0
    for s in range(0, len(rows), batch_size):
        chunk = list(rows[s:s + batch_size])
        b = collate(tokenizer, [encode_row(tokenizer, r, max_length) for r in chunk], chunk)
        with _autocast(precision, device):
            logits = model(input_ids=b["input_ids"].to(device),
                           attention_mask=b["attention_mask"].to(device)).logits
        lg, tgt, mask = shifted(logits, b["labels"].to(device))
        ce = F.cross_entropy(lg.float().transpose(1, 2), tgt.clamp_min(0), reduction="none")
        total += float((ce * mask).sum())
        n += float(mask.sum())
    model.train(was_training)
    return total / max(n, 1.0)


def perplexity(model, tokenizer, texts: Sequence[str], max_length: int = 256,
               precision: str = "fp32", base: bool = False) -> float:
    """Perplexity of plain `texts`; base=True measures a peft model's base (adapters disabled)."""
    rows = [LMRow("", t, "general") for t in texts]
    if base and is_peft(model):
        with model.disable_adapter():
            return math.exp(mean_nll(model, tokenizer, rows, max_length, precision=precision))
    return math.exp(mean_nll(model, tokenizer, rows, max_length, precision=precision))


def mix_general(rows: list[LMRow], general_texts: Sequence[str], ratio: float, seed: int) -> list[LMRow]:
    """`rows` plus general-text rows so that they make `ratio` of the result (drawn without
    replacement while there are enough, then again from the start)."""
    if ratio <= 0 or not general_texts:
        return list(rows)
    n = round(len(rows) * ratio / (1 - ratio))
    rng = random.Random(seed)
    pool: list[str] = []
    while len(pool) < n:
        more = list(general_texts)
        rng.shuffle(more)
        pool += more
    return list(rows) + [LMRow("", t, "general") for t in pool[:n]]


def causal_schedule(n_rows: int, cfg: LMTrainConfig, has_validation: bool) -> Schedule:
    """The schedule `train_causal_lm` runs (potstill/schedule.py). fixed: `epochs` passes, or
    exactly `max_steps` when set; no validation during training. adaptive: as for encoders, with the
    validation rows' NLL as the score; without validation rows there is nothing to stop on, so the
    planned steps run and the last weights are kept."""
    if cfg.schedule == "fixed":
        plan = plan_schedule(n_rows, cfg.batch_size, mode="fixed", epochs=cfg.epochs,
                             warmup_ratio=cfg.warmup_ratio, decay=cfg.decay)  # type: ignore[arg-type]
        if cfg.max_steps:
            plan = dataclasses.replace(plan, total_steps=cfg.max_steps,
                                       warmup_steps=int(cfg.max_steps * cfg.warmup_ratio))
        return dataclasses.replace(plan, eval_every=-1)  # no validation during training
    plan = plan_schedule(n_rows, cfg.batch_size, mode="adaptive", epochs=cfg.epochs,
                         min_steps=cfg.min_steps, max_steps=cfg.max_steps, warmup_ratio=cfg.warmup_ratio,
                         decay=cfg.decay, eval_every=cfg.eval_every, patience=cfg.patience)  # type: ignore[arg-type]
    if not has_validation:
        plan = dataclasses.replace(plan, eval_every=-1, patience=None)
    return plan


def train_causal_lm(model, tokenizer, rows: list[LMRow], cfg: LMTrainConfig, teacher=None,
                    val_rows: Sequence[LMRow] = (), general_eval: Sequence[str] = (),
                    desc: str = "train", checkpoint_dir: Path | None = None,
                    fingerprint: str | None = None) -> dict[str, Any]:
    """Train `model` in place on `rows` (already mixed with general text) for cfg.objective.

    teacher: a causal LM sharing the tokenizer (logit_kd against full logits); rows with `topk`
    data train against the API teacher's top-k instead. Returns the history: losses, validation
    NLL, tokens/s, and the general-text perplexity of the base model and of the student.
    checkpoint_dir: resume from the checkpoint there when its fingerprint matches, and save one
    every cfg.checkpoint_every steps, at each epoch end and at the last step (the caller removes
    it once the model is saved); see students/lm_checkpoint.py.
    """
    from .hf import length_grouped_batches, peak_gpu_mib

    torch.manual_seed(cfg.seed)
    precision = resolve_precision(cfg.precision)
    device = next(model.parameters()).device
    peak_gpu_mib(device, reset=True)
    if cfg.objective == "logit_kd" and teacher is None and not any(r.topk for r in rows):
        raise PotstillError("logit_kd needs a local teacher causal LM (teacher.kind hf) or rows with the "
                         "API teacher's cached top-k logprobs")
    vocab_size = None
    if teacher is not None:
        vocab_size = check_shared_vocab(tokenizer, teacher_tokenizer=getattr(teacher, "_potstill_tok", None),
                                        student=model, teacher=teacher)
        teacher.eval().to(device)
        for p in teacher.parameters():
            p.requires_grad_(False)
    encoded = [encode_row(tokenizer, r, cfg.max_length) for r in rows]
    plan = causal_schedule(len(rows), cfg, bool(val_rows))
    total_steps = plan.total_steps
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=all(p.dtype.is_floating_point for p in params))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, plan.lr_factor)
    history: dict[str, Any] = {"objective": cfg.objective, "precision": precision, "steps": 0,
                               "losses": [], "rows": len(rows),
                               "general_rows": sum(r.kind == "general" for r in rows),
                               "schedule": plan.as_dict()}
    if plan.mode == "adaptive":
        log(f"{desc}: {plan.describe()}")
    if use_teacher_cache(model, teacher, rows, cfg, total_steps):
        from .causal_kd import cache_teacher_hidden

        layers = [t for _, t in cfg.hidden_pairs] if cfg.hidden_weight > 0 and cfg.hidden_pairs else []
        cached = cache_teacher_hidden(teacher, encoded, [r.kind != "general" for r in rows], cfg.batch_size,
                                      lambda enc: collate(tokenizer, enc, [LMRow("", "")] * len(enc)),
                                      lambda: _autocast(precision, device), device, f"{desc}: teacher pass",
                                      layers=layers)
        if cached is not None:
            for e, c in zip(encoded, cached):
                e.update(c)
            log(f"{desc}: the teacher's hidden states at {sum(len(c['t_hidden']) for c in cached)} answer "
                "positions" + (f", and at every position in {len(layers)} paired layers," if layers else "")
                + " cached: one teacher pass, not one per epoch")
    # adaptive: the gold answers' mean NLL on the validation rows, lower is better (the score is
    # its negative); the best weights are kept in memory (and in the checkpoint, for a resume)
    stopper = EarlyStopping(plan.patience)
    best: dict[str, torch.Tensor] | None = None
    track: dict[str, Any] = {"val": [], "best_step": None, "stopped_early": False}
    if general_eval:
        history["general_ppl_base"] = round(perplexity(model, tokenizer, general_eval, cfg.max_length,
                                                       precision, base=True), 4)
    model.train()
    step, tokens, t0 = 0, 0, time.perf_counter()
    lengths = [len(e["input_ids"]) for e in encoded]
    epoch = done_in_epoch = 0
    if checkpoint_dir is not None:
        saved = load_lm_checkpoint(checkpoint_dir, fingerprint, model, opt, sched)
        if saved is not None:
            step, epoch, done_in_epoch = saved["step"], saved["epoch"], saved["done_in_epoch"]
            tokens, t0 = saved["tokens"], t0 - saved["seconds"]
            history["losses"] = saved["losses"]
            track.update(saved.get("track") or {})
            stopper = EarlyStopping.load(plan.patience, saved.get("stopping"))
            best = load_best(checkpoint_dir) if track["best_step"] is not None else None
            log(f"{desc}: resuming from {checkpoint_dir} at step {step}/{total_steps}")

    def checkpoint(done: int) -> None:
        save_lm_checkpoint(checkpoint_dir, model, opt, sched, {
            "fingerprint": fingerprint, "step": step, "epoch": epoch, "done_in_epoch": done,
            "tokens": tokens, "seconds": time.perf_counter() - t0, "losses": history["losses"],
            "track": track, "stopping": stopper.state()})

    def validate() -> None:
        nonlocal best
        nll = mean_nll(model, tokenizer, val_rows, cfg.max_length, precision=precision)
        track["val"].append({"step": step, "val_nll": round(nll, 5)})
        new_best = stopper.update(-nll)
        log(f"{desc}: step {step}/{total_steps}  validation NLL {nll:.4f}" + ("  (best so far)" if new_best else ""))
        if new_best:
            track["best_step"] = step
            best = trainable_state(model)
            if checkpoint_dir is not None:
                save_best(checkpoint_dir, best)

    with progress(total_steps, desc) as bar:
        bar.advance(step)
        while step < total_steps and not track["stopped_early"]:
            batches = length_grouped_batches(lengths, cfg.batch_size, cfg.seed * 1000 + epoch)
            for k, idx in enumerate(batches):
                if step >= total_steps or track["stopped_early"]:
                    break
                if k < done_in_epoch:  # done before the resumed checkpoint
                    continue
                b = collate(tokenizer, [encoded[i] for i in idx], [rows[i] for i in idx])
                n_tokens = int(b["attention_mask"].sum())  # on the host: no GPU sync per step
                b = {k: v.to(device) for k, v in b.items()}
                with _autocast(precision, device):
                    loss, parts = lm_loss(model, b, cfg, teacher, vocab_size)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                tokens += n_tokens
                if step % cfg.log_every == 0 or step == total_steps:
                    history["losses"].append({"step": step, "loss": round(float(loss.detach()), 5),
                                              **{k: round(float(v), 5) for k, v in parts.items()}})
                    bar.set_postfix(f"loss {float(loss.detach()):.3f}")
                bar.advance()
                if plan.eval_every > 0 and plan.eval_due(step, False):
                    validate()
                    if stopper.should_stop:
                        track["stopped_early"] = True
                        log(f"{desc}: stopping early at step {step}: no gain in {stopper.bad} validations; "
                            f"best validation NLL {-stopper.best:.4f} at step {track['best_step']}")
                if checkpoint_dir is not None and (step % cfg.checkpoint_every == 0 or step == total_steps
                                                   or k == len(batches) - 1 or track["stopped_early"]):
                    checkpoint(k + 1)
            if not track["stopped_early"]:
                epoch += 1
                done_in_epoch = 0
    seconds = time.perf_counter() - t0
    history.update(steps=step, seconds=round(seconds, 2), tokens=tokens,
                   tokens_per_s=round(tokens / max(seconds, 1e-9), 1))
    if (peak := peak_gpu_mib(device)) is not None:
        history["peak_gpu_mib"] = peak  # CUDA only: weights, optimizer state, activations, teacher
    if plan.mode == "adaptive" and track["val"]:
        if best is not None and track["best_step"] != step:
            load_trainable(model, best)
            log(f"{desc}: kept the weights of step {track['best_step']} (best validation NLL "
                f"{-stopper.best:.4f}), not those of step {step}")
        history.update(val_history=track["val"], best_step=track["best_step"],
                       best_val_nll=round(-stopper.best, 5), stopped_early=track["stopped_early"])
    if val_rows:
        history["val_nll"] = round(mean_nll(model, tokenizer, val_rows, cfg.max_length, precision=precision), 5)
    if general_eval:
        ppl = perplexity(model, tokenizer, general_eval, cfg.max_length, precision)
        history["general_ppl_student"] = round(ppl, 4)
        history["general_ppl_ratio"] = round(ppl / history["general_ppl_base"], 4)
        if history["general_ppl_ratio"] > 1.1:
            log(f"{desc}: perplexity on held-out general text rose {history['general_ppl_ratio']:.2f}x "
                f"over the base model ({history['general_ppl_base']:.2f} -> {ppl:.2f}); raise "
                "train.general_ratio against forgetting")
    model.eval()
    return history


def use_teacher_cache(model, teacher, rows: Sequence[LMRow], cfg: LMTrainConfig, total_steps: int) -> bool:
    """Whether logit KD (and hidden-state KD with it) can read the teacher's cached hidden states
    (pure but for the model checks): a local teacher, the chunked loss, no API top-k rows, and rows
    visited more than once."""
    if not (cfg.cache_teacher and teacher is not None and cfg.objective == "logit_kd" and cfg.kd_chunk > 0):
        return False
    if any(r.topk is not None for r in rows):
        return False
    if total_steps * cfg.batch_size <= len(rows):
        return False
    from .causal_kd import supports_chunked

    return supports_chunked(model) and supports_chunked(teacher)


def check_shared_vocab(student_tokenizer, teacher_tokenizer=None, student=None, teacher=None) -> int:
    """The vocabulary size logit KD compares over; ValueError when student and teacher do not share
    a tokenizer. With both tokenizers the token -> id maps must be equal; without the teacher's,
    the models' output sizes must agree up to the tokenizer's size (rows past it are padding)."""
    n = len(student_tokenizer)
    if teacher_tokenizer is not None and student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise PotstillError(
            f"logit_kd needs the teacher and the student to share a tokenizer: the student's has "
            f"{len(student_tokenizer)} tokens, the teacher's {len(teacher_tokenizer)}, and their "
            "token ids differ; use train.objective=sequence (train on the teacher's text) instead")
    if student is not None and teacher is not None:
        sv = student.get_output_embeddings().weight.shape[0] if student.get_output_embeddings() is not None else n
        tv = teacher.get_output_embeddings().weight.shape[0]
        if sv < n or tv < n:
            raise PotstillError(
                f"logit_kd needs the teacher and the student to share a tokenizer: the tokenizer has {n} "
                f"tokens but the student's output layer has {sv} and the teacher's {tv}; use "
                "train.objective=sequence instead")
    return n


def load_teacher_lm(name: str, student_tokenizer, precision: str = "fp32"):
    """A local causal-LM teacher for logit_kd, checked to share the student's tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_causal_path(name)
    if Path(path, "adapter_config.json").exists():  # a potstill causal student (LoRA): merged
        model, tok = load_causal_lm(path, merge=True)
        check_shared_vocab(student_tokenizer, tok)
        model._potstill_tok = tok
        return model.to(_dtype_for(precision))
    arch = (AutoConfig.from_pretrained(path).architectures or [""])[0]
    if arch and not arch.endswith("ForCausalLM"):
        raise PotstillError(f"teacher {name} is a {arch}, not a causal LM: logit_kd needs a causal-LM "
                         "teacher (teacher.kind hf, teacher.model a causal LM)")
    tok = AutoTokenizer.from_pretrained(path)
    check_shared_vocab(student_tokenizer, tok)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype_for(precision))
    model._potstill_tok = tok
    return model


# ---------------------------------------------------------------------------------------------
# generation with logprobs


@dataclass
class Generation:
    text: str
    token_logprobs: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    """The generated tokens (EOS not included)."""

    @property
    def mean_logprob(self) -> float:
        return sum(self.token_logprobs) / len(self.token_logprobs) if self.token_logprobs else float("-inf")

    @property
    def min_logprob(self) -> float:
        return min(self.token_logprobs) if self.token_logprobs else float("-inf")


def sequence_logprob_stats(logprobs: Sequence[float]) -> dict[str, float]:
    """Mean and min token logprob of an answer: the router's confidence signals (pure)."""
    if not logprobs:
        return {"mean_logprob": float("-inf"), "min_logprob": float("-inf")}
    return {"mean_logprob": sum(logprobs) / len(logprobs), "min_logprob": min(logprobs)}


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 16,
             objective: str = "sequence", max_length: int = 256,
             answer_ids: Sequence[int] | None = None, json_keys: Sequence[str] | None = None
             ) -> list[Generation]:
    """Greedy answers for `prompts` with the logprob of every generated token (EOS included, as
    it ends the answer). Under the rationale objective the prompts are tagged "[label]" so the
    student answers without a rationale. With `answer_ids`, each answer is decoded over those
    ids and the tokens of its prompt only (output_vocab.py: `student.output_vocab`). With
    `json_keys`, each answer is one JSON object of string values under those keys, each at most
    once, closed within `max_new_tokens` (json_decoding.py: `json_decoding: schema`); its token
    logprobs are still the model's own, before the constraint, so a token the schema forced on
    the model lowers the answer's confidence as it would have freely."""
    from transformers import LogitsProcessorList

    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    out: list[Generation] = []
    for s in range(0, len(prompts), batch_size):
        enc = [prompt_ids(tokenizer, task_prompt(p, objective))[-(max_length - max_new_tokens):]
               for p in prompts[s:s + batch_size]]
        T = max(len(e) for e in enc)
        ids = torch.full((len(enc), T), pad, dtype=torch.long)
        attn = torch.zeros((len(enc), T), dtype=torch.long)
        for i, e in enumerate(enc):  # left padding: every row's next token is at the end
            ids[i, T - len(e):] = torch.tensor(e)
            attn[i, T - len(e):] = 1
        allowed = (None if answer_ids is None else
                   [set(answer_ids) | request_ids(tokenizer, p) for p in prompts[s:s + batch_size]])
        processors = LogitsProcessorList()
        if json_keys is not None:
            from .json_decoding import JsonDecoding, SchemaLogitsProcessor

            processors.append(SchemaLogitsProcessor(JsonDecoding.for_tokenizer(tokenizer, json_keys), T,
                                                    max_new_tokens))
        with restricted_output(model, allowed):
            res = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 output_scores=True, output_logits=bool(processors),
                                 return_dict_in_generate=True, pad_token_id=pad, eos_token_id=eos,
                                 logits_processor=processors)
        own = res.logits if processors else res.scores  # logits: before the processors
        new = res.sequences[:, -len(own):]  # (B, n)
        lps = torch.stack([F.log_softmax(sc.float(), -1) for sc in own], 1)  # (B, n, V)
        tok_lp = lps.gather(-1, new.unsqueeze(-1)).squeeze(-1)  # (B, n)
        for i in range(new.shape[0]):
            toks, lp = [], []
            for j in range(new.shape[1]):
                t = int(new[i, j])
                lp.append(float(tok_lp[i, j]))
                if t == eos:
                    break
                toks.append(t)
            out.append(Generation(tokenizer.decode(toks, skip_special_tokens=True).strip(), lp, toks))
    return out


def aligned_topk(tokenizer, completion: str, token_logprobs: Sequence[TokenLP] | None):
    """The API teacher's top-k for `completion` in the student's ids, or None unless the
    teacher's generated tokens are exactly the student's tokenization of `completion` (else the
    top-k would sit at the wrong positions). See `causal_lm.topk_from_token_logprobs`."""
    if not token_logprobs:
        return None
    vocab = tokenizer.get_vocab()
    gen: list[int] = []
    for t in token_logprobs:
        tid = vocab.get(t[0])
        if tid is None:
            enc = tokenizer(t[0], add_special_tokens=False)["input_ids"]
            if len(enc) != 1:
                return None
            tid = enc[0]
        gen.append(tid)
    if gen != tokenizer(completion, add_special_tokens=False)["input_ids"]:
        return None
    return topk_from_token_logprobs(tokenizer, token_logprobs)


# ---------------------------------------------------------------------------------------------
# the Student: stage hooks (train, evaluate)


CAUSAL_OBJECTIVES = {"distill": "sequence", "both": "both", "sequence": "sequence",
                     "logit_kd": "logit_kd", "rationale": "rationale", "gold": "gold"}


def record_target(rec: dict[str, Any]) -> str | None:
    """The text a kept record teaches (pure): its `output` (generate), else its parsed `label`
    (classify, extract), else the teacher's raw reply."""
    return rec.get("output") or rec.get("label") or rec.get("raw")


def read_general(path: Path) -> list[str]:
    """General text for mixing: .txt (one text per non-empty line) or JSONL/CSV/Parquet with a `text` column."""
    path = Path(path)
    if not path.exists():
        raise PotstillError(f"{path}: no such file (train.general_data)")
    if path.suffix == ".txt":
        return [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    if path.suffix in (".jsonl", ".json"):
        rows = read_jsonl(path)
    else:
        import pandas as pd

        rows = (pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)).to_dict("records")
    texts = [str(r["text"]).strip() for r in rows if r.get("text")]
    if not texts:
        raise PotstillError(f"{path}: no `text` values (train.general_data)")
    return texts


def split_general(texts: list[str], held_out_share: float = 0.1) -> tuple[list[str], list[str]]:
    """(train, held-out) general texts: the last share (at least one) is held out for perplexity."""
    n = max(1, round(len(texts) * held_out_share)) if len(texts) > 1 else 0
    return texts[:len(texts) - n], texts[len(texts) - n:]


@torch.no_grad()
def choose_layers(model, tokenizer, rows: Sequence[LMRow], keep: int, max_length: int = 256,
                  batch_size: int = 16, max_rows: int = 64) -> list[int]:
    """The `keep` decoder layers left when the contiguous block whose input and output hidden
    states are closest (mean angular distance over the tokens of up to `max_rows` of `rows`,
    prompt and answer) is dropped: prune.block_drop."""
    from .prune import block_drop

    n = model.config.num_hidden_layers
    drop = n - keep
    if drop <= 0:
        return list(range(n))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(keep, dtype=torch.float64)
    count = 0
    chosen = list(rows[:max_rows])
    for s in range(0, len(chosen), batch_size):
        chunk = chosen[s:s + batch_size]
        b = collate(tokenizer, [encode_row(tokenizer, r, max_length) for r in chunk], chunk)
        attn = b["attention_mask"].to(device)
        hs = model(input_ids=b["input_ids"].to(device), attention_mask=attn,
                   output_hidden_states=True).hidden_states  # hs[l]: the input of layer l
        mask = attn.bool()
        for start in range(keep):  # drop layers start .. start + drop - 1; the last is kept
            cos = F.cosine_similarity(hs[start][mask].float(), hs[start + drop][mask].float(), dim=-1)
            sums[start] += float(torch.arccos(cos.clamp(-1.0, 1.0)).sum() / math.pi)
        count += int(mask.sum())
    model.train(was_training)
    return block_drop((sums / max(count, 1)).tolist(), n, keep)


@torch.no_grad()
def choose_layers_greedy(model, tokenizer, rows: Sequence[LMRow], keep: int, max_length: int = 256,
                         max_rows: int = 16, rounds: int = 5, desc: str = "pruning") -> list[int]:
    """The `keep` decoder layers left after dropping, round by round, the layers whose removal
    raises the answers' NLL on up to `max_rows` of `rows` least (each round removes every
    remaining candidate alone and drops the best (n - keep) / rounds of them; the last layer is
    kept). The model is left whole."""
    from .prune import decoder_layers

    stack = decoder_layers(model)
    full = list(stack)
    n = len(full)
    if keep >= n:
        return list(range(n))
    from .causal_kd import chunked_lm_loss

    parent = next(m for m in model.modules() if any(c is stack for c in m.children()))
    name = next(k for k, v in parent.named_children() if v is stack)
    probe = list(rows[:max_rows])
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in
             collate(tokenizer, [encode_row(tokenizer, r, max_length) for r in probe], probe).items()}
    cfg = LMTrainConfig(objective="sequence")
    current = list(range(n))
    per_round = math.ceil((n - keep) / rounds)
    was_training = model.training
    model.eval()

    def nll(layers: list[int]) -> float:  # the answers' mean NLL, logits at their positions only
        setattr(parent, name, torch.nn.ModuleList([full[i] for i in layers]))
        return float(chunked_lm_loss(model, batch, cfg)[0])

    try:
        with progress(n - keep, desc) as bar:
            while len(current) > keep:
                scores = {i: nll([j for j in current if j != i]) for i in current[:-1]}
                drop = sorted(scores, key=scores.get)[:min(per_round, len(current) - keep)]
                current = [i for i in current if i not in drop]
                bar.advance(len(drop))
    finally:
        setattr(parent, name, stack)
        model.train(was_training)
    return current


def pruned_layers(init: str, layers, prune: str = "spread", rows: Sequence[LMRow] = (),
                  max_length: int = 256) -> list[int] | None:
    """The decoder layers a causal student keeps (`student.layers`, students/prune.py), or None
    when it keeps them all. With `layers` auto or a count, prune "block" drops the block chosen on
    `rows` with the `init` model (`choose_layers`), "greedy" the layers chosen round by round on
    them (`choose_layers_greedy`); a list is kept as given."""
    if layers is None:
        return None
    from transformers import AutoConfig

    n = AutoConfig.from_pretrained(init).num_hidden_layers
    keep = select_layers(layers, n)
    if prune in ("block", "greedy") and not isinstance(layers, list) and keep is not None and len(keep) < n and rows:
        model, tok = build_causal_lm(init, "full")
        choose = choose_layers if prune == "block" else choose_layers_greedy
        keep = choose(model, tok, rows, len(keep), max_length)
        del model
    return None if keep == list(range(n)) else keep


def run_pruned_layers(run: RunPaths, init_weights: str, init: str, layers, prune: str,
                      rows: Sequence[LMRow], max_length: int) -> list[int] | None:
    """`pruned_layers`, chosen once per run: the student and the baseline get the same cut, and
    a choice measured on the model (block, greedy) is read back from run/pruned_layers.json while
    the base weights, the spec's choice and the probe rows stay the same."""
    key = fingerprint(init_weights, layers, prune, [(r.prompt, r.completion) for r in rows], max_length)
    path = run.root / "pruned_layers.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    if key in saved:
        return saved[key]
    keep = pruned_layers(init, layers, prune, rows, max_length)
    if prune != "spread" and keep is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**saved, key: keep}, indent=2))
    return keep


def train_causal_student(spec: TaskSpec, run: RunPaths, inputs: Inputs,
                         mode: Literal["student", "baseline"] = "student", *,
                         records: Path | None = None, out: Path | None = None) -> dict[str, Any]:
    """Train the causal-LM student (or the gold-only baseline) into `out` (default: the run's
    student/ or baseline/) from the kept records in `records` (default: the run's filtered/)."""
    t, s = spec.train, spec.student
    objective = "gold" if mode == "baseline" else CAUSAL_OBJECTIVES[t.objective]
    out = out or run.model_dir(mode)
    records = records or run.filtered
    render = lambda text: spec.render_prompt(text, inputs.labels)  # noqa: E731
    parents: dict[str, str] = {"inputs": str(run.inputs)}
    teacher_identity = None
    rows: list[LMRow] = []
    missing = 0
    if objective == "gold":
        rows = [LMRow(render(ex.text), ex.gold) for ex in inputs.train if ex.gold is not None]
        data_hash = inputs.gold_hash
    else:
        kept_path = records / KEPT
        if not kept_path.exists():
            raise PotstillError(f"{kept_path}: no filtered records; run `potstill filter` first")
        kept = read_jsonl(kept_path)
        tok_for_topk = None
        # both: the gold answer where the input has one, over the teacher's; gold inputs the
        # filter dropped still teach (as for encoder students)
        gold = {ex.text: ex.gold for ex in inputs.train if ex.gold is not None} if objective == "both" else {}
        for rec in kept:
            target = gold.get(rec["text"]) or record_target(rec)
            if target is None:
                continue
            prompt = render(rec["text"])
            if objective == "rationale":
                split = ((rec["rationale"], target) if rec.get("rationale")
                         else split_rationale(rec.get("raw") or ""))
                if split is None:  # no rationale from the teacher: the answer task alone
                    missing += 1
                    rows.append(LMRow(task_prompt(prompt, "rationale"), target))
                else:
                    # a parsed label or an explicit output beats the split-off answer line
                    answer = target if rec.get("output") or rec.get("label") else split[1]
                    rows += rationale_rows(prompt, split[0], answer, t.rationale_weight)
                continue
            row = LMRow(prompt, target)
            if objective == "logit_kd" and spec.teacher.kind == "openai":
                if rec.get("token_logprobs"):
                    if tok_for_topk is None:
                        from transformers import AutoTokenizer


                        tok_for_topk = AutoTokenizer.from_pretrained(resolve_causal_path(s.model))
                    # None unless the teacher's tokens are the student's tokens of `target`
                    row.topk = aligned_topk(tok_for_topk, target, rec["token_logprobs"])
                if row.topk is None:
                    missing += 1
            rows.append(row)
        if gold:
            have = {r["text"] for r in kept}
            rows += [LMRow(render(text), answer) for text, answer in gold.items() if text not in have]
        if objective == "logit_kd" and spec.teacher.kind == "openai" and missing == len(rows):
            raise PotstillError(
                "train.objective logit_kd with an API teacher needs the teacher's top-k logprobs cached "
                f"with each record (`token_logprobs` in {kept_path}); none has them. Set "
                "teacher.logprobs=true and relabel, or use train.objective=sequence")
        data_hash = file_hash(kept_path)
        teacher_identity = read_manifest(records).get("teacher") if (records / "manifest.json").exists() else None
        parents["filtered"] = str(records)
    if not rows:
        raise PotstillError(f"no training rows for the {mode} ({objective}); check the filter report")
    if mode == "baseline":
        t = baseline_train(t, records / KEPT, [ex.text for ex in inputs.train if ex.gold is not None])
    if missing:
        log(f"{mode}: {missing} of {len(kept)} records had no {'rationale' if objective == 'rationale' else 'usable top-k logprobs'}"
            "; they train on the answer text alone")
    general_train: list[str] = []
    general_eval: list[str] = []
    if t.general_data is not None:
        general_train, general_eval = split_general(read_general(t.general_data))
        if t.general_ratio > 0:
            rows = mix_general(rows, general_train, t.general_ratio, t.seed)
    val_rows = [LMRow(task_prompt(render(ex.text), objective), ex.gold)
                for ex in inputs.validation if ex.gold is not None]
    lora = s.lora
    init = resolve_causal_path(s.model)
    init_weights = (file_hash(*sorted(Path(init).glob("*.safetensors")))
                    if Path(init).exists() and any(Path(init).glob("*.safetensors")) else init)
    fp = fingerprint(mode, objective, data_hash, s.identity(mode="json"),
                     t.identity(mode="json", exclude={"baseline"}), init_weights,
                     file_hash(t.general_data) if t.general_data else None)
    if up_to_date(out, fp, STUDENT_META, HISTORY):
        log(f"{mode}: up to date in {out}")
        return read_manifest(out)
    # depth pruning (students/prune.py), None: all layers. The layers to drop are chosen once per
    # run on the training inputs with their gold answers where there are some: the student and
    # the baseline get the same shape.
    probe = [LMRow(render(ex.text), ex.gold or "") for ex in inputs.train[:64]]
    keep = run_pruned_layers(run, init_weights, init, s.layers, s.prune, probe, s.max_length)
    if keep is not None:
        log(f"{mode}: keeps decoder layers {keep} of {init}")
    model, tok = build_causal_lm(s.model, lora.method, lora.r, lora.alpha, lora.dropout, lora.target_modules,
                                 lora.num_virtual_tokens, lora.quantize_4bit, seed=t.seed, layers=keep)
    teacher = None
    if objective == "logit_kd" and spec.teacher.kind != "openai":
        if spec.teacher.kind != "hf":
            raise PotstillError("train.objective logit_kd needs a causal-LM teacher: teacher.kind hf with "
                             "teacher.model a causal LM sharing the student's tokenizer, or teacher.kind "
                             "openai with cached top-k logprobs")
        teacher = load_teacher_lm(spec.teacher.model, tok)
    elif objective == "both" and spec.teacher.kind == "hf":
        # token KD from a local causal-LM teacher along the gold (else the teacher's) answers
        try:
            teacher = load_teacher_lm(spec.teacher.model, tok)
        except PotstillError as e:
            log(f"{mode}: both: no token KD ({e}); the answers train by cross-entropy alone")
    loss_objective = "logit_kd" if objective == "both" and teacher is not None else (
        "sequence" if objective in ("gold", "both") else objective)
    n_train, n_total = count_trainable(model)
    how = " (token KD along the gold answers)" if objective == "both" and teacher is not None else ""
    log(f"{mode}: {objective} objective{how}, {len(rows)} rows ({sum(r.kind == 'general' for r in rows)} general), "
        f"{lora.method}, {n_train / 1e6:.2f}M of {n_total / 1e6:.1f}M params train")
    cfg = LMTrainConfig(
        objective=loss_objective, kd_loss=t.kd_loss,
        temperature=t.temperature, jsd_beta=t.jsd_beta, kd_weight=t.kd_weight,
        ce_weight=t.ce_weight if loss_objective == "logit_kd" else 1.0, epochs=t.epochs,
        **{**schedule_fields(t), **({"max_steps": None} if t.schedule == "fixed" else {})},
        batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay, warmup_ratio=t.warmup_ratio,
        seed=t.seed, precision=t.precision, max_length=s.max_length, checkpoint_every=t.checkpoint_every,
        kd_chunk=t.kd_chunk, hidden_weight=t.hidden_weight,
        hidden_pairs=hidden_pairs(keep) if keep and teacher is not None else None)
    # a killed run resumes from out/checkpoints (same fingerprint: same data, spec and base weights)
    history = train_causal_lm(model, tok, rows, cfg, teacher, val_rows, general_eval, desc=mode,
                              checkpoint_dir=out / CHECKPOINTS, fingerprint=fp)
    if keep is not None and is_peft(model):
        # a pruned base exists nowhere else: the student is saved whole (adapters merged)
        model = merge_adapters(model)
    save_causal_lm(model, tok, out, meta={"base_model": init, "method": lora.method,
                                          "objective": objective, "kind": spec.kind,
                                          # what `student.output_vocab: answers+input` decodes over
                                          META_KEY: answer_ids(tok, [r.completion for r in rows
                                                                     if r.kind != "general"]),
                                          **({"layers": keep} if keep is not None else {})})
    import shutil

    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # the model is saved: nothing to resume
    (out / HISTORY).write_text(json.dumps(history, indent=2))
    return write_manifest(out, mode, spec, fingerprint=fp, objective=objective, init_from=init,
                          teacher=teacher_identity, dataset_hash=inputs.dataset_hash,
                          train_data_hash=data_hash, parents=parents, params=n_total,
                          trainable_params=n_train, method=lora.method, metrics=history,
                          **({"layers": keep} if keep is not None else {}))


def generation_timer(model, tok, max_new_tokens: int, max_length: int, objective: str = "sequence",
                     samples: int = 8, render: Callable[[str], str] = str,
                     answer_ids: Sequence[int] | None = None, json_keys: Sequence[str] | None = None) -> Timer:
    """One answer at a time (batch 1, greedy, to EOS or max_new_tokens) from the prompt `render`
    makes of an input; its rate is generated tokens per second at batch 1."""
    return Timer(lambda text: generate(model, tok, [render(text)], max_new_tokens, 1, objective, max_length,
                                       answer_ids, json_keys)[0],
                 samples, warmup=1, units=lambda g: len(g.token_logprobs), rate_key="gen_tokens_per_s_b1")


def time_generation(model, tok, prompts: Sequence[str], max_new_tokens: int, max_length: int,
                    objective: str = "sequence", n: int = 8) -> dict[str, Any]:
    """One model alone: latency of single answers over `n` of the prompts (p50 / p95 ms), and
    generated tokens per second at batch 1."""
    return time_alone(generation_timer(model, tok, max_new_tokens, max_length, objective, n), list(prompts))


def _student_answers(path, texts: list[str], spec: TaskSpec, render: Callable[[str], str]
                     ) -> tuple[list[Any], dict[str, Any], Timer]:
    """The answers to the prompts `render` makes of `texts` (batched), the report row's figures,
    and the batch-1 timer."""
    prompts = [render(t) for t in texts]
    meta = json.loads((path / STUDENT_META).read_text())
    ids = decode_ids(meta, spec.student.output_vocab, path)
    model, tok = load_causal_lm(path)
    t0 = time.perf_counter()
    gens = generate(model, tok, prompts, spec.student.max_new_tokens, spec.eval.batch_size,
                    objective=meta.get("objective", "sequence"), max_length=spec.student.max_length,
                    answer_ids=ids, json_keys=spec.json_keys())
    elapsed = time.perf_counter() - t0
    _, total = count_trainable(model)
    return gens, {"params": total, "adapter_size_mb": dir_size_mb(path), "method": meta.get("method"),
                  "layers": getattr(model.config, "num_hidden_layers", None),
                  "answers_per_s": round(len(prompts) / max(elapsed, 1e-9), 2),
                  "gen_tokens_per_s": round(sum(len(g.token_logprobs) for g in gens) / max(elapsed, 1e-9), 1)
                  }, generation_timer(model, tok, spec.student.max_new_tokens, spec.student.max_length,
                                      meta.get("objective", "sequence"), spec.eval.latency_samples_generate,
                                      render, ids, spec.json_keys())


class CausalLMStudent:
    """A causal LM (LoRA / prefix / prompt tuning or full; `student.kind: causal_lm`). It answers
    by generating text, which the task reads (`Task.from_text`)."""

    kind = "causal_lm"

    def fit_teacher(self, spec: TaskSpec, run: RunPaths, inputs: Inputs) -> dict[str, Any]:
        raise PotstillError("teacher.kind 'fit' fits an encoder teacher for the task; a causal-LM "
                            "teacher is teacher.kind hf (a local causal LM) or openai")

    def train(self, spec: TaskSpec, run: RunPaths, inputs: Inputs, mode: Literal["student", "baseline"] = "student",
              *, records: Path | None = None, out: Path | None = None) -> dict[str, Any]:
        return train_causal_student(spec, run, inputs, mode, records=records, out=out)

    def trained(self, path: Path) -> bool:
        return Path(path).exists() and any((Path(path) / f).exists()
                                           for f in ("adapter_config.json", "config.json"))

    def evaluate(self, spec: TaskSpec, task: Any, path: Path, texts: list[str], labels: list[str],
                 name: str) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        gens, info, timer = _student_answers(Path(path), texts, spec, lambda t: spec.render_prompt(t, labels))
        metrics = read_manifest(path).get("metrics", {})
        info.update({"general_ppl_base": metrics.get("general_ppl_base"),
                     "general_ppl_student": metrics.get("general_ppl_student")})
        preds = [task.from_text(g.text, spec, labels) for g in gens]
        conf = [{"mean_logprob": round(g.mean_logprob, 5), "min_logprob": round(g.min_logprob, 5)} for g in gens]
        return preds, info, {"confidence": conf, "texts": [g.text for g in gens], "timer": timer}


STUDENT: Student = CausalLMStudent()
