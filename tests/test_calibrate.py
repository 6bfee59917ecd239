"""Confidence, OOD and threshold math on known-answer tables; then `potstill calibrate` on a tiny
trained run (offline; an API teacher answered by the stand-in endpoint)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fake_openai import FakeOpenAI
from test_serve_support import LABELS, fresh_run, tiny_run  # noqa: F401

from potstill.serve.calibrate import Rows, escalated, explain, load_run_spec, pick_point, summarise, sweep
from potstill.serve.confidence import (
    KNNStats,
    MahalanobisStats,
    confidence_scores,
    ece,
    fit_ood,
    fit_temperature,
    load_ood,
    nll,
    save_ood,
    softmax,
)


# -- temperature -----------------------------------------------------------------------------------
def test_temperature_known_answer_two_classes():
    # every row has logits (a, 0) and 80% are class 0: the NLL is lowest where
    # sigmoid(a / T) = 0.8, i.e. T = a / logit(0.8) = 4 / ln 4
    logits = np.tile([4.0, 0.0], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    T = fit_temperature(logits, y)
    assert T == pytest.approx(4 / math.log(4), rel=1e-5)
    assert softmax(logits, T)[0, 0] == pytest.approx(0.8, rel=1e-5)
    assert nll(logits, y, T) < min(nll(logits, y, T * 1.1), nll(logits, y, T / 1.1))


def test_temperature_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(20000, 5))
    p = softmax(z, 2.5)
    y = np.array([rng.choice(5, p=row) for row in p])
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(np.zeros((0, 3)), []) == 1.0


def test_temperature_is_bounded_when_validation_is_perfect():
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])
    assert fit_temperature(logits, [0, 1]) == pytest.approx(0.2, rel=1e-4)


# -- scores ----------------------------------------------------------------------------------------
def test_confidence_scores_known_values():
    p = np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert confidence_scores(p, "max_prob") == pytest.approx([0.5, 1.0, 1 / 3])
    assert confidence_scores(p, "margin") == pytest.approx([0.2, 1.0, 0.0])
    h = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert confidence_scores(p, "entropy") == pytest.approx([1 - h / math.log(3), 1.0, 0.0], abs=1e-12)
    with pytest.raises(ValueError):
        confidence_scores(p, "nope")


def test_ece_known_table():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = [0, 1, 0, 1]
    # bin of 0.9: 2 rows, accuracy 0.5 -> 0.5 * 0.4; 0.6: 1 row right -> 0.25 * 0.4;
    # 0.7: 1 row right -> 0.25 * 0.3
    assert ece(probs, y, n_bins=10) == pytest.approx(0.2 + 0.1 + 0.075)
    assert ece(np.array([[1.0, 0.0]]), [0]) == 0.0


def test_mahalanobis_known_distances_and_fit():
    stats = MahalanobisStats(means=np.array([[0.0, 0.0], [10.0, 0.0]]),
                             precision=np.diag([1.0, 0.25]))
    # to mean 0: 1 + 0.25 * 4 = 2; to mean 1: 81 + 1 = 82
    assert stats.score(np.array([[1.0, 2.0], [10.0, 0.0]])) == pytest.approx([2.0, 0.0])

    rng = np.random.default_rng(1)
    a = rng.normal([0, 0, 0], 1, size=(200, 3))
    b = rng.normal([8, 0, 0], 1, size=(200, 3))
    fitted = MahalanobisStats.fit(np.vstack([a, b]), [0] * 200 + [1] * 200, 3)
    assert fitted.means[0] == pytest.approx(a.mean(0), abs=1e-5)
    assert fitted.means[1] == pytest.approx(b.mean(0), abs=1e-5)
    assert fitted.means[2] == pytest.approx(np.vstack([a, b]).mean(0), abs=1e-5)  # unseen class
    near, far = fitted.score(np.array([[0.1, 0, 0], [4.0, 6.0, 0]]))
    assert near < 1 < 9 < far


def test_knn_known_distance():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    stats = KNNStats.fit(bank * 3, k=2)  # scale does not matter: cosine
    # sims of e1: 1, 0, 0.7071 -> the 2nd nearest is 0.7071
    assert stats.score(np.array([[2.0, 0.0]])) == pytest.approx([1 - math.sqrt(0.5)], abs=1e-6)
    assert KNNStats.fit(bank, k=50).k == 3


@pytest.mark.parametrize("method", ["mahalanobis", "knn", "none"])
def test_ood_stats_round_trip(tmp_path, method):
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(30, 4))
    stats = fit_ood(method, emb, rng.integers(0, 3, 30), 3, k=5)
    save_ood(stats, tmp_path / "s.npz")
    back = load_ood(tmp_path / "s.npz")
    q = rng.normal(size=(5, 4))
    assert back.method == method
    assert back.score(q) == pytest.approx(stats.score(q))


# -- threshold search --------------------------------------------------------------------------------
IN = Rows(conf=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
          ood=[1, 1, 1, 1, 9, 1, 1, 1, 1, 1], forced=[False] * 10)
GAIN = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0])  # student wrong, teacher right on rows 0, 1, 4
OOS = Rows(conf=[0.9, 0.95, 0.15, 0.99], ood=[10, 12, 0.5, 0.8], forced=[False] * 4)


def test_sweep_known_answers():
    zero, tenth, third = sweep(IN, GAIN, [0.0, 0.1, 0.3], OOS)
    # budget 0: no in-scope row may go; OOD > 9 still catches two out-of-scope rows for free
    assert zero == {"share": 0.0, "confidence_threshold": 0.1, "ood_threshold": 9.0,
                    "escalated": 0, "gain": 0.0, "caught": 2}
    # budget 1: the least confident row (a student error) + the free OOD catches + 0.15 < 0.2
    assert tenth == {"share": 0.1, "confidence_threshold": 0.2, "ood_threshold": 9.0,
                     "escalated": 1, "gain": 1.0, "caught": 3}
    # budget 3: OOD > 1 takes row 4 (an error), confidence < 0.3 rows 0 and 1 (errors)
    assert third == {"share": 0.3, "confidence_threshold": 0.3, "ood_threshold": 1.0,
                     "escalated": 3, "gain": 3.0, "caught": 3}
    # without out-of-scope rows only the gain counts; the OOD gate is used only where it helps
    (p,) = sweep(IN, GAIN, [0.3])
    assert p["gain"] == 3.0 and p["escalated"] == 3
    # all budget: everything escalates
    (full,) = sweep(IN, GAIN, [1.0], OOS)
    assert escalated(IN, full["confidence_threshold"], full["ood_threshold"]).all()


def test_sweep_weights_and_forced_rows():
    # with out-of-scope catches worth nothing, budget 1 takes the first error either way
    (p,) = sweep(IN, GAIN, [0.1], OOS, oos_weight=0.0)
    assert p["gain"] == 1.0
    # forced rows (high-stakes) are escalated before any gate, and count against the budget
    forced = Rows(IN.conf, IN.ood, [False] * 9 + [True])
    (p,) = sweep(forced, GAIN, [0.1])
    assert p["escalated"] == 1 and p["gain"] == 0.0
    assert escalated(forced, p["confidence_threshold"], p["ood_threshold"]).sum() == 1
    (p0,) = sweep(forced, GAIN, [0.0])  # over budget before any gate: the forced ones only
    assert p0["escalated"] == 1 and p0["confidence_threshold"] is None
    # no OOD score at all
    (p,) = sweep(Rows(IN.conf, None, IN.forced), GAIN, [0.2])
    assert p["ood_threshold"] is None and p["confidence_threshold"] == 0.3 and p["gain"] == 2.0


def test_summarise_known_answers():
    s_ok = 1 - GAIN  # the student is wrong exactly where escalating helps; the teacher always right
    t_ok = np.ones(10, bool)
    r = summarise(IN, 0.3, 1.0, s_ok, t_ok, OOS, cost_per_call=0.002, shadow_share=0.0)
    assert r["teacher_share"] == pytest.approx(0.3)
    assert r["hybrid_accuracy"] == 1.0
    assert r["oos_caught"] == 0.75
    assert r["teacher_share_with_oos"] == pytest.approx(6 / 14)
    assert r["cost_per_1000"] == pytest.approx(1000 * 6 / 14 * 0.002, abs=1e-6)
    assert r["escalated_by"] == {"high_stakes_or_invalid": 0.0, "ood": 0.1, "low_confidence": 0.2}
    none = summarise(IN, None, None, s_ok, t_ok, None, 0.002, shadow_share=0.5)
    assert none["teacher_share"] == 0 and none["hybrid_accuracy"] == 0.7 and none["oos_caught"] is None
    assert none["cost_per_1000"] == pytest.approx(1000 * 0.5 * 0.002)  # shadow checks cost too
    text = explain({**r, "target_share": 0.3}, 10, 4, "max_prob", 1.5, "mahalanobis", ["fraud"])
    assert text.startswith("Expected share of traffic to the teacher: 30.0% of in-scope requests")
    assert "75.0% are caught" in text and "below 0.3" in text and "above 1" in text and "fraud" in text


def test_pick_point():
    cal = {"operating_point": {"target_share": 0.1}, "table": [{"target_share": s} for s in (0.0, 0.05, 0.1)]}
    assert pick_point(cal) == {"target_share": 0.1}
    assert pick_point(cal, 0.04) == {"target_share": 0.05}


# -- the stage on a tiny run -----------------------------------------------------------------------
def _run_cmd(args, monkeypatch=None):
    import typer
    from typer.testing import CliRunner

    from potstill.serve.calibrate_cli import calibrate_command

    app = typer.Typer()
    app.command()(calibrate_command)
    return CliRunner().invoke(app, [str(a) for a in args])


def test_calibrate_command_on_a_tiny_run(tiny_run, tmp_path):
    run = fresh_run(tiny_run, tmp_path / "run")
    res = _run_cmd([run, "--teacher-share", "0.15", "--test"])
    assert res.exit_code == 0, res.output
    doc = json.loads((run / "calibration.json").read_text())
    assert (run / "calibration" / "ood_stats.npz").exists()
    v = doc["validation"]
    assert v["rows"] == 60 and v["oos_rows"] == 12 and 0.2 <= doc["temperature"] <= 20
    assert v["nll_after"] <= v["nll_before"] + 1e-9
    # an API teacher without cached answers: nothing was asked, escalations assumed right
    assert "0 of 60 rows" in v["teacher_answers"] and "60 assumed answered right" in v["teacher_answers"]
    point = doc["operating_point"]
    assert point["target_share"] == 0.15 and point["teacher_share"] <= 0.15
    assert [r["target_share"] for r in doc["table"]][:3] == [0.0, 0.01, 0.02]
    assert {r["target_share"] for r in doc["table"]} >= {0.0, 0.1, 0.15, 0.3}
    for r in doc["table"]:
        assert set(r) >= {"teacher_share", "hybrid_accuracy", "oos_caught", "cost_per_1000",
                          "confidence_threshold", "ood_threshold"}
    shares = [r["teacher_share"] for r in doc["table"]]
    assert shares == sorted(shares)
    assert doc["test"]["rows"] == 60 and doc["test"]["oos_rows"] == 6
    # the price is configured (2$/8$ per million): a cost estimate per 1,000 requests
    assert doc["cost"]["per_call_usd"] > 0 and "estimated from the prices" in doc["cost"]["source"]
    assert point["cost_per_1000"] == pytest.approx(
        1000 * point["teacher_share_with_oos"] * doc["cost"]["per_call_usd"], rel=1e-4)
    out = " ".join(res.output.split())
    assert "Expected share of traffic to the teacher" in out and "hybrid accuracy" in out
    assert "assumed answered right" in out and "OOS caught" in out and "test: hybrid acc" in out


def test_calibrate_counts_the_teachers_own_answers(tiny_run, tmp_path):
    from conftest import make_rows

    run = fresh_run(tiny_run, tmp_path / "run")
    gold = {r["text"]: r["label"] for r in make_rows(60, 2)}  # the validation rows
    wrong = lambda t: LABELS[(LABELS.index(gold[t]) + 1) % 3] if t in gold else "weather"  # noqa: E731
    fake = FakeOpenAI(wrong, labels=LABELS)  # a teacher wrong on every validation row
    with fake as url:
        res = _run_cmd([run, "--ask-teacher", "--set", f"teacher.base_url={url}"])
        assert res.exit_code == 0, res.output
        asked = fake.count
        # a second run reads the teacher's answers from the call cache: no new request
        res2 = _run_cmd([run, "--teacher-share", "0.2", "--set", f"teacher.base_url={url}"])
        assert res2.exit_code == 0, res2.output
        assert fake.count == asked == 60
    doc = json.loads((run / "calibration.json").read_text())
    v = doc["validation"]
    assert v["teacher_accuracy"] == 0.0
    assert "the teacher's own answers on 60 of 60 rows" in v["teacher_answers"]
    assert "the other 0 assumed" in v["teacher_answers"]
    # every escalated row is answered wrong, so the hybrid loses what it sends to the teacher
    for r in doc["table"]:
        assert v["student_accuracy"] - r["teacher_share"] - 1e-9 <= r["hybrid_accuracy"]
        assert r["hybrid_accuracy"] <= 1 - r["teacher_share"] + 1e-9
    assert doc["operating_point"]["target_share"] == 0.2


def test_calibrate_target_accuracy_picks_the_smallest_share(tiny_run, tmp_path):
    from potstill.paths import RunPaths
    from potstill.serve.calibrate import calibrate

    run = fresh_run(tiny_run, tmp_path / "run")
    spec = load_run_spec(run)
    doc = calibrate(spec, RunPaths(run), target_accuracy=0.5)
    p = doc["operating_point"]
    assert p["target_reached"] and p["target_accuracy"] == 0.5
    assert p["target_share"] == 0.0  # the student alone already reaches it
    with pytest.raises(ValueError, match="not both"):
        calibrate(spec, RunPaths(run), teacher_share=0.1, target_accuracy=0.5)


def test_serve_spec_is_typed():
    from pydantic import ValidationError

    from potstill.spec import TaskSpec

    s = TaskSpec(name="x", data={"train": "a"}, serve={"teacher_share": 0.2, "high_stakes": ["a"]})
    assert s.serve.teacher_share == 0.2 and s.serve.host == "127.0.0.1"
    for bad in ({"teacher_shares": 0.2}, {"teacher_share": 2}, {"ood_method": "lof"}):
        with pytest.raises(ValidationError):
            TaskSpec(name="x", data={"train": "a"}, serve=bad)
