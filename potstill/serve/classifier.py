"""The encoder classifier student as a served backend: `build_student` loads it with its
calibration (temperature, OOD statistics, thresholds) for `potstill serve` (serve/backends.py)."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import PotstillError
from ..paths import RunPaths
from ..spec import TaskSpec

log = logging.getLogger("potstill.serve")


def build_student(spec: TaskSpec, run: RunPaths, recalibrate: bool = True,
                  teacher_share: float | None = None, model: str = "student", routing: bool = True):
    """(ClassifierStudent with its calibration, calibration doc, Policy, operating point) for
    the run's `model` (student, teacher or baseline). Without routing nothing is calibrated: the
    model answers everything with its own probabilities (temperature 1), as a teacher should."""
    from .calibrate import Deployment, calibrate, load_calibration, pick_point, stale_reason
    from .confidence import load_ood
    from .router import ClassifierStudent, Policy, student_version

    sv = spec.serve
    dep = Deployment.of(run, spec, model)
    if not (dep.model_dir / "config.json").exists():
        raise PotstillError(f"{dep.model_dir}: no trained {model}; run `potstill train` first")
    if not routing:
        student = ClassifierStudent(dep.model_dir, score=sv.confidence_score, embedding=sv.embedding,
                                    max_length=dep.max_length, threads=sv.threads, device=sv.device)
        return student, None, Policy(), None
    cal = load_calibration(dep)
    why = stale_reason(cal, spec, student_version(dep.model_dir))
    if why is not None:
        if not recalibrate:
            raise PotstillError(f"{run.root}: {why}; run `potstill calibrate {run.root}"
                             f"{'' if model == 'student' else ' --model ' + model}` first")
        log.warning("calibrating first: %s", why)
        cal = calibrate(spec, run, model=model)
    assert cal is not None
    backend: Any = ClassifierStudent
    if sv.runtime != "torch":  # the same student on ONNX Runtime: onnx_runtime.py
        from functools import partial

        from ..onnx_export import onnx_dir
        from .onnx_runtime import OnnxClassifierStudent

        backend = partial(OnnxClassifierStudent, onnx_dir=onnx_dir(run.root, model),
                          int8=sv.runtime == "onnx_int8")
    student = backend(dep.model_dir, temperature=cal["temperature"], score=sv.confidence_score,
                      ood=load_ood(dep.ood_stats), embedding=sv.embedding,
                      max_length=dep.max_length, threads=sv.threads, device=sv.device)
    point = pick_point(cal, teacher_share)
    policy = Policy(
        confidence_threshold=sv.confidence_threshold if sv.confidence_threshold is not None
        else point["confidence_threshold"],
        ood_threshold=sv.ood_threshold if sv.ood_threshold is not None else point["ood_threshold"],
        high_stakes=frozenset(sv.high_stakes), high_stakes_prob=sv.high_stakes_prob)
    return student, cal, policy, point
