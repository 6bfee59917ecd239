"""The causal-LM student as a router backend, with several LoRA adapters on one base model.

`CausalLMStudent` holds one base model wrapped in one peft `PeftModel` and any number of LoRA
adapters on it (peft's `load_adapter` / `set_adapter` / `delete_adapter`), each under the name
clients send as `model`. `view(name)` is the `StudentBackend` (router.py) of one adapter: the
server runs one `Router` (so one micro-batcher) per adapter, so a batch never mixes adapters, and
a lock around `set_adapter` + `generate` (and around loading / unloading) keeps two adapters'
batches, which run in different worker threads, from sharing one forward pass. Batches of
different adapters therefore run one after the other, never interleaved; a batch of one adapter
still holds all of that adapter's concurrent requests.

What a generated text becomes (`output_from`, pure):

- `kind: classify`: the label `spec.parse_label` finds in it; none -> `error` (the router then
  escalates it as `invalid_output`);
- `kind: generate`: the text itself; an empty text -> `error`. With a `json_schema` (a JSON
  object written as text), the canonical JSON of the object in it, as for extract: no object,
  or one that breaks the schema -> `error`; calibration compares objects field by field. Under
  `json_decoding: schema` the student writes only objects of the schema's keys and string values
  (students/json_decoding.py), so this error is left to what that does not check (`required`,
  `enum`) and to answers the output vocabulary could not finish;
- `kind: extract` (a schema given): the canonical JSON of the object `answers.parse_answer`
  finds and validates; no JSON object, or one that breaks the schema -> `error`. (The spec pins
  extract tasks to the tagger student today, so this path serves adapters trained elsewhere.)

Confidence (`logprob_confidence`, pure): from the logprobs of the generated tokens (EOS included),
`serve.logprob_confidence`:

- `min` (the default): exp(min token logprob), the probability of the least sure token. An
  answer is as doubtful as its most doubtful token; a mean is diluted by the tokens that follow
  inevitably once the first one is chosen (the tail of a multi-token label, the EOS);
- `mean`: exp(mean token logprob), the geometric mean of the token probabilities.

No OOD score (`ood_score` is None). With `logprobs: true` the chat answer's logprob is the sum of
the generated tokens' logprobs (log p of the generated text, EOS included) when the student
answered; there are no alternatives to list in `top_logprobs`.

The confidence is not rescaled (no temperature): its threshold is what calibration chooses
(`calibrate_threshold`): on the validation split, the threshold that sends `serve.teacher_share`
of the rows to the teacher, invalid outputs first, then the least confident, through
calibrate.py's `sweep`. The hybrid accuracy reported beside it assumes
the teacher is right on every escalated row (no teacher is asked during calibration). A
`serve.confidence_threshold` set by hand overrides it. The result is saved in
`calibration.causal.json` and redone when the student, the score or the share changes.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import MissingOutput, PotstillError
from ..tasks import get_task
from ..threads import limit_threads
from .router import Router, StudentOutput, student_version

log = logging.getLogger("potstill.serve")

SCORES = ("min", "mean")
CAUSAL_CALIBRATION = "calibration.causal.json"


# -- pure pieces ---------------------------------------------------------------------------------
def logprob_confidence(token_logprobs: Sequence[float], score: str = "min") -> float:
    """Token logprobs of one answer -> confidence in [0, 1]: exp(min) or exp(mean); 0 for none."""
    if score not in SCORES:
        raise PotstillError(f"logprob confidence {score!r}: one of {', '.join(SCORES)}")
    lps = [float(x) for x in token_logprobs]
    if not lps:
        return 0.0
    v = min(lps) if score == "min" else sum(lps) / len(lps)
    return float(math.exp(v)) if math.isfinite(v) else 0.0


def parse_output(text: str, kind: str, labels: Sequence[str] = (),
                 schema: dict[str, Any] | None = None) -> tuple[str | None, str | None, dict[str, Any]]:
    """A generated text -> (answer, error, extra), read by the task `kind` (`Task.serve_answer`)."""
    return get_task(kind).serve_answer(text, labels, schema)


def output_from(text: str, token_logprobs: Sequence[float], kind: str, labels: Sequence[str] = (),
                schema: dict[str, Any] | None = None, score: str = "min") -> StudentOutput:
    """One generation -> the router's StudentOutput (pure)."""
    answer, error, extra = parse_output(text, kind, labels, schema)
    lps = [float(x) for x in token_logprobs]
    extra = {**extra, "logprob": sum(lps) if lps else None,
             "mean_logprob": sum(lps) / len(lps) if lps else None,
             "min_logprob": min(lps) if lps else None}
    return StudentOutput(label=answer, confidence=logprob_confidence(lps, score), ood_score=None,
                         probs=None, error=error, extra=extra)


