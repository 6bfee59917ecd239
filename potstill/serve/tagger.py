"""Serving a `kind: extract` run: its BIO tagger student behind the router (serve/app.py).

The backend is `TaggerStudent` (below): the answer (served as the chat completion's
content) is the canonical JSON of the extracted object; an object that breaks the schema is an
`error`, which the router escalates as `invalid_output`; the confidence is the least sure span's
mean tag probability (the all-token mean when nothing was found). No OOD score.

Threshold (`serve.calibrate.threshold_on_validation` with `extract_threshold`): on the validation split, the confidence threshold that sends at
most `serve.teacher_share` of the rows to the teacher, invalid outputs first, then the least
confident, through causal.py's `calibrate_threshold` (calibrate.py's `sweep`), the teacher
assumed right on every escalated row. A student answer counts as right when it equals the gold
object with values compared as the extract evaluation compares them (`tasks.extract.norm_value`:
NFKC, case-folded, whitespace collapsed). The result is saved in `calibration.extract.json` and
redone when the student, the share, the served model, the schema or `student.max_length`
changes; `serve.confidence_threshold` set by hand overrides it.

The tagger student as a router `StudentBackend` (serve/router.py):

`StudentOutput.label` is the canonical JSON of the extracted object (answers.canonical_json); the
router's `decide` escalates it as `invalid_output` when `error` is set, which happens when the
decoded object breaks the schema (a required field not found, say). Confidence: the minimum over
the predicted spans of the mean probability of each span's tags; an answer with no span takes the
mean probability of its (O) tags over all tokens, near 1 when the tagger is sure nothing is there.
No OOD score yet (`ood_score` is None). `potstill serve` builds it for extract runs, with its
threshold calibrated on the validation split (below).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from ..answers import canonical_json, validate_fields
from ..errors import MissingOutput
from ..students.tagger import Prediction
from ..threads import limit_threads
from .router import StudentOutput, student_version

log = logging.getLogger("potstill.serve")

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

        from ..students.tagger import load_tagger

        limit_threads(threads)  # torch and numpy's BLAS: threads.py
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
        from ..students.tagger import predict_tags

        preds = predict_tags(self.model, self.tokenizer, list(texts), max(len(texts), 1), self.max_length)
        return [output_from(p, self.schema) for p in preds]


EXTRACT_CALIBRATION = "calibration.extract.json"


def comparable(answer: str | None) -> str | None:
    """Canonical JSON of an object with its values normalised as the extract eval compares them
    (None stays None)."""
    if answer is None:
        return None
    from ..answers import clean_fields
    from ..tasks.extract import norm_value

    obj = clean_fields(json.loads(answer))
    return canonical_json({k: norm_value(v) for k, v in obj.items()})


def extract_threshold(outputs: Sequence[StudentOutput], golds: Sequence[str | None],
                      teacher_share: float) -> dict[str, Any]:
    """causal.calibrate_threshold on tagger outputs against gold objects (canonical JSON text),
    answers compared normalised (see the module doc)."""
    from .causal import calibrate_threshold

    outs = [dataclasses.replace(o, label=comparable(o.label) if o.error is None else None)
            for o in outputs]
    return calibrate_threshold(outs, [comparable(g) for g in golds], teacher_share, "extract")


def build_extract_student(spec, run, recalibrate: bool = True, teacher_share: float | None = None,
                          model: str = "student", routing: bool = True):
    """(TaggerStudent, calibration doc, Policy, operating point) for an extract run's `model`
    (student, teacher or baseline: each a tagger directory)."""
    from .calibrate import Deployment, threshold_routing

    sv = spec.serve
    dep = Deployment.of(run, spec, model)
    if not (dep.model_dir / "config.json").exists():
        raise MissingOutput(f"{dep.model_dir}: no trained tagger {model}; run `potstill train` first")
    student = TaggerStudent(dep.model_dir, spec.json_schema, max_length=dep.max_length,
                            threads=sv.threads, device=sv.device)
    return threshold_routing(
        student, spec, run, routing=routing, teacher_share=teacher_share, path=run.root / EXTRACT_CALIBRATION,
        settings={"model": model, "max_length": dep.max_length, "json_schema": spec.json_schema},
        recalibrate=recalibrate, batch=64, choose=extract_threshold, what="tagger")
