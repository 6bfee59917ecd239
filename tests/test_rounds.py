"""The loop: `potstill iterate` builds a round from the review queue and promotes it only if it is
not worse on the fixed gate set; `potstill rollback` goes back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_rows
from fake_openai import FakeOpenAI
from test_serve_support import LABELS, fresh_run, tiny_run  # noqa: F401

from potstill.paths import RunPaths
from potstill.rounds import (
    Case,
    cases_from_queue,
    iterate,
    load_state,
    merge_records,
    rollback,
    round_dir,
    should_promote,
)
from potstill.serve.calibrate import load_run_spec
from potstill.store import Store
from potstill.teachers.base import Answer


def item(i, kind, text, **kw):
    return {"id": i, "kind": kind, "input": text, "feedback": None, "teacher_label": None,
            "served_label": None, **kw}


# -- pure pieces ---------------------------------------------------------------------------------
def test_cases_from_queue_known_answer():
    labels = ["a", "b", "c"]
    answers = {"x": Answer(label="b", probs=[0.1, 0.8, 0.1]), "y": Answer(label="a", probs=[0.6, 0.3, 0.1]),
               "w": Answer(label="c", probs=[0.0, 0.1, 0.9]), "v": Answer(label=None, error="timeout")}
    items = [
        item(1, "escalation", "x", teacher_label="b"),
        item(2, "feedback", "x", feedback="c"),               # a human wins over the teacher
        item(3, "escalation", "x", teacher_label="b"),        # ...and over later teacher answers
        item(4, "disagreement", "y", teacher_label="a"),
        item(5, "feedback", "held", feedback="a"),            # a gate input: never trained on
        item(6, "degraded", "z", teacher_label="b"),          # no answer now: the queue's label
        item(7, "degraded", "v"),                             # no answer at all
        item(8, "feedback", "w", feedback="wrong", served_label="c"),  # teacher agrees: skipped
        item(9, "feedback", "u", feedback="nope"),            # not a label
        item(10, "escalation", "t", teacher_label="a", detail={"adapter": "other"}),  # another model's
    ]
    cases, skipped = cases_from_queue(items, labels, answers, held_out={"held"})
    got = {c.text: (c.label, c.probs, c.source, c.queue_ids) for c in cases}
    assert got == {"x": ("c", None, "feedback", [1, 2, 3]),
                   "y": ("a", [0.6, 0.3, 0.1], "teacher", [4]),
                   "z": ("b", None, "teacher_label", [6])}
    assert {s["queue_id"]: s["reason"].split(" ")[0] for s in skipped} == {
        5: "in", 7: "no", 8: "marked", 9: "feedback", 10: "answered"}
    assert "timeout" in next(s["reason"] for s in skipped if s["queue_id"] == 7)


def test_should_promote_and_merge_records():
    assert should_promote(0.90, 0.90, 0.0) and should_promote(0.89, 0.90, 0.01)
    assert not should_promote(0.889, 0.90, 0.01)
    base = [{"text": "p", "label": "a"}, {"text": "q", "label": "b"}]
    base_soft = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]], np.float32)
    rows, soft = merge_records(base, base_soft, [Case("q", "c", None, "feedback", [7]),
                                                 Case("r", "a", [0.5, 0.25, 0.25], "teacher", [8])],
                               ["a", "b", "c"])
    assert [(r["text"], r["label"], r.get("gold")) for r in rows] == [
        ("p", "a", None), ("q", "c", "c"), ("r", "a", None)]
    assert rows[1]["source"] == "queue:feedback" and rows[2]["id"] == "queue-8"
    np.testing.assert_allclose(soft[0], [0.9, 0.1, 0.0])
    assert np.isnan(soft[1]).all()  # a human label: hard target only
    np.testing.assert_allclose(soft[2], [0.5, 0.25, 0.25])


# -- the loop on a real tiny run -----------------------------------------------------------------
def _untrained_student(run: Path, tiny_bert: Path) -> None:
    """Replace the deployed student with an untrained one, so a retrained round is better."""
    import shutil

    from potstill.students.classifier import build_classifier

    model, tok = build_classifier(str(tiny_bert), LABELS, [0, 3], seed=1)
    shutil.rmtree(run / "student")
    model.save_pretrained(run / "student")
    tok.save_pretrained(run / "student")


def _digest(d: Path) -> str:
    import hashlib

    return hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()


def test_iterate_promotes_a_better_round_refuses_a_worse_one_and_rolls_back(tiny_run, tiny_bert, tmp_path):
    run_dir = fresh_run(tiny_run, tmp_path / "run")
    _untrained_student(run_dir, tiny_bert)
    run = RunPaths(run_dir)
    truth = {r["text"]: r["label"] for r in make_rows(60, 4)}  # new inputs, unseen by the run
    with Store(run.db) as store:
        for k, text in enumerate(truth):
            store.queue_add({"kind": "escalation", "reason": "low_confidence", "input": text,
                             "teacher_label": truth[text]})
    fake = FakeOpenAI(lambda t: truth.get(t) or next(r["label"] for r in make_rows(240, 1) if r["text"] == t))
    with fake as url:
        spec = load_run_spec(run.root, [f"teacher.base_url={url}", "train.ce_weight=1.0"])
        rec = iterate(spec, run)
    assert rec["promoted"] and rec["round"] == 1 and rec["candidate"] > rec["deployed"] + 0.3
    assert _digest(run.student) == _digest(round_dir(run, 1) / "student")
    assert (round_dir(run, 1) / "calibration.json").exists()
    cal = json.loads((run.root / "calibration.json").read_text())
    assert cal["student_version"] == json.loads((round_dir(run, 1) / "calibration.json").read_text())["student_version"]
    with Store(run.db) as store:
        assert store.queue_counts() == {}  # every case was used by the promoted round
        assert {i["used_in_round"] for i in store.queue_items()} == {"round-001"}
    taken = (round_dir(run, 1) / "records" / "from_queue.jsonl").read_text().splitlines()
    assert len(taken) == 60 and all(json.loads(l)["source"] == "teacher" for l in taken)
    assert fake.count == 60  # the teacher was asked once per queued input, nothing else

    # a worse round: humans "correct" every training input to a wrong label
    train = make_rows(240, 1)
    with Store(run.db) as store:
        for r in train:
            wrong = LABELS[(LABELS.index(r["label"]) + 1) % 3]
            store.queue_add({"kind": "feedback", "reason": "corrected", "input": r["text"],
                             "feedback": wrong})
    deployed = _digest(run.student)
    rec2 = iterate(spec, run)
    assert not rec2["promoted"] and rec2["candidate"] < rec2["deployed"]
    assert _digest(run.student) == deployed  # the deployed student is untouched
    with Store(run.db) as store:
        assert store.queue_counts() == {"feedback": 240}  # left for a later round
    state = load_state(run)
    assert state["deployed"] == 1 and [r["status"] for r in state["rounds"]] == ["retired", "deployed", "refused"]

    rollback(spec, run)
    assert _digest(run.student) == _digest(round_dir(run, 0) / "student")
    assert load_state(run)["deployed"] == 0
    with pytest.raises(ValueError, match="nothing to roll back"):
        rollback(spec, run)


def test_iterate_with_an_empty_queue_says_so(tiny_run, tmp_path):
    run = RunPaths(fresh_run(tiny_run, tmp_path / "run"))
    with pytest.raises(ValueError, match="0 usable queue case"):
        iterate(load_run_spec(run.root), run)
