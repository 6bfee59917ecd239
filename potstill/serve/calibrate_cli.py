"""`potstill calibrate`: the command. A classifier student gets calibrate.py's sweep
(temperature, OOD statistics, two thresholds for every teacher share); a student routed on one
confidence threshold (a tagger, a causal LM) gets it chosen by its own serving backend
(serve/backends.py), saved where `potstill serve` reads it. Kept apart from calibrate.py, which
the backends themselves import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import PotstillError
from ..paths import RunPaths
from ..spec import TaskSpec
from .app import ServeConfig
from .backends import build_backend, sweep_calibrated
from .calibrate import _fmt, calibrate, load_run_spec, print_calibration


def calibrate_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with a trained student/.")],
    teacher_share: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Target share of traffic sent to the teacher, e.g. 0.10 "
        "(default: serve.teacher_share).")] = None,
    target_accuracy: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Instead: the smallest teacher share whose hybrid accuracy "
        "reaches this.")] = None,
    ask_teacher: Annotated[bool, typer.Option(
        "--ask-teacher", help="Ask an API teacher for the validation rows it has no cached answer "
        "for (this costs money); without it they are assumed answered right.")] = False,
    test: Annotated[bool, typer.Option(
        "--test", help="Also apply every row's thresholds to the test split (+ serve.ood_test).")] = False,
    set: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a spec field, e.g. --set serve.ood_method=knn. Repeatable.")] = None,
    model: Annotated[str, typer.Option(
        help="Which of the run's models: student, teacher or baseline (served, e.g., as the "
        "teacher of another run).")] = "student",
):
    """Choose the routing thresholds on the validation split; print and save the trade-off.

    Fits temperature scaling and out-of-distribution statistics for the student, then, for each
    expected share of traffic sent to the teacher, the thresholds that make the hybrid
    (student + teacher) most accurate and catch the most out-of-scope inputs. Writes
    RUN_DIR/calibration.json, which `potstill serve` reads.

    A tagger or causal-LM student (extract, generate) has one threshold, on its answer's
    confidence: chosen for the teacher share on the validation split and saved as
    RUN_DIR/calibration.extract.json or calibration.causal.json.
    """
    run = RunPaths(Path(run_dir))
    spec = load_run_spec(run.root, set or [])
    if not sweep_calibrated(spec.student.kind):
        print_threshold_calibration(calibrate_threshold_kind(spec, run, teacher_share, target_accuracy,
                                                             test, model))
        return
    doc = calibrate(spec, run, teacher_share, target_accuracy, ask_teacher, test, model)
    print_calibration(doc)


def calibrate_threshold_kind(spec: TaskSpec, run: RunPaths, teacher_share: float | None,
                             target_accuracy: float | None, test: bool, model: str) -> dict[str, Any]:
    """`potstill calibrate` for a student routed on one confidence threshold (a tagger, a causal
    LM): the serving backend chooses it on the validation split and saves it where `potstill
    serve` reads it (`threshold_on_validation`); an up-to-date saved choice is kept."""
    kind = spec.student.kind
    if target_accuracy is not None or test:
        flag = "--target-accuracy" if target_accuracy is not None else "--test"
        raise PotstillError(f"{flag} is for classifier students; a {kind} student is calibrated for a "
                            "teacher share (--teacher-share, default serve.teacher_share)")
    if spec.serve.confidence_threshold is not None:
        raise PotstillError(f"serve.confidence_threshold is set by hand "
                            f"({spec.serve.confidence_threshold}): nothing to calibrate; remove it "
                            "(or --set serve.confidence_threshold=null) to choose one on validation")
    config = ServeConfig(run.root, spec=spec, teacher=None, teacher_share=teacher_share, model=model)
    _, cal, _, _ = build_backend(spec, run, config)
    return {**cal, "kind": kind}


def print_threshold_calibration(doc: dict[str, Any]) -> None:
    p = doc["operating_point"]
    print(f"{doc['task']} ({doc['kind']} student, {p['rows']} validation rows): answers with confidence "
          f"below {_fmt(p['confidence_threshold'])} go to the teacher: {p['teacher_share']:.1%} of rows "
          f"(target {p['target_share']:.1%}); invalid answers always go ({p['invalid_share']:.1%}).")
    hybrid = "—" if p["hybrid_accuracy"] is None else f"≤{p['hybrid_accuracy']:.2%}"
    print(f"student alone: {p['student_accuracy']:.2%} of answers right; hybrid {hybrid} "
          "(an upper bound: escalated rows are counted right)")
    print(f"saved {doc.get('saved_to', '')} ({doc['created_at']}); `potstill serve` reads it while the "
          "student and these settings stay the same")
