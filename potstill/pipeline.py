"""One round of the whole flow: inputs -> (teacher fit) -> label -> filter -> student (+ baseline)
-> evaluation. Each stage reads the previous stage's files from the run directory, so any stage
can also run alone (see cli.py), and a finished stage whose inputs did not change is skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import run_paths
from .progress import log
from .spec import TaskSpec
from .stages.evaluate import evaluate
from .stages.filter import filter_stage
from .stages.label import label
from .stages.prepare import prepare_inputs
from .stages.train import fit_teacher, train_student


def run_all(spec: TaskSpec, workdir: str | Path | None = None) -> dict[str, Any]:
    run = run_paths(spec, workdir)
    log(f"run directory: {run.root}")
    prepare_inputs(spec, run)
    if spec.teacher.kind == "fit":
        fit_teacher(spec, run)
    label(spec, run)
    filter_stage(spec, run)
    if spec.train.baseline:  # first, so the guard (guard.py) can warn before distilling
        train_student(spec, run, "baseline")
    train_student(spec, run, "student")
    report = evaluate(spec, run)
    from .report import write_report_safely  # local: matplotlib loads only when a report is drawn

    write_report_safely(run.root)  # logs and carries on if plotting fails: report.json is kept
    return report
