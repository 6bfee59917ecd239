"""What every task kind provides (`Task`), and the record checks they all share.

A task kind says what an answer is: its label set (or schema, or none), what a teacher's answer
adds to a labelled record, which records the filter drops and why, how predictions are scored
and how its section of the report reads. Stages hold no kind-specific line: they ask the `Task`
found by `tasks.get_task(spec.kind)`.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from ..answers import Answer
from ..data.inputs import Splits, normalise
from ..spec import FilterSpec, TaskSpec


class Task(Protocol):
    kind: str
    """The spec's `kind`."""
    metric: str
    """The headline metric in report.json's `models` (accuracy, field_f1, exact_match)."""
    quality: tuple[tuple[str, str], ...]
    """(report.json key, column title) of the quality metrics the report shows, headline first."""
    reasons: tuple[str, ...]
    """Why the filter may drop a record, in the order the checks run."""
    local_student: str | None
    """The student kind a fitted teacher (`teacher.kind: fit`) is, or None when it cannot be fitted."""

    def label_set(self, spec: TaskSpec, splits: Splits) -> list[str]:
        """The task's labels (classify), schema fields (extract) or [] (generate), checking the
        gold of every split; raises InputError naming the row."""

    def input_fingerprint(self, spec: TaskSpec) -> list[Any]:
        """What, beyond the data and the label list, changes the prepared inputs."""

    def record_fields(self, answer: Answer) -> dict[str, Any]:
        """What a labelled record carries beside text, gold, label, confidence, votes, raw, error."""

    def prepare_record(self, rec: dict[str, Any], spec: TaskSpec) -> dict[str, Any]:
        """A labelled record plus what the filter's checks need (pure)."""

    def check_record(self, rec: dict[str, Any], f: FilterSpec, seen: set[str]) -> str | None:
        """The reason a prepared record is dropped under `f`, or None to keep it (adds to `seen`)."""

    def labelled(self, rec: dict[str, Any]) -> bool:
        """Whether the teacher's answer gave the record a usable label/output."""

    def filter_summary(self, records: list[dict[str, Any]], kept: list[int]) -> dict[str, Any]:
        """Task-specific counts for filter_report.json (and a note for the log under `_note`)."""

    def gold_answer(self, gold: str | None) -> Any:
        """A test row's gold in the form predictions take (a label, an object, a text)."""

    def teacher_prediction(self, answer: Answer) -> Any:
        """A teacher's cached answer as a prediction."""

    def from_text(self, text: str, spec: TaskSpec, labels: Sequence[str]) -> Any:
        """A generated text (causal-LM student) as a prediction; None when it is not a valid one."""

    def within_input(self, pred: Any, source: str, spec: TaskSpec) -> Any:
        """A prediction for input `source` as the spec asks: under `span_values`, its values made
        spans of the input (every model's, before scoring)."""

    def to_json(self, pred: Any) -> Any:
        """A prediction as it is written to eval/predictions.jsonl."""

    def score(self, gold: Sequence[Any], pred: Sequence[Any], labels: Sequence[str],
              teacher: Sequence[Any] | None, spec: TaskSpec | None = None) -> dict[str, Any]:
        """The metrics of one model's predictions (agreement with the teacher's when given)."""

    def metric_for(self, spec: TaskSpec) -> str:
        """The headline metric of this spec's report (`metric`, unless the spec changes it)."""

    def report_header(self, labels: Sequence[str], spec: TaskSpec | None = None) -> dict[str, Any]:
        """What report.json says about the task beside the models (e.g. {"labels": 150})."""

    def table(self, report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        """Header and rows (strings) of the models table, for the CLI and report.md."""

    def render_markdown(self, report: dict[str, Any]) -> str:
        """report.md from report.json."""

    # serving (serve/): what a served answer is
    has_label_set: bool
    """Answers come from a fixed label list (the server checks feedback and high-stakes against it)."""
    answer_is_text: bool
    """The serving teacher's whole reply is the answer (no label parsing)."""

    def serve_answer(self, text: str, labels: Sequence[str], schema: dict[str, Any] | None
                     ) -> tuple[str | None, str | None, dict[str, Any]]:
        """A causal student's generated text -> (served answer, error, extra)."""

    def same_answer(self, answer: str | None, reference: str | None) -> bool:
        """Whether two served answers agree (calibration counts a row right when they do)."""

    def feedback_answer(self, answer: str, labels: Sequence[str], schema: dict[str, Any] | None) -> str:
        """A client's corrected answer in canonical form; ValueError says why it is refused."""


def input_checks(rec: dict[str, Any], answer: str, f: FilterSpec, seen: set[str]) -> str | None:
    """The checks every task kind shares, in order: input length, near-duplicate input (by
    normalised text), self-consistency (`answer`'s votes, k of n)."""
    n = len(rec["text"].strip())
    if n < f.min_chars:
        return "too_short"
    if f.max_chars is not None and n > f.max_chars:
        return "too_long"
    if f.dedup and normalise(rec["text"]) in seen:
        return "duplicate"
    votes = rec.get("votes")
    if votes and f.min_votes > 1 and votes.get(answer, 0) < f.min_votes:
        return "low_votes"
    return None


def agreement(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Share of rows where two models' predictions are equal (None never agrees)."""
    return sum(x == y and x is not None for x, y in zip(a, b)) / max(len(a), 1)


def summary_lines(report: dict[str, Any], metric: str, label: str) -> list[str]:
    """The summary bullets of report.md: student/teacher, speed-up, student − baseline (or why
    there is no baseline). A number that was not measured is left out, never printed as None."""
    s = report.get("summary") or {}
    if not s:
        return []
    out = [f"- student / teacher {label}: {s[f'student_over_teacher_{metric}']}"
           ] if s.get(f"student_over_teacher_{metric}") is not None else []
    if s.get("latency_speedup") is not None:
        out.append(f"- student latency speed-up (p50): {s['latency_speedup']}x")
    if s.get(f"student_minus_baseline_{metric}") is not None:
        out.append(f"- student − baseline {label}: {s[f'student_minus_baseline_{metric}']}")
    elif report.get("baseline_skipped"):
        out.append(f"- no gold-only baseline: {report['baseline_skipped']}")
    return out + [""]
