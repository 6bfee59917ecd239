"""`fit` / `hf` teacher for `kind: extract`: a local BIO tagger answering JSON objects. An answer's
`label` is the canonical JSON of the extracted object, or None when it breaks the schema (with
`extra["parse_error"]`); `probs` is None (no label distribution)."""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

from ..answers import canonical_json, schema_fields, validate_fields
from ..errors import PotstillError
from ..timing import Timer
from .base import Answer
from .hf_local import local_identity
from .openai_compat import _short


class TaggerTeacher:
    """A local BIO tagger (`AutoModelForTokenClassification`, tags `B-<field>`/`I-<field>`) as a
    teacher: a fitted one (teacher.kind fit) or any local one (hf). Batched; fields the model
    tags but the schema lacks are ignored."""

    def __init__(self, model: str, schema: dict[str, Any], batch_size: int = 64, max_length: int = 128):
        from ..students.hf import resolve_model_path
        from ..students.tagger import load_tagger, model_tags, tags_fields

        path = resolve_model_path(model)
        self.model, self.tokenizer = load_tagger(path)
        self.schema = schema
        self.labels = schema_fields(schema)
        own = tags_fields(model_tags(self.model))
        missing = [f for f in self.labels if f not in own]
        if missing:
            raise PotstillError(f"teacher model {model}: its tags lack the fields {missing[:10]}"
                             f"{' ...' if len(missing) > 10 else ''} (it tags {len(own)} fields)")
        self.batch_size, self.max_length = batch_size, max_length
        self.identity = local_identity(path).replace("hf:", "tagger:", 1)

    def request(self, text: str) -> dict[str, Any]:
        return {"text": text, "max_length": self.max_length}

    def answer(self, texts: Sequence[str]) -> Iterator[tuple[int, Answer]]:
        from ..students.tagger import predict_tags

        chunk = self.batch_size * 8
        for s in range(0, len(texts), chunk):
            t0 = time.perf_counter()
            preds = predict_tags(self.model, self.tokenizer, texts[s : s + chunk], self.batch_size,
                                 self.max_length)
            ms = (time.perf_counter() - t0) * 1000 / max(len(preds), 1)
            for j, p in enumerate(preds):
                obj = {k: v for k, v in p.fields.items() if k in self.labels}
                raw = canonical_json(obj)
                err = validate_fields(obj, self.schema)
                if err is not None:
                    yield s + j, Answer(label=None, raw=raw, latency_ms=ms,
                                        extra={"parse_error": f"schema_invalid: {_short(err)}"})
                else:
                    yield s + j, Answer(label=raw, raw=raw, latency_ms=ms,
                                        extra={"confidence": p.confidence})

    def describe(self, texts: Sequence[str], ev: Any) -> dict[str, Any]:
        """Size and batch throughput on this machine (the evaluation's teacher row; its batch-1
        latency is timed through `timer`, in turn with the students)."""
        from ..students.hf import count_params
        from ..students.tagger import tagger_throughput

        return {"params": count_params(self.model), "layers": self.model.config.num_hidden_layers,
                **tagger_throughput(self.model, self.tokenizer, list(texts), ev.batch_size, self.max_length)}

    def timer(self, ev: Any) -> Timer:
        """One input at a time, as the students are timed (timing.py)."""
        from ..students.tagger import tagger_timer

        return tagger_timer(self.model, self.tokenizer, ev.latency_samples, self.max_length)
