"""`potstill compare`: the recommendation rules on known tables, the seeded gold subsets, then the
three (and, with a gold share, five) students on a tiny task, sharing the run's labelled data."""

from __future__ import annotations

import json
import math

import pytest
from test_report_support import copy_run, report_task  # noqa: F401

from potstill.compare import Variant, compare, gold_subset, noise_margin, plan, recommend, render_markdown, table_rows


def _row(objective, acc, share=1.0, usd=None):
    return {"name": objective if share == 1 else f"{objective}@{share:g}", "objective": objective,
            "gold_share": share, "accuracy": acc, "teacher_labels_usd": usd}


def test_noise_margin_known_answer():
    assert noise_margin(0.5, 200) == pytest.approx(1.96 * 0.05)  # sqrt(2 * .25 / 200) = 0.05
    assert noise_margin(1.0, 50) == 0.0 and math.isinf(noise_margin(0.9, 0))


def test_recommend_picks_the_clear_winner_with_reasons():
    rec = recommend([_row("gold", 0.80), _row("distill", 0.90, usd=12.5), _row("both", 0.91, usd=12.5)], 1000)
    assert rec["choice"] == "both"
    assert rec["noise_margin"] == pytest.approx(1.96 * math.sqrt(2 * 0.91 * 0.09 / 1000))
    assert "both beats gold-only by +11.00% (91.00% against 80.00%)" in rec["reasons"][0]
    assert any("$12.50" in r for r in rec["reasons"])


def test_recommend_prefers_gold_within_noise_and_when_it_wins():
    rec = recommend([_row("gold", 0.90), _row("distill", 0.91), _row("both", 0.905)], 100)
    assert rec["choice"] == "gold" and "within the noise margin" in rec["reasons"][0]
    rec = recommend([_row("gold", 0.95), _row("distill", 0.90), _row("both", 0.93)], 1000)
    assert rec["choice"] == "gold" and "add nothing" in rec["reasons"][0]
    assert recommend([], 10)["choice"] is None


def test_recommend_reports_the_scarce_gold_rows():
    rows = [_row("gold", 0.90), _row("distill", 0.92), _row("both", 0.93),
            _row("gold", 0.70, 0.1), _row("both", 0.91, 0.1)]
    rec = recommend(rows, 2000)
    line = [r for r in rec["reasons"] if r.startswith("with 10% of the gold labels")]
    assert line == ["with 10% of the gold labels: gold-only 70.00%, both 91.00%, distill 92.00% (uses no gold)"
                    " — both (teacher + gold) wins"]


def test_plan_and_nested_gold_subsets():
    assert [v.name for v in plan()] == ["gold", "distill", "both"]
    assert plan([0.1, 0.5, 1.0])[3:] == [Variant("gold@0.5", "gold", 0.5), Variant("both@0.5", "both", 0.5),
                                         Variant("gold@0.1", "gold", 0.1), Variant("both@0.1", "both", 0.1)]
    with pytest.raises(ValueError, match="--gold-share"):
        plan([1.5])
    ids = [f"train:{i}" for i in range(1000)]
    quarter, tenth = gold_subset(ids, 0.25, 7), gold_subset(ids, 0.1, 7)
    assert len(quarter) == 250 and len(tenth) == 100 and tenth < quarter
    assert gold_subset(list(reversed(ids)), 0.25, 7) == quarter  # order of the input does not matter
    assert gold_subset(ids, 0.25, 8) != quarter
    assert len(gold_subset(ids[:3], 0.01, 0)) == 1


