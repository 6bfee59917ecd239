"""The console says why (issue 14, item 4): teacher failures by kind, skipped queue items by
reason, hybrid accuracies that assume the teacher right marked as upper bounds, confidences never
shown past a threshold. Each test failed before its change; none trains a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytest
from conftest import make_rows, write_jsonl

from potstill.answers import Answer
from potstill.errors import PotstillError

LABELS = ["balance", "transfer", "weather"]


def spec_file(tmp_path: Path, test: bool = False) -> Path:
    write_jsonl(tmp_path / "data/train.jsonl", make_rows(12, 1))
    write_jsonl(tmp_path / "data/validation.jsonl", make_rows(6, 2))
    splits = "{train: data/train.jsonl, validation: data/validation.jsonl"
    if test:
        write_jsonl(tmp_path / "data/test.jsonl", make_rows(6, 3))
        splits += ", test: data/test.jsonl"
    (tmp_path / "potstill.yaml").write_text(f"""
name: tiny
labels: {json.dumps(LABELS)}
data: {splits}}}
teacher: {{kind: openai, model: m, base_url: "http://127.0.0.1:9/v1", max_retries: 0}}
""")
    return tmp_path / "potstill.yaml"


# -- 1. label: teacher failures by kind ------------------------------------------------------------
def test_failure_type_names_the_kind_of_each_teacher_error():
    from potstill.stages.label import failure_type

    assert failure_type("HTTP 429: Too Many Requests") == "HTTP 429"
    assert failure_type("timed out after 30s") == failure_type("timed out after 5s") == "timed out"
    assert failure_type("connection error: refused") == "connection error"
    assert failure_type("malformed response: no choices") == "malformed response"
    # retried: the last attempt decides; a batch's id is not part of the kind
    assert failure_type("HTTP 500: boom (x2); then timed out after 30s (gave up after 3 attempts)") == "timed out"
    assert failure_type("batch b-1: HTTP 500: server error") == "HTTP 500"
    assert failure_type("batch b-2: no result for this input (batch expired)") == "no result for this input"
    assert failure_type("ValueError: bad") == "ValueError" and failure_type("") == "unknown error"


def test_failure_summary_groups_counts_and_quotes_the_first_message():
    from potstill.stages.label import failure_summary

    errors = (["HTTP 429: Too Many Requests, retry later (gave up after 1 attempts)"] * 2
              + ["timed out after 30s"] + ["HTTP 429: slow down"] * 7 + ["timed out after 60s"] * 2)
    assert failure_summary(errors) == (
        "12 teacher failures: 9 × HTTP 429 ('HTTP 429: Too Many Requests, retry later (gave up after "
        "1 attempts)'), 3 × timed out ('timed out after 30s')")
    long = failure_summary(["connection error: " + "x" * 500])
    assert long.startswith("1 teacher failure: 1 × connection error ('connection error: xxx")
    assert len(long) < 220 and "…" in long  # the message is clipped
    many = failure_summary([f"E{i}: no" for i in range(7)], most=5)
    assert many.count(" × ") == 5 and many.endswith("2 more of 2 other kind(s)")


class FailingTeacher:
    """Every text fails, in the ways the list says (cycled)."""

    identity = "failing@test"
    labels = LABELS

    def __init__(self, errors: Sequence[str]):
        self.errors = list(errors)

    def request(self, text: str) -> dict:
        return {"text": text}

    def answer(self, texts: Sequence[str]) -> Iterator[tuple[int, Answer]]:
        for i, _ in enumerate(texts):
            yield i, Answer(label=None, error=self.errors[i % len(self.errors)])


def test_label_logs_and_raises_the_failures_by_kind(tmp_path, capsys):
    from potstill.config import load_spec, run_paths
    from potstill.stages.label import label

    spec = load_spec(spec_file(tmp_path))
    teacher = FailingTeacher(["HTTP 429: Too Many Requests"] * 3 + ["timed out after 30s"])
    with pytest.raises(PotstillError) as e:
        label(spec, run_paths(spec), teacher)
    msg = str(e.value)
    assert "none of the 12 inputs was labelled (12 teacher failures: 9 × HTTP 429 " in msg, msg
    assert "('HTTP 429: Too Many Requests'), 3 × timed out ('timed out after 30s'))" in msg, msg
    err = " ".join(capsys.readouterr().err.split())
    assert "label: 12 teacher failures: 9 × HTTP 429 ('HTTP 429: Too Many Requests'), 3 × timed out" in err, err


def test_label_logs_an_endpoints_text_as_it_is(tmp_path, capsys):
    from potstill.config import load_spec, run_paths
    from potstill.stages.label import label

    spec = load_spec(spec_file(tmp_path))
    with pytest.raises(PotstillError, match="12 × HTTP 404"):  # not rich's MarkupError
        label(spec, run_paths(spec), FailingTeacher(["HTTP 404: no route [/v1/chat] [bold]x"]))
    assert "('HTTP 404: no route [/v1/chat] [bold]x')" in capsys.readouterr().err


# -- 2. iterate: skipped queue items by reason -----------------------------------------------------
def item(i, kind, text, **kw):
    return {"id": i, "kind": kind, "input": text, "feedback": None, "teacher_label": None,
            "served_label": None, **kw}


def test_skip_summary_counts_reasons_without_their_details():
    from potstill.rounds import cases_from_queue, skip_summary

    answers = {"v": Answer(label=None, error="HTTP 500: boom"), "w": Answer(label=None, error="timed out")}
    items = [item(1, "feedback", "held", feedback="balance"), item(2, "escalation", "held"),
             item(3, "degraded", "v"), item(4, "degraded", "w"), item(5, "degraded", "u"),
             item(6, "feedback", "a", feedback="nope"), item(7, "feedback", "b", feedback="other"),
             item(8, "escalation", "c", teacher_label="balance", detail={"adapter": "x"}),
             item(9, "escalation", "d", teacher_label="balance", detail={"adapter": "y"}),
             item(10, "escalation", "held")]
    cases, skipped = cases_from_queue(items, LABELS, answers, held_out={"held"})
    assert cases == [] and len(skipped) == 10
    assert skip_summary(skipped) == (
        "3 × in a held-out split, validation or test: held-out texts are never trained on, so the "
        "gate stays unseen, 3 × no teacher answer for it, 2 × feedback names no task label, "
        "2 × answered by an added adapter, not this run's student")
    # the details stay in each item's own reason (skipped_queue.jsonl)
    assert {s["queue_id"]: s["reason"] for s in skipped}[3] == "no teacher answer for it (HTTP 500: boom)"
    assert {s["queue_id"]: s["reason"] for s in skipped}[6] == "feedback names no task label ('nope')"


def test_iterate_says_why_no_queue_item_was_usable(tmp_path):
    from potstill.config import load_spec, run_paths
    from potstill.rounds import _gate_set, iterate, save_state
    from potstill.stages.prepare import prepare_inputs
    from potstill.store import Store

    spec = load_spec(spec_file(tmp_path, test=True))
    run = run_paths(spec)
    _, _, digest = _gate_set(spec, run, "test")
    run.rounds.mkdir(parents=True)
    save_state(run, {"gate": {"split": "test", "hash": digest}, "deployed": 0, "deployed_history": [0],
                     "rounds": [{"round": 0, "status": "deployed"}]})
    inputs = prepare_inputs(spec, run)
    held = [ex.text for ex in inputs.test + inputs.validation]
    with Store(run.db) as store:
        for text in held[:5]:
            store.queue_add({"kind": "feedback", "reason": "corrected", "input": text, "feedback": "balance"})
        store.queue_add({"kind": "feedback", "reason": "corrected", "input": "new words", "feedback": "nope"})
    with pytest.raises(PotstillError) as e:
        iterate(spec, run)
    assert str(e.value) == (
        "0 usable queue case(s) from 6 unused queue item(s); skipped: 5 × in a held-out split, "
        "validation or test: held-out texts are never trained on, so the gate stays unseen, "
        "1 × feedback names no task label; a round needs at least 1 (--min-cases)")


# -- 3. calibrate: an accuracy that assumes the teacher right is an upper bound -------------------
def test_summarise_counts_escalated_rows_scored_without_a_teacher_answer():
    from potstill.serve.calibrate import Rows, summarise

    rows = Rows(np.array([0.1, 0.2, 0.9, 0.95]), None, np.zeros(4, bool))
    s_ok = np.array([False, False, True, True])
    t_ok = np.ones(4, bool)
    known = np.array([True, False, False, True])
    assert summarise(rows, 0.3, None, s_ok, t_ok, t_known=known)["teacher_assumed_right"] == 1
    assert summarise(rows, 0.15, None, s_ok, t_ok, t_known=known)["teacher_assumed_right"] == 0
    assert summarise(rows, None, None, s_ok, t_ok, t_known=~known)["teacher_assumed_right"] == 0
    assert summarise(rows, 0.3, None, s_ok, t_ok)["teacher_assumed_right"] == 0  # all answers known


def calibration_doc(assumed: Sequence[int], test_assumed: Sequence[int] | None = None) -> dict:
    def row(share, acc, a):
        return {"target_share": share, "teacher_share": share, "hybrid_accuracy": acc,
                "teacher_assumed_right": a, "oos_caught": None, "teacher_share_with_oos": share,
                "cost_per_1000": 0.0, "confidence_threshold": 0.5 if share else None,
                "ood_threshold": None}

    table = [row(s, acc, a) for s, acc, a in zip((0.0, 0.1), (0.9, 1.0), assumed)]
    doc = {"task": "tiny", "temperature": 1.0, "saved_to": "x/calibration.json",
           "validation": {"rows": 20, "oos_rows": 0, "student_accuracy": 0.9, "teacher_accuracy": None,
                          "teacher_answers": "the teacher's own answers on 0 of 20 rows",
                          "nll_before": 0.5, "nll_after": 0.4, "ece_before": 0.1, "ece_after": 0.05},
           "cost": {"per_call_usd": 0.0, "source": "none", "shadow_share": 0.0},
           "operating_point": {**table[1], "explanation": "An input goes to the teacher when ..."},
           "table": table}
    if test_assumed is not None:
        doc["test"] = {"rows": 20, "oos_rows": 0,
                       "table": [row(s, acc, a) for s, acc, a in zip((0.0, 0.1), (0.85, 0.95), test_assumed)]}
    return doc


def test_hybrid_cell_marks_an_upper_bound():
    from potstill.serve.calibrate import hybrid_cell

    assert hybrid_cell({"hybrid_accuracy": 1.0, "teacher_assumed_right": 2}) == "≤100.00%"
    assert hybrid_cell({"hybrid_accuracy": 0.975, "teacher_assumed_right": 0}) == "97.50%"
    assert hybrid_cell({"hybrid_accuracy": 0.975, "teacher_assumed_right": True}) == "≤97.50%"  # causal
    assert hybrid_cell({"hybrid_accuracy": None}) == "—"


def test_print_calibration_marks_assumed_accuracies_in_the_table(capsys):
    from potstill.serve.calibrate import print_calibration

    print_calibration(calibration_doc([0, 2], test_assumed=[0, 1]))
    out = capsys.readouterr().out
    assert "≤100.00%" in out and "≤95.00%" in out, out
    assert "90.00%" in out and "≤90.00%" not in out and "≤85.00%" not in out  # measured: plain
    assert out.count("≤: teacher assumed right") == 2, out
    print_calibration(calibration_doc([0, 0], test_assumed=[0, 0]))  # every answer known
    out = capsys.readouterr().out
    assert "≤" not in out and "100.00%" in out and "95.00%" in out


# -- 4. queue list: a confidence is never shown past a threshold ----------------------------------
def test_queue_numbers_never_round_past_a_threshold():
    from decimal import ROUND_CEILING, ROUND_FLOOR

    from potstill.serve.queue import _num

    assert _num(0.8996, ROUND_FLOOR) == "0.899"  # below a 0.90 threshold: not shown as 0.90
    assert _num(0.9, ROUND_FLOOR) == "0.900" and _num(0.285, ROUND_FLOOR) == "0.285"
    assert _num(0.99999, ROUND_FLOOR) == "0.999"
    assert _num(12.3401, ROUND_CEILING) == "12.4"  # an OOD score rounds up: above stays above
    assert _num(None) == "—" and _num(0.0, ROUND_FLOOR) == "0"


def test_queue_list_shows_a_confidence_just_below_the_threshold_below_it(tmp_path):
    import typer
    from typer.testing import CliRunner

    from potstill.paths import RunPaths
    from potstill.serve.queue import queue_list_command
    from potstill.store import Store

    run = RunPaths(tmp_path / "run")
    run.root.mkdir()
    with Store(run.db) as store:
        store.queue_add({"kind": "escalation", "reason": "low_confidence", "input": "what is my balance",
                         "student_label": "balance", "teacher_label": "balance", "confidence": 0.8996,
                         "ood_score": 2.0001, "route": "teacher"})
    cli = typer.Typer()
    cli.command()(queue_list_command)
    res = CliRunner().invoke(cli, [str(run.root)])
    assert res.exit_code == 0, res.output
    assert "0.899" in res.output and "0.9 " not in res.output and "0.90" not in res.output, res.output
    assert "2.01" in res.output, res.output
