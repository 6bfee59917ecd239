"""The verdict (fine-tune / distill / teacher), the teacher guard, and the gold-budget crossover."""

import pytest

from potstill.curve import crossover, curve, curve_points
from potstill.verdict import noise_margin, teacher_guard, verdict


def test_guard_fires_on_a_weak_teacher_and_stays_quiet_on_a_strong_one():
    # the second dataset: teacher 0.8227 vs a 2-layer gold-only model 0.8705 (3,000 rows)
    g = teacher_guard(0.8227, 0.8705, 3000)
    assert g is not None and "weaker than" in g["warning"] and "fine-tun" in g["warning"]
    assert teacher_guard(0.9451, 0.9289, 3000) is None  # gap 1.6 points > margin 1.2
    # a gap inside the noise: "not clearly better"
    g = teacher_guard(0.90, 0.89, 500)
    assert g is not None and "not clearly better" in g["warning"] and g["noise_margin"] > 0.01
    assert teacher_guard(None, 0.9, 100) is None and teacher_guard(0.9, None, 100) is None


def test_noise_margin_is_the_binomial_interval_of_a_difference():
    assert noise_margin(0.9, 1000) == pytest.approx(1.96 * (2 * 0.9 * 0.1 / 1000) ** 0.5)
    assert noise_margin(0.9, 0) == float("inf")


def test_verdict_weak_teacher_says_fine_tune():
    v = verdict(0.8227, 0.7987, 0.8705, 3000)
    assert v["deploy"] == "fine-tune" and "fix the teacher" in v["reason"]
    assert v["teacher"] == 0.8227 and v["baseline"] == 0.8705 and v["rows"] == 3000


def test_verdict_strong_teacher_good_student_says_distill():
    v = verdict(0.95, 0.945, 0.90, 4500)
    assert v["deploy"] == "distill" and v["student_over_teacher"] == pytest.approx(0.9947, abs=1e-4)


def test_verdict_student_far_behind_says_teacher_or_fine_tune():
    assert verdict(0.95, 0.80, 0.82, 4500)["deploy"] == "teacher"
    # baseline within 2% of the teacher, student far below: fine-tune
    assert verdict(0.95, 0.85, 0.94, 4500)["deploy"] == "fine-tune"
    # no baseline measured, student close: distill; far: teacher
    assert verdict(0.95, 0.94, None, 4500)["deploy"] == "distill"
    assert verdict(0.95, 0.70, None, 4500)["deploy"] == "teacher"


def test_verdict_weak_teacher_but_student_beats_baseline_says_distill():
    assert verdict(0.80, 0.86, 0.80, 3000)["deploy"] == "distill"


def _rows(points):
    out = []
    for obj, n, acc in points:
        out.append({"objective": obj, "gold_labels": n, "accuracy": acc})
    return out


def test_crossover_interpolates_where_gold_catches_up():
    rows = _rows([("gold", 150, 0.30), ("both", 150, 0.80), ("gold", 750, 0.70), ("both", 750, 0.85),
                  ("gold", 1500, 0.90), ("both", 1500, 0.88), ("distill", 0, 0.84),
                  ("gold", 15000, 0.93), ("both", 15000, 0.92)])
    pts = curve_points(rows)
    assert pts["distill"] == [(150, 0.84), (750, 0.84), (1500, 0.84), (15000, 0.84)]
    c = crossover(pts, n_classes=150)
    # at 750: gold - best(both, distill) = 0.70 - 0.85 = -0.15; at 1500: 0.90 - 0.88 = +0.02
    assert c["status"] == "crossover"
    assert c["gold_labels"] == round(750 + 750 * 0.15 / 0.17)
    assert c["per_class"] == pytest.approx(c["gold_labels"] / 150, abs=0.1)
    assert "distill" in c["message"] and "per class" in c["message"]
    assert curve(rows, 150)["crossover"] == c


