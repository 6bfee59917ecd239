"""TaskSpec: what the job is, and everything a run needs to do it.

The spec is one typed object. A YAML or TOML file fills it in, `--set a.b=x` overrides fill in
more (see `config.py`), and the resolved spec is saved beside every artifact. Unknown fields are
errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

DEFAULT_ENCODER = "minilm"  # resolved by students.classifier.resolve_model_path to the packaged MiniLM-L6

DEFAULT_INSTRUCTION = "Classify the text into exactly one of the labels."
DEFAULT_TEMPLATE = (
    "{instruction}\n\nLabels: {labels}\n\nText: {text}\n\n"
    'Answer with the label only, or as JSON {{"label": "..."}}.'
)

EXTRACT_INSTRUCTION = (
    "Extract the fields described by the JSON schema from the text. Copy each value exactly as it "
    "is written in the text; leave out fields the text does not mention."
)
EXTRACT_TEMPLATE = (
    "{instruction}\n\nJSON schema: {schema}\n\nText: {text}\n\n"
    "Answer with one JSON object only."
)
CAUSAL_TEMPLATES = {
    # kind -> the default prompt when the student is a causal LM: one answer format only (a small
    # model follows "the label only, or as JSON" literally and writes "This is a JSON")
    "classify": "{instruction}\n\nLabels: {labels}\n\nText: {text}\n\nAnswer with the label only.",
    "generate": "{instruction}\n\n{text}",
}
CAUSAL_INSTRUCTIONS = {"generate": "Answer the request below."}
CAUSAL_TRAIN = {"epochs": 2, "batch_size": 8, "min_steps": 0, "max_steps": 2000}
"""Schedule defaults of a causal-LM student (train fields the spec leaves unset): the encoder's
(4 epochs of batch 32) give a causal LM a few dozen large steps on a few hundred rows, and the
encoder's floor of 500 steps would take most of an hour on a CPU at a few hundred tokens/s. The
adaptive schedule (validation NLL of the gold answers, early stopping, best weights kept) applies
as for encoders; see docs/RESULTS.md, "Adaptive schedules for causal students"."""
CAUSAL_LR = {"lora": 3e-3, "prefix": 1e-2, "prompt": 1e-2, "full": 5e-5}
"""Learning rate by `student.lora.method` when train.lr is unset. lora: measured on SmolLM2-135M
with the default targets (docs/RESULTS.md, SMS spam: 1e-4 still answered prose after 12 steps,
3e-3 reached macro-F1 0.78 in 24); full: the usual SFT rate of a ~100M model, prefix / prompt:
peft's usual range — those two not measured here."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    def identity(self, exclude: set[str] | None = None, **dump: Any) -> dict[str, Any]:
        """The fields a fingerprint of finished work covers (model_dump less `exclude`), with an
        option added later left out while it is off, so work done before it existed stays up to
        date (freeze_embeddings, intermediate_size)."""
        off = {k for k, v in _ADDED_OFF.items() if k in type(self).model_fields and getattr(self, k) == v}
        return self.model_dump(exclude=(exclude or set()) | off, **dump)


_ADDED_OFF: dict[str, Any] = {"freeze_embeddings": False, "intermediate_size": None}
"""Options added after work was fingerprinted, and the value that leaves them off."""