def test_compare_on_a_tiny_task(report_task, tmp_path):
    spec = copy_run(report_task, tmp_path / "task")
    run = spec.parent / "runs" / "tiny"
    calls_before = _calls(run)
    doc = compare(spec, [], None, [0.25])
    rows = {r["name"]: r for r in doc["rows"]}
    assert list(rows) == ["gold", "distill", "both", "gold@0.25", "both@0.25"]
    report = json.loads((run / "report.json").read_text())
    for r in rows.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["latency_ms_p50"] > 0 and r["cost_per_1k"] > 0
        assert (run / "compare" / r["name"].replace("@", "_share") / "config.json").exists()
    # gold matches the run's own baseline: copied, not retrained (distill would match the student
    # too, but this copy of the run moved the teacher it was initialised from, so it retrains)
    assert rows["gold"]["fingerprint"] == json.loads((run / "baseline" / "manifest.json").read_text())["fingerprint"]
    assert rows["gold"]["accuracy"] == report["models"]["baseline"]["accuracy"]
    assert ((run / "compare" / "gold" / "model.safetensors").read_bytes()
            == (run / "baseline" / "model.safetensors").read_bytes())
    assert rows["distill"]["init_from"] == str(run / "teacher")
    assert (rows["gold"]["gold_labels"], rows["gold"]["teacher_labels"]) == (240, 0)
    kept = json.loads((run / "filtered" / "filter_report.json").read_text())["kept"]
    assert kept >= 230  # the fitted teacher is right on nearly every training row
    assert (rows["distill"]["gold_labels"], rows["distill"]["teacher_labels"]) == (0, kept)
    assert rows["gold@0.25"]["gold_labels"] == 60 and rows["both@0.25"]["gold_labels"] == 60
    man = json.loads((run / "compare" / "gold_share0.25" / "manifest.json").read_text())
    assert man["objective"] == "gold" and man["dataset_hash"] != report_spec(run)["dataset_hash"]
    hist = json.loads((run / "compare" / "gold_share0.25" / "history.json").read_text())
    assert hist["steps"] == 3 * math.ceil(60 / 8)  # trained on the 60 kept gold labels only
    both = json.loads((run / "compare" / "both" / "manifest.json").read_text())
    assert both["objective"] == "both" and both["parents"]["filtered"] == str(run / "filtered")
    assert _calls(run) == calls_before  # labels came from the run's cache: no new teacher call

    assert doc["recommendation"]["choice"] in ("gold", "distill", "both")
    assert doc["recommendation"]["reasons"]
    saved = json.loads((run / "compare.json").read_text())
    assert saved["rows"] == doc["rows"]
    md = (run / "compare.md").read_text()
    assert md == render_markdown(doc) and "**Recommendation:" in md
    cols, trs = table_rows(doc)
    assert len(trs) == 6 and trs[-1][0] == "teacher (reference)"

    # a second compare reuses every model and every measured row
    again = compare(spec, [], None, [0.25])
    assert again["rows"] == doc["rows"]

    # the fine-tune-or-distill curve: gold-only at 60 and 240 labels, distill flat, and a verdict
    pts = doc["curve"]["points"]
    assert [p[0] for p in pts["gold"]] == [60, 240] and [p[0] for p in pts["distill"]] == [60, 240]
    assert doc["curve"]["crossover"]["status"] in ("crossover", "gold_everywhere", "distill_everywhere")
    assert doc["fair_min_steps"] is None  # fixed schedule: no floor

    from potstill.report import write_report

    page = write_report(run)["html"].read_text()
    assert "Recommendation: " + doc["recommendation"]["choice"] in page and "gold@0.25" in page
    assert 'id="plot-gold_curve"' in page and "By gold budget:" in page


def test_compare_gives_every_gold_share_the_full_step_budget(report_task, tmp_path):
    """Adaptive schedule: gold@0.25 (60 labels, 8 steps per epoch) trains for as many steps as the
    full gold set (240 labels) gets, not for a quarter of them."""
    from potstill.config import load_spec
    from potstill.schedule import adaptive_steps

    spec = copy_run(report_task, tmp_path / "task")
    run = spec.parent / "runs" / "tiny"
    sets = ["train.schedule=adaptive", "train.min_steps=10", "train.max_steps=40", "train.patience=null"]
    assert adaptive_steps(load_spec(spec, sets).train, 240) == 40  # 3 epochs x 30 steps, capped at 40
    assert adaptive_steps(load_spec(spec, sets).train, 60) == 24
    doc = compare(spec, sets, None, [0.25])
    assert doc["fair_min_steps"] == 40
    steps = {r["name"]: r["train_steps"] for r in doc["rows"]}
    assert steps["gold@0.25"] == steps["gold"] == 40 and steps["both@0.25"] == 40
    assert "at least 40 optimizer steps" in (run / "compare.md").read_text()


def _calls(run):
    import sqlite3

    con = sqlite3.connect(run / "potstill.db")
    try:
        return con.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    finally:
        con.close()


def report_spec(run):
    return json.loads((run / "inputs" / "manifest.json").read_text())