def test_crossover_counts_a_difference_inside_the_noise_margin_as_caught_up():
    """CLINC150's measured curve (docs/RESULTS.md): at all 14,966 gold labels gold-only trails
    distillation by 0.2 point, inside the ±0.94-point margin of 4,500 test rows; that is not
    "distill at every budget"."""
    rows = _rows([("gold", 3742, 0.9058), ("both", 3742, 0.9460), ("distill", 0, 0.9451),
                  ("gold", 14966, 0.9431), ("both", 14966, 0.9458)])
    pts = curve_points(rows)
    assert crossover(pts, 150)["status"] == "distill_everywhere"  # no margin: any lead wins
    c = crossover(pts, 150, margin=0.0094)
    assert c["status"] == "crossover"
    d0, d1 = 0.9058 - 0.9460 + 0.0094, 0.9431 - 0.9458 + 0.0094
    assert c["gold_labels"] == round(3742 + (14966 - 3742) * -d0 / (d1 - d0))
    assert "within ±0.94%" in c["message"]
    assert curve(rows, 150, 0.0094)["crossover"] == c
    # a margin wider than every gap: gold-only matches distillation at every budget
    wide = crossover(pts, 150, margin=0.05)
    assert wide["status"] == "gold_everywhere" and "within ±5.00%" in wide["message"]


def test_crossover_edges():
    assert crossover(curve_points(_rows([("gold", 10, 0.9), ("both", 10, 0.8)])))["status"] == "gold_everywhere"
    c = crossover(curve_points(_rows([("gold", 10, 0.5), ("both", 10, 0.8), ("gold", 100, 0.7),
                                      ("both", 100, 0.8)])))
    assert c["status"] == "distill_everywhere" and c["gold_labels"] is None
    assert crossover({})["status"] == "unknown"


def test_guard_after_baseline_reads_the_fitted_teacher_and_warns(tmp_path, monkeypatch):
    """The run-level hook: a fitted teacher whose validation accuracy (its manifest) is below the
    fresh baseline's gets a warning in the log; a strong one gets none."""
    import json
    from types import SimpleNamespace

    from potstill.stages import guard

    lines = []
    monkeypatch.setattr(guard, "log", lines.append)
    (tmp_path / "teacher").mkdir()
    spec = SimpleNamespace(teacher=SimpleNamespace(kind="fit"))
    run = SimpleNamespace(teacher=tmp_path / "teacher")
    inputs = SimpleNamespace(validation=[SimpleNamespace(gold="a")] * 1000)

    def teacher_val(acc):
        (tmp_path / "teacher" / "manifest.json").write_text(json.dumps({"metrics": {"best_val_accuracy": acc}}))

    teacher_val(0.70)
    g = guard.guard_after_baseline(spec, run, inputs, {"best_val_accuracy": 0.85})
    assert g is not None and lines and lines[0].startswith("WARNING: the teacher (70.00% on validation)")
    lines.clear()
    teacher_val(0.95)
    assert guard.guard_after_baseline(spec, run, inputs, {"best_val_accuracy": 0.85}) is None and not lines
    # an API teacher: nothing to compare on validation, no warning
    spec.teacher.kind = "openai"
    assert guard.guard_after_baseline(spec, run, inputs, {"best_val_accuracy": 0.99}) is None


def test_guard_after_baseline_passes_over_a_teacher_that_is_not_installed(monkeypatch):
    """`potstill train --baseline` ends with the guard; a teacher whose packaged GGUF is not
    installed (or, for a task kind other than classify, any hf teacher) is nothing to compare
    against, not a crash after the baseline has trained."""
    from types import SimpleNamespace

    from potstill.stages import guard
    from potstill.students import hf, model_source

    monkeypatch.setitem(model_source.PACKAGED, "nope-135m", ("no_such_pkg_xyz", "a.gguf"))
    run = SimpleNamespace(teacher=None)
    inputs = SimpleNamespace(validation=[SimpleNamespace(gold="a")] * 100)
    for kind in ("classify", "generate"):
        spec = SimpleNamespace(kind=kind, teacher=SimpleNamespace(kind="hf", model="nope-135m"))
        assert hf.local_teacher_or_none(spec, run) is None
        assert guard.guard_after_baseline(spec, run, inputs, {"best_val_accuracy": 0.9}) is None
    # a generate task's hf teacher is not loaded as a classifier at all
    spec = SimpleNamespace(kind="generate", teacher=SimpleNamespace(kind="hf", model="anything"))
    monkeypatch.setattr(hf, "resolve_model_path", lambda name: (_ for _ in ()).throw(AssertionError("resolved")))
    assert guard.teacher_val_accuracy(spec, run, inputs) is None