def same_answer(answer: str | None, reference: str | None, kind: str) -> bool:
    """Is the student's answer the reference's? As the task `kind` compares answers."""
    return get_task(kind).same_answer(answer, reference)


def calibrate_threshold(outputs: Sequence[StudentOutput], references: Sequence[str | None],
                        teacher_share: float, kind: str) -> dict[str, Any]:
    """The confidence threshold sending at most `teacher_share` of these validation rows to the
    teacher (invalid outputs always go; the least confident go next), through calibrate.sweep;
    with what it does on them. The teacher is assumed right on every escalated row."""
    from .calibrate import Rows, summarise, sweep

    if not outputs:
        raise PotstillError("calibration needs at least one validation row")
    conf = np.array([o.confidence for o in outputs], dtype=np.float64)
    forced = np.array([o.error is not None or o.label is None for o in outputs])
    ok = np.array([same_answer(o.label, r, kind) for o, r in zip(outputs, references)])
    rows = Rows(conf, None, forced)
    (p,) = sweep(rows, np.ones(len(ok)) - ok, [teacher_share])
    s = summarise(rows, p["confidence_threshold"], None, ok, np.ones(len(ok), bool))
    return {"target_share": teacher_share, "confidence_threshold": p["confidence_threshold"],
            "teacher_share": s["teacher_share"], "hybrid_accuracy": s["hybrid_accuracy"],
            "student_accuracy": float(ok.mean()), "invalid_share": float(forced.mean()),
            "rows": len(outputs), "teacher_assumed_right": True}


