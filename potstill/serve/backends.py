"""One serving backend per student kind, found through one table: how `potstill serve` builds
the model it answers with, with its calibration and routing policy. To serve a new student kind,
add its builder with `register_backend`."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import PotstillError
from ..paths import RunPaths
from ..spec import TaskSpec

Builder = Callable[[TaskSpec, RunPaths, Any], tuple[Any, Any, Any, Any]]
"""(spec, run, ServeConfig) -> (StudentBackend, calibration doc, Policy, operating point)."""


def _classifier(spec: TaskSpec, run: RunPaths, config: Any):
    from .classifier import build_student

    return build_student(spec, run, config.recalibrate, config.teacher_share, config.model, config.routing)


def _tagger(spec: TaskSpec, run: RunPaths, config: Any):
    from .tagger import build_extract_student

    return build_extract_student(spec, run, config.recalibrate, config.teacher_share, config.model,
                                 config.routing)


def _causal_lm(spec: TaskSpec, run: RunPaths, config: Any):
    from .causal import build_causal_student

    return build_causal_student(spec, run, config.recalibrate, config.teacher_share, config.model,
                                config.routing, config.adapters)


BACKENDS: dict[str, Builder] = {"classifier": _classifier, "tagger": _tagger, "causal_lm": _causal_lm}
ADAPTER_KINDS = {"causal_lm"}
"""Student kinds that serve several adapters on one base model."""
SWEEP_KINDS = {"classifier"}
"""Student kinds calibrated by calibrate.py's sweep (temperature, OOD statistics, two thresholds);
every other kind's builder chooses one confidence threshold itself (`threshold_routing`)."""


def sweep_calibrated(kind: str) -> bool:
    return kind in SWEEP_KINDS


def register_backend(kind: str, builder: Builder, adapters: bool = False) -> None:
    BACKENDS[kind] = builder
    if adapters:
        ADAPTER_KINDS.add(kind)


def build_backend(spec: TaskSpec, run: RunPaths, config: Any):
    kind = spec.student.kind
    if kind not in BACKENDS:
        raise PotstillError(f"student.kind {kind!r} has no serving backend; known: {', '.join(sorted(BACKENDS))}")
    if config.adapters and kind not in ADAPTER_KINDS:
        raise PotstillError("adapters are served on a causal-LM student (student.kind causal_lm)")
    return BACKENDS[kind](spec, run, config)
