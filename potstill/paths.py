"""The one place that knows the artifact file names inside a run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def db(self) -> Path:
        """SQLite store: teacher-call cache (and later the routing log and queue)."""
        return self.root / "potstill.db"

    @property
    def spec(self) -> Path:
        """The resolved spec of the last stage that ran."""
        return self.root / "spec.resolved.json"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def teacher(self) -> Path:
        """A teacher fitted by `potstill teacher fit` (a Hugging Face model directory)."""
        return self.root / "teacher"

    @property
    def labels(self) -> Path:
        return self.root / "labels"

    @property
    def filtered(self) -> Path:
        return self.root / "filtered"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def baseline(self) -> Path:
        return self.root / "baseline"

    @property
    def rounds(self) -> Path:
        """`potstill iterate`: versioned rounds of the student (see rounds.py)."""
        return self.root / "rounds"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    def model_dir(self, which: str) -> Path:
        return {"teacher": self.teacher, "student": self.student, "baseline": self.baseline}[which]


# file names inside stage directories
MANIFEST = "manifest.json"
RECORDS = "records.jsonl"        # labels/: one record per training input, in input order
SOFT = "soft.npy"                # labels/: (N, C) float32 teacher distributions, rows = records
KEPT = "kept.jsonl"              # filtered/
DROPPED = "dropped.jsonl"        # filtered/
FILTER_REPORT = "filter_report.json"
SPLITS = ("train", "validation", "test")
CHECKPOINTS = "checkpoints"      # inside a model directory while it trains
HISTORY = "history.json"         # per-epoch training curves inside a model directory

# files at the run directory's top level and in eval/ (relative to the run directory)
EVAL_DIR = "eval"
PREDICTIONS = "eval/predictions.jsonl"        # one row per test input: gold and every model's answer
STUDENT_LOGITS = "eval/student_logits.npy"    # (N, C) classifier student logits on the test split
STUDENT_LABELS = "eval/student_labels.json"   # (C) their label order
CALIBRATION_JSON = "calibration.json"         # `potstill calibrate`: thresholds and the trade-off table
CALIBRATION_DIR = "calibration"               # its temperature, OOD statistics
COMPARE_JSON = "compare.json"                 # `potstill compare`
COMPARE_MD = "compare.md"
COMPARE_DIR = "compare"                       # its variants' run directories
REPORT_HTML = "report.html"
