"""Serving a `kind: extract` run: its BIO tagger student behind the router (serve/app.py).

The backend is `extract_serve.TaggerStudent`: the answer (served as the chat completion's
content) is the canonical JSON of the extracted object; an object that breaks the schema is an
`error`, which the router escalates as `invalid_output`; the confidence is the least sure span's
mean tag probability (the all-token mean when nothing was found). No OOD score.

Threshold (`calibrate_extract`): on the validation split, the confidence threshold that sends at
most `serve.teacher_share` of the rows to the teacher, invalid outputs first, then the least
confident, through causal.py's `calibrate_threshold` (calibrate.py's `sweep`), the teacher
assumed right on every escalated row. A student answer counts as right when it equals the gold
object with values compared as the extract evaluation compares them (`extract_eval.norm_value`:
NFKC, case-folded, whitespace collapsed). The result is saved in `calibration.extract.json` and
redone when the student, the share, the served model, the schema or `student.max_length`
changes; `serve.confidence_threshold` set by hand overrides it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Sequence

from .router import Policy, StudentOutput

log = logging.getLogger("potstill.serve")

EXTRACT_CALIBRATION = "calibration.extract.json"


def comparable(answer: str | None) -> str | None:
    """Canonical JSON of an object with its values normalised as the extract eval compares them
    (None stays None)."""
    if answer is None:
        return None
    from ..extract_eval import norm_value
    from ..extract_schema import canonical_json, clean_fields

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
    from ..extract_serve import TaggerStudent
    from .calibrate import Deployment

    sv = spec.serve
    dep = Deployment.of(run, spec, model)
    if not (dep.model_dir / "config.json").exists():
        raise FileNotFoundError(f"{dep.model_dir}: no trained tagger {model}; run `potstill train` first")
    student = TaggerStudent(dep.model_dir, spec.json_schema, max_length=dep.max_length,
                            threads=sv.threads, device=sv.device)
    if not routing:
        return student, None, Policy(), None
    hs = frozenset(sv.high_stakes)
    if sv.confidence_threshold is not None:
        return student, None, Policy(sv.confidence_threshold, None, hs, sv.high_stakes_prob), None
    share = sv.teacher_share if teacher_share is None else teacher_share
    path = run.root / EXTRACT_CALIBRATION
    settings = {"teacher_share": share, "model": model, "max_length": dep.max_length,
                "json_schema": spec.json_schema}
    cal = json.loads(path.read_text()) if path.exists() else None
    if cal is None or cal.get("student_version") != student.identity or cal.get("settings") != settings:
        if not recalibrate:
            raise ValueError(f"{run.root}: no up-to-date {EXTRACT_CALIBRATION}; serve with "
                             "recalibration or set serve.confidence_threshold")
        cal = calibrate_extract(student, spec, run, settings)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(cal, indent=2))
        tmp.replace(path)
    point = cal["operating_point"]
    return student, cal, Policy(point["confidence_threshold"], None, hs, sv.high_stakes_prob), point


def calibrate_extract(student, spec, run, settings: dict[str, Any]) -> dict[str, Any]:
    """Tag the validation split, choose the threshold; the calibration doc."""
    from ..data.prepare import load_inputs

    val = [ex for ex in load_inputs(run).validation if ex.gold is not None]
    if not val:
        raise ValueError(f"{run.inputs}: no gold validation rows to calibrate the tagger on; "
                         "set serve.confidence_threshold by hand")
    t0 = time.monotonic()
    outs: list[StudentOutput] = []
    for s in range(0, len(val), 64):
        outs += student.predict([ex.text for ex in val[s:s + 64]])
    point = extract_threshold(outs, [ex.gold for ex in val], settings["teacher_share"])
    log.info("calibrated the tagger on %d validation rows: confidence below %s goes to the teacher "
             "(%.1f%% of rows; hybrid exact match %.1f%% with the teacher assumed right)",
             len(val), point["confidence_threshold"], 100 * point["teacher_share"],
             100 * (point["hybrid_accuracy"] or 0))
    return {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "task": spec.name,
            "student_version": student.identity, "settings": settings, "operating_point": point,
            "seconds": round(time.monotonic() - t0, 2)}