class DataSpec(_Strict):
    """Where inputs come from. Paths are relative to the spec file."""

    train: Path
    validation: Path | None = None
    test: Path | None = None
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    text_field: str = "text"
    label_field: str = "label"
    dedup: bool = True
    validation_share: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of gold-labelled training rows held out as validation when `validation` is not given."""
    max_train: int | None = Field(None, ge=1)
    """Use at most this many training inputs (a fixed, seeded subset) — for quick tries."""
    max_test: int | None = Field(None, ge=1)
    unlabelled: list[Path] = Field(default_factory=list)
    """More training inputs without gold (production logs, `potstill synth` output), in the
    train file's format: the teacher labels them; the gold-only baseline cannot use them (it
    trains as many steps as the student). examples/snips-extract: 8,996 of them took its student
    from 0.938 to 0.982 of the teacher (docs/RESULTS.md)."""
    augment: int = Field(0, ge=0, le=10)
    """Perturbed copies of each training input for the teacher to label (unlabelled inputs the
    gold-only baseline cannot use). Each costs a teacher call. Where the student trails the
    teacher, 2 helped in docs/RESULTS.md (held-out fortune topics: 0.921 -> 0.951 of the teacher)."""


class FitSpec(_Strict):
    """`teacher.kind: fit` — fine-tune a local encoder on the gold labels to make the teacher."""

    model: str = DEFAULT_ENCODER
    epochs: float = Field(3, gt=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-4, gt=0)
    head_lr_scale: float = Field(10.0, gt=0)
    """As train.head_lr_scale: the teacher's new head learns at lr times this."""
    freeze_embeddings: bool = False
    """As train.freeze_embeddings, for the teacher's fit. For MiniLM-L6 a step was only 4% faster
    (docs/RESULTS.md)."""
    max_length: int = Field(64, ge=8)
    schedule: Literal["adaptive", "fixed"] = "adaptive"
    """As train.schedule: adaptive takes the length from the data and stops on validation."""
    min_steps: int = Field(500, ge=0)
    """adaptive: at least this many optimizer steps, whatever the data size."""
    max_steps: int | None = Field(5000, ge=1)
    """adaptive: at most this many optimizer steps; null: no cap."""
    patience: int | None = Field(3, ge=1)
    """adaptive: stop after this many validations in a row without a new best; null: never."""
    eval_every: int | None = Field(None, ge=1)
    """adaptive: validate every N optimizer steps; null: about 8 times per run."""


class TeacherSpec(_Strict):
    kind: Literal["fit", "hf", "openai"] = "fit"
    model: str | None = None
    """hf: a hub id or a local model directory; openai: the model name sent to the endpoint."""
    fit: FitSpec = FitSpec()
    # openai-compatible endpoints
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key. Unset: an error naming it, except for
    an endpoint on this machine (127.0.0.1, localhost); null: the endpoint needs no key."""
    price_in: float = Field(0.0, ge=0)
    """Dollars per million input tokens."""
    price_out: float = Field(0.0, ge=0)
    """Dollars per million output tokens."""
    concurrency: int = Field(16, ge=1, le=1024)
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(30.0, gt=0)
    max_spend_usd: float | None = Field(None, ge=0)
    """Stop labelling (keeping what is done) once recorded spend reaches this."""
    temperature: float = Field(0.0, ge=0)
    logprobs: bool = True
    top_logprobs: int = Field(20, ge=0, le=20)
    samples: int = Field(1, ge=1)
    """n > 1 samples per input; their votes become the soft label (self-consistency)."""
    max_tokens: int = Field(32, ge=1)
    batch: bool = False
    """kind openai: label through the OpenAI Batch API (teachers/openai_batch.py): one upload, one
    batch, results within the batch's completion window, at the batch price. The batch id is saved
    in the run directory, so a rerun after a kill polls it rather than paying again. Serving
    always asks the real-time endpoint."""
    batch_discount: float = Field(0.5, ge=0, lt=1)
    """Share of the list price the batch tier takes off (OpenAI: 50%); see cost.BATCH_DISCOUNT."""
    batch_min_inputs: int = Field(1, ge=1)
    """Fewer uncached inputs than this go to the real-time endpoint instead (no wait for a batch)."""
    batch_poll_s: float = Field(5.0, gt=0)
    """First wait between polls of a batch; each wait is 1.5x the last, up to batch_poll_max_s."""
    batch_poll_max_s: float = Field(60.0, gt=0)
    batch_timeout_s: float = Field(26 * 3600.0, gt=0)
    """Give up polling after this long (the batch keeps running; a rerun picks it up again)."""
    # local models
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(128, ge=8)
    over_http: bool = False
    """kind fit or hf: label through a potstill server. `potstill label` starts `potstill serve RUN
    --model teacher --no-routing` on 127.0.0.1 and asks it with the openai backend (logprobs,
    concurrency, retries), as it would ask any OpenAI-compatible endpoint; evaluation still runs
    the teacher in-process, to time the model itself."""

    @model_validator(mode="after")
    def _needs_model(self) -> "TeacherSpec":
        if self.over_http and self.kind == "openai":
            raise ValueError("teacher.over_http serves a local teacher (kind fit or hf); an openai "
                             "teacher is already asked over HTTP")
        if self.kind in ("hf", "openai") and not self.model:
            raise ValueError(f"teacher.model is required when teacher.kind is {self.kind!r}")
        if self.batch and self.kind != "openai":
            raise ValueError("teacher.batch labels through the OpenAI Batch API: it needs "
                             f"teacher.kind 'openai', not {self.kind!r}")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("teacher.samples > 1 needs teacher.temperature > 0: at temperature 0 "
                             "every sample votes the same")
        return self


class FilterSpec(_Strict):
    """Declarative record filters. Every dropped record keeps the reason it was dropped."""

    min_confidence: float = Field(0.0, ge=0, le=1)
    """Drop records whose teacher confidence (top probability) is below this."""
    min_votes: int = Field(1, ge=1)
    """Self-consistency: with teacher.samples = n, keep only labels that at least k of n votes chose."""
    drop_gold_disagreement: bool = True
    """Where gold exists and the teacher disagrees with it, drop the record."""
    dedup: bool = True
    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, ge=1)


class LoraSpec(_Strict):
    """`student.kind: causal_lm` — how the causal LM is adapted (see students/causal_lm.py)."""

    method: Literal["lora", "prefix", "prompt", "full"] = "lora"
    """lora: low-rank adapters (peft); prefix / prompt: peft prefix or prompt tuning (virtual
    tokens); full: every weight trains."""
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str | None = "auto"
    """auto: peft's default for the architecture, else every linear layer but the LM head."""
    num_virtual_tokens: int = Field(16, ge=1)
    """prefix / prompt tuning: virtual tokens prepended."""
    quantize_4bit: bool = False
    """QLoRA: load the frozen base in 4-bit NF4 (bitsandbytes); needs CUDA."""


