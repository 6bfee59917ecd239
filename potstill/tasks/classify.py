"""`kind: classify`: one label per input, from a fixed label set.

A teacher's answer is a label (parsed from its text by `answers.parse_label`) and, when the
teacher gives one, a distribution over the labels (`labels/soft.npy`). The filter drops records
with no label, low confidence (top probability) or a label that disagrees with gold. Predictions
are labels; the report gives accuracy, macro-F1 and agreement with the teacher.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from ..answers import Answer, parse_label
from ..data.inputs import InputError, Splits, normalise
from ..spec import FilterSpec, TaskSpec
from .base import agreement, input_checks, summary_lines


def accuracy(gold: Sequence[str], pred: Sequence[str | None]) -> float:
    return sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1)


def macro_f1(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> float:
    """Macro-F1 over the labels that occur in gold or predictions (sklearn's convention)."""
    from sklearn.metrics import f1_score

    return float(f1_score(gold, [p if p is not None else "<none>" for p in pred],
                          labels=[l for l in labels if l in set(gold) | set(pred)],
                          average="macro", zero_division=0))


def check_record(rec: dict[str, Any], f: FilterSpec, seen: set[str]) -> str | None:
    """The reason `rec` is dropped under policy `f`, or None to keep it. Adds kept texts to `seen`."""
    if rec.get("error"):
        return "teacher_error"
    if rec.get("label") is None:
        return "no_label"  # unparseable answer, or a label outside the task's set
    why = input_checks(rec, rec["label"], f, seen)
    if why:
        return why
    key = normalise(rec["text"])
    conf = rec.get("confidence")
    if f.min_confidence > 0 and conf is not None and conf < f.min_confidence:
        return "low_confidence"
    if f.drop_gold_disagreement and rec.get("gold") is not None and rec["gold"] != rec["label"]:
        return "gold_disagreement"
    seen.add(key)
    return None


class Classify:
    kind: str = "classify"
    metric: str = "accuracy"
    quality: tuple[tuple[str, str], ...] = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"))
    """(report.json key, column title) of the quality metrics, headline first."""
    reasons: tuple[str, ...] = ("teacher_error", "no_label", "too_short", "too_long", "duplicate", "low_votes",
               "low_confidence", "gold_disagreement")
    local_student: str | None = "classifier"

    def label_set(self, spec: TaskSpec, splits: Splits) -> list[str]:
        everything = splits.train + splits.validation + splits.test
        labels = list(spec.labels) if spec.labels else sorted({ex.gold for ex in everything if ex.gold})
        if len(labels) < 2:
            raise InputError(f"{spec.data.train}: found {len(labels)} label(s) in the data; list `labels` "
                             "in the spec")
        known = set(labels)
        for name in ("train", "validation", "test"):
            for ex in getattr(splits, name):
                if ex.gold is not None and ex.gold not in known:
                    raise InputError(f"{ex.id}: label {ex.gold!r} ({name} split) is not one of the spec's "
                                     "labels")
        return labels

    def input_fingerprint(self, spec: TaskSpec) -> list[Any]:
        return []

    def record_fields(self, answer: Answer) -> dict[str, Any]:
        return {}

    def prepare_record(self, rec: dict[str, Any], spec: TaskSpec) -> dict[str, Any]:
        return rec

    check_record = staticmethod(check_record)

    def labelled(self, rec: dict[str, Any]) -> bool:
        return rec.get("label") is not None

    def filter_summary(self, records: list[dict[str, Any]], kept: list[int]) -> dict[str, Any]:
        return {"kept_per_label": dict(Counter(records[i]["label"] for i in kept).most_common())}

    def gold_answer(self, gold: str | None) -> Any:
        return gold

    def teacher_prediction(self, answer: Answer) -> Any:
        return answer.label

    def from_text(self, text: str, spec: TaskSpec, labels: Sequence[str]) -> Any:
        return parse_label(text, list(labels))

    def within_input(self, pred: Any, source: str, spec: TaskSpec) -> Any:
        return pred

    def to_json(self, pred: Any) -> Any:
        return pred

    def score(self, gold: Sequence[Any], pred: Sequence[Any], labels: Sequence[str],
              teacher: Sequence[Any] | None, spec: TaskSpec | None = None) -> dict[str, Any]:
        m = {"accuracy": round(accuracy(gold, pred), 4), "macro_f1": round(macro_f1(gold, pred, labels), 4)}
        if teacher is not None:
            m["agreement_with_teacher"] = round(agreement(pred, teacher), 4)
        return m

    # -- serving ---------------------------------------------------------------------------------
    has_label_set: bool = True
    answer_is_text: bool = False

    def serve_answer(self, text: str, labels: Sequence[str], schema: dict[str, Any] | None
                     ) -> tuple[str | None, str | None, dict[str, Any]]:
        """A causal student's generated text -> (served answer, error, extra)."""
        label = parse_label(text, list(labels))
        if label is None:
            return None, f"no label in the answer: {text[:120]!r}", {"text": text}
        return label, None, {"text": text}

    def same_answer(self, answer: str | None, reference: str | None) -> bool:
        return answer is not None and answer == reference

    def feedback_answer(self, answer: str, labels: Sequence[str], schema: dict[str, Any] | None) -> str:
        """A client's corrected answer, checked (ValueError says why it is refused)."""
        if labels and answer not in labels:
            raise ValueError(f"answer must be one of the task's labels or \"wrong\", not {answer[:200]!r}")
        return answer

    def metric_for(self, spec: TaskSpec) -> str:
        return self.metric

    def report_header(self, labels: Sequence[str], spec: TaskSpec | None = None) -> dict[str, Any]:
        return {"labels": len(labels)}

    def table(self, report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        head = ["model", "accuracy", "macro-F1", "agree w/ teacher", "params", "p50 ms", "p95 ms", "inputs/s"]
        rows = []
        for name, m in report["models"].items():
            rows.append([name, f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}",
                         str(m.get("agreement_with_teacher", "—")),
                         f"{m['params'] / 1e6:.1f}M" if m.get("params") else "—",
                         str(m.get("latency_ms_p50") or "—"), str(m.get("latency_ms_p95") or "—"),
                         str(m.get("throughput_per_s") or "—")])
        return head, rows

    def render_markdown(self, report: dict[str, Any]) -> str:
        head, rows = self.table(report)
        d = report["data"]
        lines = [f"# potstill report: {report['task']}", "",
                 f"Held-out test: {report['test_rows']} rows, {report['labels']} labels.", "",
                 "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1),
                 *("| " + " | ".join(r) + " |" for r in rows), ""]
        lines += summary_lines(report, "accuracy", "accuracy")
        lines += ["## Data", "",
                  f"inputs {d['inputs']} (of which {d.get('augmented') or 0} augmented) → labelled "
                  f"{d['labeled']} → kept {d['kept']} (dropped {d['dropped']})", ""]
        if d.get("dropped_by_reason"):
            lines += [f"- {k}: {v}" for k, v in d["dropped_by_reason"].items() if v] + [""]
        return "\n".join(lines)


TASK = Classify()