# -- the backend ---------------------------------------------------------------------------------
class CausalLMStudent:
    """One base causal LM with named LoRA adapters (see the module doc).

    `model_dir`: a directory `save_causal_lm` wrote (the run's student/). An adapter student
    becomes the adapter `name`; a fully fine-tuned one serves alone (no extra adapters).
    `prompt`: input text -> the prompt the student was trained on (spec.render_prompt).
    """

    def __init__(self, model_dir: str | Path, *, name: str, kind: str, labels: Sequence[str] = (),
                 schema: dict[str, Any] | None = None, prompt: Callable[[str], str] = lambda t: t,
                 score: str = "min", max_new_tokens: int = 32, max_length: int = 256,
                 threads: int | None = None, device: str = "auto", output_vocab: str = "full",
                 snap: Callable[[str, str], str] | None = None, json_keys: Sequence[str] | None = None):
        import torch

        from ..students.causal_lm import is_peft, load_causal_lm
        from ..students.output_vocab import decode_ids

        if score not in SCORES:
            raise PotstillError(f"serve.logprob_confidence {score!r}: one of {', '.join(SCORES)}")
        limit_threads(threads)  # torch and numpy's BLAS: threads.py
        self.model_dir = Path(model_dir)
        self.output_vocab = output_vocab
        meta = _student_meta(self.model_dir)
        self.objective = meta.get("objective", "sequence")
        self.model, self.tokenizer = load_causal_lm(self.model_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(torch.device(device))
        self.kind, self.labels, self.schema = kind, list(labels), schema
        self.prompt, self.score = prompt, score
        self.snap = snap
        """(generated text, input) -> text, before the task reads it (`span_snapper`)."""
        self.max_new_tokens, self.max_length = max_new_tokens, max_length
        self.json_keys = json_keys
        """The fields an answer is held to while it is written (`json_decoding: schema`), or None."""
        self.lock = threading.Lock()
        """Held around set_adapter + generate, and while an adapter loads or unloads."""
        self.default = name
        self.adapters: dict[str, str] = {name: "default"}
        """served name -> peft adapter name ("a1", "a2", ...: served names may hold characters
        peft's module dicts refuse)."""
        self.paths: dict[str, Path] = {name: self.model_dir}
        self.identities: dict[str, str] = {name: student_version(self.model_dir)}
        self.answer_ids: dict[str, list[int] | None] = {
            name: decode_ids(meta, output_vocab, self.model_dir)}
        """served name -> the answer ids it decodes over (None: the full vocabulary)."""
        self._peft = is_peft(self.model)
        self._next = 1

    # -- adapters --------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.adapters)

    def load_adapter(self, name: str, path: str | Path) -> "AdapterView":
        """Load the LoRA adapter in `path` (adapter_config.json + weights) as `name`."""
        path = Path(path)
        if not name or not isinstance(name, str):
            raise PotstillError("an adapter needs a non-empty name")
        if name in self.adapters:
            raise PotstillError(f"an adapter named {name!r} is already loaded")
        if not self._peft:
            raise PotstillError(f"{self.model_dir} holds a fully fine-tuned model, not an adapter: "
                             "extra adapters need a base model served with an adapter")
        cfg_path = path / "adapter_config.json"
        if not cfg_path.exists():
            raise MissingOutput(f"{path}: not a peft adapter (no adapter_config.json)")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except ValueError as e:  # bad JSON or bad UTF-8
            raise ValueError(f"{cfg_path}: not valid JSON ({_clip(str(e))})") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
        from ..students.output_vocab import decode_ids

        ids = decode_ids(_student_meta(path), self.output_vocab, path)
        base = cfg.get("base_model_name_or_path")
        mine = self.model.peft_config["default"].base_model_name_or_path
        if base != mine:
            log.warning("adapter %s was trained on %s; the served base is %s", name, base, mine)
        with self.lock:
            peft_name = f"a{self._next}"
            self._next += 1
            try:
                self.model.load_adapter(str(path), adapter_name=peft_name, is_trainable=False)
            except Exception as e:  # noqa: BLE001 - a wrong adapter is the caller's error
                raise PotstillError(f"{path}: cannot load this adapter on the served base model: "
                                 f"{type(e).__name__}: {e}") from None
            self.model.eval()
            self.adapters[name] = peft_name
            self.paths[name] = path
            self.identities[name] = student_version(path)
            self.answer_ids[name] = ids
        return self.view(name)

    def unload_adapter(self, name: str) -> None:
        """Remove `name` from the model (never the run's own adapter)."""
        if name == self.default:
            raise PotstillError(f"{name!r} is the served student itself; it cannot be unloaded")
        if name not in self.adapters:
            raise KeyError(name)
        with self.lock:
            peft_name = self.adapters.pop(name)
            self.paths.pop(name, None)
            self.identities.pop(name, None)
            self.answer_ids.pop(name, None)
            self.model.set_adapter(self.adapters[self.default])
            self.model.delete_adapter(peft_name)

    def view(self, name: str) -> "AdapterView":
        if name not in self.adapters:
            raise KeyError(name)
        return AdapterView(self, name)

    # -- answering -------------------------------------------------------------------------------
    def generate_texts(self, name: str, texts: Sequence[str]) -> list[tuple[str, list[float]]]:
        """(text, token logprobs) per input, from adapter `name` (one locked forward pass)."""
        from ..students.causal_lm import generate

        prompts = [self.prompt(t) for t in texts]
        with self.lock:
            peft_name = self.adapters.get(name)
            if peft_name is None:
                raise KeyError(f"adapter {name!r} is not loaded")
            if self._peft:
                self.model.set_adapter(peft_name)
            gens = generate(self.model, self.tokenizer, prompts, self.max_new_tokens,
                            batch_size=max(len(prompts), 1), objective=self.objective,
                            max_length=self.max_length, answer_ids=self.answer_ids[name],
                            json_keys=self.json_keys)
        return [(g.text, g.token_logprobs) for g in gens]

    def predict_with(self, name: str, texts: Sequence[str]) -> list[StudentOutput]:
        return [output_from(self.snap(t, src) if self.snap else t, lp, self.kind, self.labels, self.schema,
                            self.score)
                for (t, lp), src in zip(self.generate_texts(name, texts), texts)]


class AdapterView:
    """The `StudentBackend` of one adapter of a `CausalLMStudent`."""

    def __init__(self, host: CausalLMStudent, name: str):
        self.host, self.name = host, name
        self.labels = host.labels
        self.identity = host.identities[name]

    def predict(self, texts: Sequence[str]) -> list[StudentOutput]:
        return self.host.predict_with(self.name, texts)


class AdapterRouter(Router):
    """The router of an adapter added beside the run's own: the teacher client is shared with
    the main router, which starts and stops it; this one starts and stops its batcher only. Its
    queue items name the adapter (`detail.adapter`): they share the run's queue."""

    def _item(self, r, kind: str, reason: str, **more: Any) -> dict[str, Any]:
        item = super()._item(r, kind, reason, **more)
        item["detail"] = {**(item.get("detail") or {}), "adapter": getattr(self.student, "name", None)}
        return item

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self, wait_s: float = 2.0) -> None:
        await self.stop_own(wait_s)  # the shared teacher client is the main router's to stop