class StudentSpec(_Strict):
    kind: Literal["classifier", "causal_lm", "tagger"] = "classifier"
    model: str = DEFAULT_ENCODER
    """Any Hugging Face encoder: a hub id or a local path; `minilm` is the packaged MiniLM-L6."""
    layers: list[int] | int | Literal["auto"] | None = Field(default_factory=lambda: [0, 5])
    """Transformer layers kept (DistilBERT-style); null keeps all. Causal-LM students (depth
    pruning, students/prune.py): unset or null keeps all; `auto` about a third; an integer k that
    many (which ones: `prune`); or a list of layer indices."""
    intermediate_size: int | None = Field(None, ge=1)
    """Encoder students: keep this many of each kept layer's feed-forward neurons (MiniLM has
    1,536), those most active on the training inputs, before training (width pruning,
    students/width.py); null keeps all. The gold-only baseline is narrowed the same way from its
    own init. At batch 1 a layer's time is mostly reading its weights, two thirds of them
    feed-forward: MiniLM's 2-layer cut at 768 answered 3.4x faster than the 6-layer teacher
    instead of 2.5x on CLINC150, at the same accuracy within noise (docs/RESULTS.md)."""
    prune: Literal["block", "greedy", "spread"] = "block"
    """Causal-LM students with `layers` auto or a count: block drops the contiguous block of
    layers that changes the hidden state least on the training rows (Gromov et al., 2024; the
    last layer kept); greedy drops, in 5 rounds, the layers whose removal raises the gold answers'
    NLL least on 16 training rows (minutes on a CPU; chosen once per run); spread keeps layers
    evenly spread, first and last included. Measured on SmolLM2-135M, 10 of 30 layers:
    docs/RESULTS.md."""
    init: Literal["auto", "base", "teacher"] = "auto"
    """auto: from the teacher when it is a local encoder of the same family, else from `model`."""
    max_length: int = Field(64, ge=8)
    lora: LoraSpec = LoraSpec()
    """causal_lm only (`init` is for encoders)."""
    max_new_tokens: int = Field(32, ge=1)
    """causal_lm: most tokens generated per answer."""
    output_vocab: Literal["full", "answers+input"] = "full"
    """causal_lm: which tokens an answer may be written in. full: the whole vocabulary.
    answers+input: the tokens of the answers the student trained on (kept beside its weights) and
    of the request, the only rows of the output layer scored at each step (students/output_vocab.py).
    For answers copied from the request (extraction, labels), not for free text. On snips-json
    (10 of SmolLM2's 30 layers) a generated token costs 24 ms instead of 36 at batch 1, and field F1
    on 597 held-out rows moves by -0.05 point (paired interval -0.3 to +0.2; docs/RESULTS.md)."""


