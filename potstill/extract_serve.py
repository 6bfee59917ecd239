"""The tagger student of `kind: extract` as a router `StudentBackend` (serve/router.py).

`StudentOutput.label` is the canonical JSON of the extracted object (extract_schema.py); the
router's `decide` escalates it as `invalid_output` when `error` is set, which happens when the
decoded object breaks the schema (a required field not found, say). Confidence: the minimum over
the predicted spans of the mean probability of each span's tags; an answer with no span takes the
mean probability of its (O) tags over all tokens, near 1 when the tagger is sure nothing is there.
No OOD score yet (`ood_score` is None). `potstill serve` builds it for extract runs, with its
threshold calibrated on the validation split: serve/extract.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .extract_schema import canonical_json, validate_fields
from .serve.router import StudentOutput, student_version
from .students.tagger import Prediction


def extract_confidence(span_conf: dict[str, float], token_confidence: float) -> float:
    """min over spans of their mean tag probability; with no span, the all-token mean."""
    return float(min(span_conf.values())) if span_conf else float(token_confidence)


def output_from(pred: Prediction, schema: dict[str, Any]) -> StudentOutput:
    """A tagger prediction -> StudentOutput, validated against `schema` (pure)."""
    obj = {k: v for k, v in pred.fields.items() if k in schema["properties"]}
    conf = extract_confidence({k: c for k, c in pred.confidence.items() if k in obj}, pred.token_confidence)
    err = validate_fields(obj, schema)
    if err is not None:
        return StudentOutput(label=None, confidence=conf, error=f"schema: {err}",
                             extra={"fields": obj})
    return StudentOutput(label=canonical_json(obj), confidence=conf, extra={"fields": obj})


class TaggerStudent:
    """`StudentBackend` over a trained tagger directory (student/ of an extract run)."""

    def __init__(self, model_dir: str | Path, schema: dict[str, Any], *, max_length: int = 64,
                 threads: int | None = None, device: str = "auto"):
        import torch

        from .students.tagger import load_tagger

        if threads:
            torch.set_num_threads(threads)
        self.model_dir = Path(model_dir)
        self.model, self.tokenizer = load_tagger(self.model_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(torch.device(device))
        self.schema = schema
        self.labels = list(schema["properties"])
        self.identity = student_version(self.model_dir)
        self.max_length = max_length

    def predict(self, texts: Sequence[str]) -> list[StudentOutput]:
        from .students.tagger import predict_tags

        preds = predict_tags(self.model, self.tokenizer, list(texts), max(len(texts), 1), self.max_length)
        return [output_from(p, self.schema) for p in preds]