# -- the teacher of a generate task --------------------------------------------------------------
class TextTeacher:
    """A teacher whose answer is its text (`Answer.raw`), for `kind: generate`: the router serves
    `label`. Its identity differs from the wrapped teacher's, so its cached answers (text as
    label) never mix with the labelling stage's (parsed labels).

    `parse` (the task's `serve_answer`, bound to the spec's json_schema) turns the text into what
    is served, as it does the student's: with a schema, the canonical JSON of a schema-valid
    object. A reply it refuses is an answer without a label (`extra["parse_error"]` says why):
    the teacher is up, but the request is answered degraded rather than with text that breaks the
    schema. Without `parse`: the stripped text."""

    def __init__(self, inner, parse: Callable[[str], tuple[str | None, str | None, Any]] | None = None,
                 snap: Callable[[str, str], str] | None = None):
        self.inner = inner
        self.snap = snap
        """(reply, input) -> reply, before `parse` (`span_snapper`)."""
        self.identity = f"{inner.identity}#text"
        self.labels = inner.labels
        self.parse = parse

    def request(self, text: str) -> dict[str, Any]:
        return self.inner.request(text)

    def answer(self, texts: Sequence[str]) -> Iterator[tuple[int, Any]]:
        for i, a in self.inner.answer(texts):
            if a.error is None:
                text = a.raw or ""
                if self.snap is not None:
                    text = self.snap(text, texts[i])
                if self.parse is None:
                    a.label = text.strip() or None
                else:
                    a.label, err, _ = self.parse(text)
                    if err is not None:
                        a.extra = {**(a.extra or {}), "parse_error": f"the teacher's answer is not usable: {err}"}
                a.probs = None
            yield i, a


def span_snapper(spec) -> Callable[[str, str], str] | None:
    """Under `span_values`: (generated text, input) -> the text with its object's values made
    spans of the input (tasks/generate.py `spans_only`), for the student and the teacher alike;
    None when the spec does not ask for it."""
    if not spec.span_values:
        return None
    from ..tasks.generate import spans_only

    schema = spec.json_schema
    return lambda text, source: spans_only(text, source, schema) or text


# -- building it for the server ------------------------------------------------------------------
def build_causal_student(spec, run, recalibrate: bool = True, teacher_share: float | None = None,
                         model: str = "student", routing: bool = True,
                         adapters: dict[str, str | Path] | None = None):
    """(view of the run's own adapter, calibration doc, Policy, operating point) for a run whose
    student is a causal LM; `adapters` (served name -> directory) are loaded beside it."""
    from .calibrate import threshold_routing

    sv = spec.serve
    model_dir = run.student if model == "student" else run.model_dir(model)
    if not ((model_dir / "adapter_config.json").exists() or (model_dir / "config.json").exists()):
        raise MissingOutput(f"{model_dir}: no trained causal-LM {model}; run `potstill train` first")
    labels: list[str] = []
    if get_task(spec.kind).has_label_set:
        labels = list(spec.labels) if spec.labels else _input_labels(run)
    name = sv.model_name or spec.name
    render_labels = _input_labels(run, missing_ok=True) or labels
    host = CausalLMStudent(
        model_dir, name=name, kind=spec.kind, labels=labels,
        schema=spec.json_schema,
        prompt=lambda t: spec.render_prompt(t, render_labels), score=sv.logprob_confidence,
        max_new_tokens=spec.student.max_new_tokens, max_length=spec.student.max_length,
        threads=sv.threads, device=sv.device, output_vocab=spec.student.output_vocab,
        snap=span_snapper(spec), json_keys=spec.json_keys())
    for n, p in (adapters or {}).items():
        host.load_adapter(n, p)
    student = host.view(name)
    return threshold_routing(
        student, spec, run, routing=routing, teacher_share=teacher_share, path=run.root / CAUSAL_CALIBRATION,
        settings={"logprob_confidence": sv.logprob_confidence, "model": model,
                  "max_new_tokens": spec.student.max_new_tokens,
                  "output_vocab": spec.student.output_vocab, "span_values": spec.span_values,
                  **({"json_decoding": spec.json_decoding} if spec.json_keys() else {})},
        recalibrate=recalibrate, batch=16, what="causal student",
        choose=lambda outs, golds, share: calibrate_threshold(outs, golds, share, spec.kind))


def _student_meta(model_dir: Path) -> dict[str, Any]:
    """potstill_student.json of a causal student or adapter ({} when it has none)."""
    from ..students.causal_lm import STUDENT_META

    p = Path(model_dir) / STUDENT_META
    return json.loads(p.read_text()) if p.exists() else {}


def _input_labels(run, missing_ok: bool = False) -> list[str]:
    p = run.inputs / "labels.json"
    if not p.exists():
        if missing_ok:
            return []
        raise MissingOutput(f"{p}: no labels; run an earlier stage first or list labels in the spec")
    return list(json.loads(p.read_text()))


def _clip(s: str, n: int = 200) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