class TrainSpec(_Strict):
    objective: Literal["distill", "gold", "both", "sequence", "logit_kd", "rationale"] = "distill"
    """distill: teacher labels only; gold: gold labels only (the fine-tuning baseline); both: the
    gold label where an input has one, the teacher's elsewhere, with the teacher's soft labels
    (causal-LM students: token KD along those answers from a local causal-LM teacher that shares
    the tokenizer, else cross-entropy on them).
    Causal-LM students: sequence (train on the teacher's kept outputs; `distill` means this too),
    logit_kd (token KD against a local teacher's logits or an API teacher's top-k logprobs),
    rationale (the teacher's rationale and answer as two tagged tasks, Distilling step-by-step)."""
    kd_loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    """logit_kd against full logits: which divergence (top-k logprobs always use forward KL)."""
    jsd_beta: float = Field(0.5, gt=0, lt=1)
    general_data: Path | None = None
    """Causal LM: general text (JSONL with `text`, or .txt lines) mixed into training against
    forgetting, relative to the spec folder; its held-out tail measures perplexity vs the base."""
    general_ratio: float = Field(0.0, ge=0, lt=1)
    """Share of training rows drawn from general_data."""
    kd_chunk: int = Field(128, ge=0)
    """Causal LM: positions per chunk of the loss at supervised positions (no (B, T, V) logits);
    0 computes full logits."""
    rationale_weight: float = Field(1.0, ge=0)
    """rationale: weight of the [rationale] task against the [label] task."""
    temperature: float = Field(2.0, gt=0)
    kd_weight: float = Field(1.0, ge=0)
    """Weight of the KL term (scaled by T^2) against the teacher's soft labels."""
    ce_weight: float = Field(0.1, ge=0)
    """Weight of cross-entropy on hard labels (the teacher's label, or gold in `gold` mode)."""
    epochs: float = Field(4, gt=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-4, gt=0)
    head_lr_scale: float = Field(10.0, gt=0)
    """Encoder students and teachers: the head (classifier layer and BERT's pooler) learns at lr
    times this. A new head starts from random weights while the body is pretrained; at the body's
    learning rate it learns slowly (bench/fit_recipe.py: MiniLM-L6 on 4,500 CLINC150 rows, 300
    steps: 0.58 validation accuracy at 1, 0.87 at 10). A student cut from a fitted teacher keeps
    the teacher's trained head, which learns at lr. 1 turns it off."""
    freeze_embeddings: bool = False
    """Encoder students and the gold-only baseline (classifier and tagger): keep the input word
    embeddings as they start (no gradient, no optimizer state). They are three quarters of a
    2-layer MiniLM cut's parameters, so on a CPU its training step is 1.4x faster. Off by default:
    on held-out data (fortune topics) the student lost 0.6 point with it, within noise but not
    nothing (docs/RESULTS.md). teacher.fit has its own switch."""
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    seed: int = 13
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast where the device supports it (it trains faster on recent CPUs too)."""
    checkpoint_every: int = Field(200, ge=1)
    """Save a resumable checkpoint every N optimizer steps (and at each epoch end)."""
    schedule: Literal["adaptive", "fixed"] = "adaptive"
    """fixed: `epochs` passes, validation per epoch, no early stopping. adaptive: `epochs` passes
    clamped to [min_steps, max_steps] optimizer steps (small data gets more passes), validation
    every `eval_every` steps, early stopping after `patience` validations without a new best; the
    best checkpoint is kept either way (potstill/schedule.py)."""
    min_steps: int = Field(500, ge=0)
    """adaptive: at least this many optimizer steps, whatever the data size."""
    max_steps: int | None = Field(5000, ge=1)
    """adaptive: at most this many optimizer steps; null: no cap."""
    patience: int | None = Field(3, ge=1)
    """adaptive: stop after this many validations in a row without a new best; null: never."""
    eval_every: int | None = Field(None, ge=1)
    """adaptive: validate every N optimizer steps; null: about 8 times per run."""
    decay: Literal["linear", "cosine"] = "linear"
    """Learning-rate decay after warm-up."""
    hidden_weight: float = Field(0.0, ge=0)
    """Weight of hidden-state distillation from a local teacher; 0 turns it off. Encoder students
    (teacher.kind fit or hf): TinyBERT-style MSE between student layer i and the teacher layer
    student.layers[i] it was cut from, embeddings too (losses.hidden_state_loss). A depth-pruned
    causal student under logit_kd: each kept block against the teacher block it was initialised
    from (losses.hidden_state_kd). An encoder student runs the teacher on every training batch; a
    causal student that visits its rows more than once reads the paired teacher states from a
    cache filled in one teacher pass (bfloat16, up to 4 GiB with the final states). Ignored for
    API teachers and for the gold-only baseline."""
    baseline: bool = True
    """`potstill run` also trains the same student on gold only, as the baseline."""


class EvalSpec(_Strict):
    latency_samples: int = Field(200, ge=1)
    latency_samples_generate: int = Field(8, ge=1)
    """Causal LMs: single answers timed at batch 1 (each is a whole greedy generation)."""
    batch_size: int = Field(64, ge=1)
    runtimes: list[Literal["onnx", "onnx_int8"]] = Field(default_factory=list)
    """Encoder classifier students: also evaluate the student on ONNX Runtime (fp32, and dynamic
    int8), each as its own row of the report (`student_onnx`, `student_onnx_int8`): what the
    fast runtime costs in accuracy and buys in latency (onnx_eval.py; needs the onnx extra)."""
    threads: int | None = Field(1, ge=1)
    """Torch threads for evaluation and timing. 1 (the default) gives per-core figures that other
    load on the machine disturbs least (torch's threads spin-wait when a core is taken);
    null leaves torch's default."""


class ServeSpec(_Strict):
    """Serving with routing (`potstill calibrate`, `potstill serve`): the student answers; doubtful,
    out-of-distribution and high-stakes inputs go to the teacher; see potstill/serve/."""

    host: str = "127.0.0.1"
    """Bind address. Anything other than a loopback address exposes the server: set API keys."""
    port: int = Field(8000, ge=0, le=65535)
    model_name: str | None = None
    """The `model` clients must send; null: the task name."""
    api_keys_env: str = "POTSTILL_API_KEYS"
    """Environment variable holding the accepted bearer keys, comma-separated. Unset or empty: no
    auth (fine on 127.0.0.1). The keys are read at start-up and never logged."""
    max_body_bytes: int = Field(1_000_000, ge=1024)
    admin_keys_env: str = "POTSTILL_ADMIN_KEYS"
    """Environment variable holding the admin bearer keys, comma-separated: only these may load or
    unload adapters and post feedback (which trains the next round). With none set, admin
    endpoints refuse, unless the server binds to loopback and was started with
    `--allow-local-admin` (README: Security model). Admin keys may also call the model."""
    max_adapters: int = Field(8, ge=0)
    """Most LoRA adapters loaded at runtime (POST /v1/adapters) on top of those given at start."""
    max_feedback_per_request: int = Field(3, ge=1)
    """Most feedback items one request id may collect (a repeated answer is not a new item)."""
    teacher_breaker_failures: int = Field(5, ge=1)
    """Consecutive teacher failures that open the circuit breaker (serve/breaker.py): while it is
    open, escalations are answered degraded at once."""
    teacher_breaker_cooldown_s: float = Field(10.0, gt=0)
    """How long the breaker stays open before one trial call is let through (half-open)."""
    max_input_chars: int = Field(4000, ge=1)
    max_batch_inputs: int = Field(256, ge=1)
    """Most inputs in one POST /v1/classify."""
    max_messages: int = Field(1024, ge=1)
    """Most messages in one chat completion (only the last user message is classified)."""

    # -- routing ---------------------------------------------------------------------------------
    teacher_share: float = Field(0.10, ge=0.0, le=1.0)
    """Calibration target: expected share of (in-scope) traffic sent to the teacher."""
    target_accuracy: float | None = Field(None, gt=0.0, le=1.0)
    """Calibration target instead: the smallest teacher share whose hybrid accuracy reaches this."""
    confidence_score: Literal["max_prob", "margin", "entropy"] = "max_prob"
    """Which calibrated confidence the router thresholds (entropy as 1 - H / log C)."""
    logprob_confidence: Literal["min", "mean"] = "min"
    """Causal-LM students: confidence from the answer's token logprobs, exp(min) (the least sure
    token) or exp(mean) (geometric mean of the token probabilities); see serve/causal.py."""
    ood_method: Literal["mahalanobis", "knn", "none"] = "mahalanobis"
    """Out-of-distribution score of the student's embedding against the training inputs:
    Mahalanobis distance to the nearest class mean (tied covariance), or cosine distance to the
    k-th nearest training input."""
    embedding: Literal["cls", "mean"] = "cls"
    """Student embedding for the OOD score: the last layer's first token, or its masked mean."""
    knn_k: int = Field(10, ge=1)
    ood_fit_max: int = Field(20000, ge=10)
    """At most this many training inputs (a seeded subset) feed the OOD statistics."""
    oos_weight: float = Field(1.0, ge=0.0)
    """Threshold search objective: one out-of-scope validation row caught counts this many
    in-scope rows answered right."""
    ood_validation: Path | None = None
    """Out-of-scope validation inputs (JSONL/CSV/Parquet, only the text is used), relative to the
    spec folder; calibration then also reports and optimises the share of them caught."""
    ood_test: Path | None = None
    """Out-of-scope test inputs, for reporting only."""
    confidence_threshold: float | None = None
    """Set by hand: escalate when the confidence score is below this (overrides calibration)."""
    ood_threshold: float | None = None
    """Set by hand: escalate when the OOD score is above this (overrides calibration)."""
    high_stakes: list[str] = Field(default_factory=list)
    """Labels that always go to the teacher when the student answers them."""
    high_stakes_prob: float = Field(1.0, ge=0.0, le=1.0)
    """Also escalate when any high-stakes label has at least this calibrated probability
    (1.0: only when the student's answer is high-stakes)."""
    shadow_share: float = Field(0.0, ge=0.0, le=1.0)
    """Share of student-served answers also sent to the teacher in the background; the
    disagreements are queued."""
    shadow_max_pending: int = Field(256, ge=1)
    """Shadow checks waiting for the teacher beyond this are skipped (counted in /metrics)."""
    teacher_timeout_s: float = Field(10.0, gt=0)
    """How long a request waits for the teacher before the student's answer goes out, degraded.
    (teacher.max_spend_usd also caps what one server process spends on the teacher: past it,
    escalations are answered degraded.)"""
    teacher_workers: int = Field(4, ge=1)
    """Teacher batches in flight at once."""
    seed: int = 0
    """Seed of the shadow-check sampler."""

    # -- batching --------------------------------------------------------------------------------
    batching: bool = True
    batch_window_ms: float = Field(3.0, ge=0.0, le=1000.0)
    """How long the first request of a batch waits for company before the student runs."""
    adaptive_window: bool = True
    """Skip the window while traffic does not overlap (the previous batch held one input and
    nothing is queued), so a lone client pays no batching latency."""
    max_batch_size: int = Field(32, ge=1)
    threads: int | None = Field(None, ge=1)
    """Model threads (torch or ONNX Runtime) per server process; null: the cores left after one
    per process for its event loop, at least 1 (serve/workers.py measures why)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the served model runs; auto: CUDA when available."""
    runtime: Literal["torch", "onnx", "onnx_int8"] = "torch"
    """Encoder classifier students: run the forward pass on ONNX Runtime (CPU) from the graph of
    `potstill export RUN --format onnx [--int8]` (exported on the spot when missing or stale);
    onnx_int8: its dynamically quantised int8 variant. See serve/onnx_runtime.py."""

    # -- logging ---------------------------------------------------------------------------------
    log_requests: bool = True
    """Keep every request (input, answers, route) in the run's store, so feedback can name any
    request id; written in small batches off the request path."""


class TaskSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: str = Field("classify", pattern=r"^[a-z][a-z0-9_]*$")
    """classify, extract, generate, or a kind registered with `potstill.tasks.register`."""
    labels: list[str] | None = None
    """Listed here, or read from the gold labels of the data when null."""
    instruction: str = DEFAULT_INSTRUCTION
    prompt_template: str = DEFAULT_TEMPLATE
    """Fields: {instruction}, {labels}, {text}."""
    json_schema: dict[str, Any] | None = None
    """For `extract`: an object schema whose string-valued properties are the fields
    (see answers.check_extract_schema); the prompt template may show it as {schema}."""
    span_values: bool = False
    """With a json_schema: every string value of an answer is a span of the input it answers. A
    model's value that is not in the input takes the input's most similar word span (a near-copy:
    "BenBurnley" for "Ben Burnley"), or is dropped when none is similar (tasks/align.py `snap_fields`).
    Applied alike to the teacher's, the student's and the baseline's answers, in evaluation,
    calibration and serving; the teacher's cached answers stay as it wrote them."""
    json_decoding: Literal["free", "schema"] = "free"
    """With a json_schema, how a causal LM (an hf teacher, a causal student or baseline) writes an
    answer. free: any token. schema: only tokens that keep the answer one JSON object of the
    schema's string fields, each field at most once, closed within the answer's token budget
    (students/json_decoding.py). In labelling, evaluation, calibration and serving alike. A
    schema with fields of another type is refused: hold those answers with free decoding."""
    data: DataSpec
    teacher: TeacherSpec = TeacherSpec()
    filters: FilterSpec = FilterSpec()
    student: StudentSpec = StudentSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    serve: ServeSpec = ServeSpec()

    # set by config.load_spec, not by the file
    source: Path | None = Field(None, exclude=True)

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if len(v) < 2:
                raise ValueError("at least two labels are needed")
            dupes = sorted({x for x in v if v.count(x) > 1})
            if dupes:
                raise ValueError(f"duplicate labels: {dupes}")
        return v

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if v is not None and info.data.get("kind") == "extract":
            from .answers import check_extract_schema

            check_extract_schema(v)
        return v

    @field_validator("prompt_template")
    @classmethod
    def _template_has_text(cls, v: str) -> str:
        if "{text}" not in v:
            raise ValueError("prompt_template must contain {text}")
        try:
            v.format_map(_Probe())
        except (ValueError, KeyError) as e:  # pragma: no cover - message is the point
            raise ValueError(f"prompt_template is not a valid format string: {e}") from e
        return v

    @model_validator(mode="after")
    def _kind_supported(self) -> "TaskSpec":
        causal = self.student.kind == "causal_lm"
        if self.serve.runtime != "torch" and self.student.kind != "classifier":
            raise ValueError(f"serve.runtime {self.serve.runtime!r} serves an encoder classifier "
                             f"student; student.kind is {self.student.kind!r} (use 'torch')")
        if self.kind == "generate" and not causal:
            raise ValueError("kind 'generate' needs student.kind 'causal_lm'")
        if self.kind == "generate" and (self.teacher.kind == "fit" or self.teacher.over_http):
            raise ValueError("kind 'generate' needs a teacher that writes text: teacher.kind openai, or "
                             "hf with teacher.model a causal LM (teacher.over_http is not implemented "
                             "for generate)")
        if self.train.objective in ("sequence", "logit_kd", "rationale") and not causal:
            raise ValueError(f"train.objective {self.train.objective!r} is for student.kind "
                             "'causal_lm'")
        if causal and "prompt_template" not in self.model_fields_set and self.kind in CAUSAL_TEMPLATES:
            self.prompt_template = CAUSAL_TEMPLATES[self.kind]
            if "instruction" not in self.model_fields_set and self.kind in CAUSAL_INSTRUCTIONS:
                self.instruction = CAUSAL_INSTRUCTIONS[self.kind]
        if causal:
            for k, v in CAUSAL_TRAIN.items():
                if k not in self.train.model_fields_set:
                    setattr(self.train, k, v)
            if "lr" not in self.train.model_fields_set:
                self.train.lr = CAUSAL_LR[self.student.lora.method]
        if not causal and self.student.output_vocab != "full":
            raise ValueError(f"student.output_vocab {self.student.output_vocab!r} is for student.kind "
                             "causal_lm (an encoder student predicts labels or tags, not tokens)")
        if causal and "layers" not in self.student.model_fields_set:
            self.student.layers = None  # the [0, 5] default is the encoders'; a causal LM keeps all
        if causal and self.student.intermediate_size is not None:
            raise ValueError("student.intermediate_size is for encoder students (classifier, tagger); "
                             "a causal_lm student is cut by depth (student.layers)")
        if not causal and isinstance(self.student.layers, (int, str)):
            raise ValueError(f"student.layers {self.student.layers!r}: a count or `auto` is for "
                             "student.kind causal_lm; list the encoder layers to keep, e.g. [0, 5]")
        if self.json_decoding == "schema":
            if self.json_schema is None:
                raise ValueError("json_decoding: schema needs a json_schema (the fields an answer may write)")
            if not (self.student.kind == "causal_lm" or (self.teacher.kind == "hf" and self.kind == "generate")):
                raise ValueError("json_decoding: schema holds what a local causal LM writes: it needs student.kind "
                                 "causal_lm or a local teacher (teacher.kind hf) of kind generate")
            if self.kind != "extract":  # an extract schema was checked already (_valid_schema)
                from .answers import check_extract_schema

                try:
                    check_extract_schema(self.json_schema)
                except ValueError as e:
                    raise ValueError(f"{e} (json_decoding: schema holds an answer to one object of "
                                     "string fields; use json_decoding: free for this schema)") from None
            if self.train.objective == "rationale":
                raise ValueError("json_decoding: schema makes the whole answer one JSON object, so it leaves no "
                                 "room for a rationale: use train.objective other than rationale, or "
                                 "json_decoding: free")
        if self.span_values and self.json_schema is None:
            raise ValueError("span_values: true needs a json_schema (it makes the string values of an "
                             "answer object spans of the input)")
        if self.kind == "extract":
            _extract_defaults(self)
        elif self.student.kind == "tagger":
            raise ValueError("student.kind 'tagger' is for kind 'extract'")
        return self

    def resolved(self) -> dict[str, Any]:
        """The spec as plain data (paths as strings), as saved in manifests."""
        return json.loads(self.model_dump_json())

    def spec_hash(self) -> str:
        """Hash of what defines the task for a teacher: kind, labels, instruction, template."""
        core = {
            "kind": self.kind,
            "labels": self.labels,
            "instruction": self.instruction,
            "prompt_template": self.prompt_template,
            "json_schema": self.json_schema,
        }
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]

    def json_keys(self) -> list[str] | None:
        """The fields a causal LM's answer is held to (`json_decoding: schema`), else None."""
        from .answers import schema_fields

        if self.json_decoding != "schema" or self.json_schema is None:
            return None
        return schema_fields(self.json_schema)

    def render_prompt(self, text: str, labels: list[str]) -> str:
        return self.prompt_template.format_map(
            {"instruction": self.instruction, "labels": ", ".join(labels), "text": text,
             "schema": json.dumps(self.json_schema, ensure_ascii=False) if self.json_schema else ""}
        )


def _extract_defaults(spec: TaskSpec) -> None:
    """kind extract: json_schema is required; the student is a tagger; the classify prompt
    defaults give way to EXTRACT_INSTRUCTION and EXTRACT_TEMPLATE (fields set in the file or --set are kept)."""
    if spec.json_schema is None:
        raise ValueError("kind 'extract' needs json_schema: an object schema whose string-valued "
                         "properties are the fields to extract")
    if "kind" not in spec.student.model_fields_set:
        spec.student.kind = "tagger"
    if spec.student.kind != "tagger":
        raise ValueError(f"kind 'extract' needs student.kind 'tagger', not {spec.student.kind!r}")
    if spec.teacher.over_http:
        raise ValueError("teacher.over_http is not implemented for kind 'extract' yet")
    if "instruction" not in spec.model_fields_set:
        spec.instruction = EXTRACT_INSTRUCTION
    if "prompt_template" not in spec.model_fields_set:
        spec.prompt_template = EXTRACT_TEMPLATE


class _Probe(dict):
    def __missing__(self, key: str) -> str:
        if key not in ("instruction", "labels", "text", "schema"):
            raise KeyError(f"unknown field {{{key}}}; allowed: {{instruction}}, {{labels}}, {{text}}, "
                           "{schema}")
        return ""
