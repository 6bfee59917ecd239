"""The report: known-answer tests of its formulas, then report.html/.md from a tiny real run."""

from __future__ import annotations

import base64
import json
import math
import re

import numpy as np
import pytest
from test_report_support import copy_run, report_task  # noqa: F401

from potstill.cost import CostInputs, break_even_requests_per_month, hosting_cost_per_1k, replace
from potstill.report import (
    CSP,
    build_report,
    confusion_pairs,
    cost_curve,
    ece_from_bins,
    per_label_scores,
    reliability_bins,
    render_html,
    write_report,
    write_report_safely,
)
from potstill.serve.confidence import ece, softmax


# -- formulas --------------------------------------------------------------------------------------
def test_reliability_bins_known_table():
    conf = [0.05, 0.5, 0.55, 0.95, 0.95]
    ok = [True, False, True, True, False]
    bins = reliability_bins(conf, ok, n_bins=10)
    filled = {i: b for i, b in enumerate(bins) if b["count"]}
    # (lo, hi] bins: 0.05 -> bin 0, 0.5 -> bin 4 (0.4, 0.5], 0.55 -> bin 5, 0.95 -> bin 9
    assert sorted(filled) == [0, 4, 5, 9]
    assert (filled[0]["accuracy"], filled[0]["confidence"]) == (1.0, 0.05)
    assert (filled[4]["accuracy"], filled[4]["confidence"]) == (0.0, 0.5)
    assert (filled[9]["count"], filled[9]["accuracy"], filled[9]["confidence"]) == (2, 0.5, 0.95)
    assert bins[3] == {"lo": 0.3, "hi": 0.4, "count": 0, "accuracy": None, "confidence": None}
    # ECE = 1/5 * .95 + 1/5 * .5 + 1/5 * .45 + 2/5 * .45
    assert ece_from_bins(bins) == pytest.approx(0.56)


def test_reliability_bins_agree_with_calibrate_ece():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(500, 6))
    y = rng.integers(0, 6, size=500)
    p = softmax(logits, 0.7)
    bins = reliability_bins(p.max(-1), p.argmax(-1) == y, n_bins=15)
    assert sum(b["count"] for b in bins) == 500
    assert ece_from_bins(bins) == pytest.approx(ece(p, y, 15), abs=1e-12)


def test_confusion_pairs_known_answer():
    gold = ["a", "a", "a", "b", "b", "c", "a"]
    pred = ["b", "b", "a", "a", None, "c", "b"]
    texts = [f"t{i}" for i in range(7)]
    pairs = confusion_pairs(gold, pred, texts, examples=2)
    assert pairs == [
        {"gold": "a", "predicted": "b", "count": 3, "examples": ["t0", "t1"]},
        {"gold": "b", "predicted": "<none>", "count": 1, "examples": ["t4"]},  # "<" sorts before "a"
        {"gold": "b", "predicted": "a", "count": 1, "examples": ["t3"]},
    ]
    assert confusion_pairs(gold, pred, top=1)[0]["examples"] == []
    assert confusion_pairs(["x"], ["x"]) == []


def test_per_label_scores_known_answer():
    rows = per_label_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b", "c"])
    a, b, c = rows
    assert (a["precision"], a["recall"], a["support"]) == (1.0, 0.5, 2)
    assert a["f1"] == pytest.approx(2 / 3)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0 and b["f1"] == pytest.approx(0.8)
    assert c == {"label": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_hosting_cost_per_1k_known_answer():
    x = CostInputs(requests_per_month=1_000_000)
    # one instance carries 100 * 0.5 * 730 * 3600 / 3 = 43.8M a month: the 2 minimum instances,
    # 2 * 730 h * $0.50 = $730 a month = $0.73 per 1,000
    assert hosting_cost_per_1k(x, 100.0) == pytest.approx(0.73)
    # at 0.1 requests/s an instance carries 43,800 a month: ceil(1e6 / 43,800) = 23 instances
    assert hosting_cost_per_1k(x, 0.1) == pytest.approx(23 * 365 / 1000)
    assert math.isinf(hosting_cost_per_1k(replace(x, requests_per_month=0), 100.0))


def test_cost_curve_crosses_at_the_break_even_volume():
    x = CostInputs()
    be = break_even_requests_per_month(x)
    below, at, above = cost_curve(x, [be / 2, be, be * 2])
    assert at["teacher_only"] == pytest.approx(at["hybrid_with_one_off"], rel=1e-9)
    assert below["teacher_only"] < below["hybrid_with_one_off"]
    assert above["teacher_only"] > above["hybrid_with_one_off"]
    assert at["hybrid_with_one_off"] - at["hybrid"] == pytest.approx(
        (x.labelling_usd + x.training_hours * x.training_hour_usd
         + x.engineering_weeks * x.engineering_week_usd) / x.horizon_months)


# -- the report of a tiny run ----------------------------------------------------------------------
def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_from_a_tiny_run(report_task, tmp_path):
    run = copy_run(report_task, tmp_path / "task").parent / "runs" / "tiny"
    report = json.loads((run / "report.json").read_text())
    cal = json.loads((run / "calibration.json").read_text())
    # `potstill run` already wrote the report, beside report.json
    assert (run / "report.html").exists() and (run / "eval" / "predictions.jsonl").exists()
    out = write_report(run)
    data = out["data"]

    head = {r["model"]: r for r in data["headline"]}
    assert set(head) == {"teacher", "student", "baseline"}
    # the verdict: in report.json with the numbers behind it, on the first lines of report.md/html
    v = report["verdict"]
    assert v["deploy"] in ("fine-tune", "distill", "teacher") and v["rows"] == 60
    assert (v["teacher"], v["student"], v["baseline"]) == tuple(
        report["models"][k]["accuracy"] for k in ("teacher", "student", "baseline"))
    assert f"**Verdict: {v['deploy']}**" in "\n".join(out["md"].read_text().splitlines()[:4])
    page = out["html"].read_text()
    assert page.index('id="verdict"') < page.index('id="headline"')
    for name, r in head.items():
        m = report["models"][name]
        assert (r["accuracy"], r["macro_f1"], r["latency_ms_p50"]) == (m["accuracy"], m["macro_f1"], m["latency_ms_p50"])
        assert r["cost_per_1k"] > 0 and r["size_mb"] > 0
    # the test predictions agree with the evaluation they came from
    preds = [json.loads(l) for l in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == report["test_rows"] == 60
    for name in ("teacher", "student", "baseline"):
        acc = sum(p["gold"] == p[name] for p in preds) / len(preds)
        assert round(acc, 4) == report["models"][name]["accuracy"], name
    assert data["errors"]["student"]["accuracy"] == pytest.approx(report["models"]["student"]["accuracy"], abs=1e-4)
    per = data["errors"]["student"]["per_label"]
    assert [r["label"] for r in per] == ["balance", "transfer", "weather"]
    assert sum(r["support"] for r in per) == 60

    rel = data["reliability"]
    assert rel["temperature"] == cal["temperature"]
    assert sum(b["count"] for b in rel["before"]["bins"]) == 60
    assert rel["before"]["accuracy"] == pytest.approx(report["models"]["student"]["accuracy"], abs=1e-4)
    assert rel["before"]["ece"] == pytest.approx(ece_from_bins(rel["before"]["bins"]))
    assert data["routing"]["operating_point"]["teacher_share"] == cal["operating_point"]["teacher_share"]
    assert len(data["routing"]["validation"]) == len(cal["table"])
    f = data["funnel"]
    assert (f["inputs"], f["kept"]) == (report["data"]["inputs"], report["data"]["kept"])
    assert data["cost"]["summary"]["verdict"] in ("distill", "borderline", "keep the API")
    stages = {r["stage"] for r in data["lineage"]}
    assert {"inputs", "teacher", "labels", "filtered", "student", "baseline", "eval"} <= stages
    assert all(r["spec_hash"] == report_spec_hash(run) for r in data["lineage"])
    assert data["curves"]["student"]["history"] and data["curves"]["baseline"]["history"]

    page = out["html"].read_text()
    assert f'content="{CSP}"' in page
    for anchor in ("headline", "funnel", "errors", "reliability", "routing", "cost", "curves", "lineage"):
        assert f'id="{anchor}"' in page, anchor
    for key in ("funnel", "reliability", "routing", "cost", "curves"):
        assert f'id="plot-{key}"' in page, key
    imgs = _images(page)
    assert len(imgs) == 5 and all(i.startswith(b"\x89PNG\r\n\x1a\n") for i in imgs)
    refs = re.findall(r"\b(?:src|href|srcset|action)\s*=\s*[\"']?([^\"' >]*)", page)
    assert len(refs) == 5 and all(r.startswith("data:image/png;base64,") for r in refs)  # nothing from elsewhere
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert f"{report['models']['student']['accuracy']:.4f}" in page
    assert "run `potstill compare" in page  # the one section this run lacks says how to get it

    md = out["md"].read_text()
    for heading in ("## Headline (with size and cost)", "## Cost", "## Where the student errs", "## Calibration",
                    "## Routing", "## Lineage"):
        assert heading in md
    assert "Break-even:" in md and f"{rel['before']['ece']:.4f}" in md


def report_spec_hash(run):
    return json.loads((run / "eval" / "manifest.json").read_text())["spec_hash"]


def test_missing_sections_say_what_to_run(report_task, tmp_path):
    run = copy_run(report_task, tmp_path / "task").parent / "runs" / "tiny"
    (run / "calibration.json").unlink()
    for name in ("predictions.jsonl", "student_logits.npy"):
        (run / "eval" / name).unlink()
    (run / "potstill.db").unlink()
    data = build_report(run)
    assert data["routing"] is None and data["errors"] is None and data["reliability"] is None
    assert data["cost"] is None and all(r["cost_per_1k"] is None for r in data["headline"])
    assert "potstill calibrate" in data["missing"]["routing"]
    assert "--predict" in data["missing"]["errors"]
    assert "potstill.db" in data["missing"]["cost"]
    page = render_html(data)
    assert f"potstill calibrate {run}" in page and len(_images(page)) == 2  # funnel + curves: a command for this run
    with pytest.raises(FileNotFoundError, match="report.json"):
        build_report(tmp_path / "nowhere")


def test_reliability_without_calibration_shows_before_only(report_task, tmp_path):
    run = copy_run(report_task, tmp_path / "task").parent / "runs" / "tiny"
    (run / "calibration.json").unlink()
    rel = build_report(run)["reliability"]
    assert "before" in rel and "after" not in rel and rel["temperature"] is None


def test_report_command_predicts_then_survives_a_plot_failure(report_task, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from potstill import report as report_mod
    from potstill.cli import app

    run = copy_run(report_task, tmp_path / "task").parent / "runs" / "tiny"
    before = (run / "eval" / "predictions.jsonl").read_text()
    (run / "eval" / "predictions.jsonl").unlink()
    pytest.importorskip("mlflow", reason="the optional extra: pip install 'potstill[mlflow]'")
    res = CliRunner().invoke(app, ["report", str(run), "--predict", "--mlflow"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "compare" in res.output
    assert f"mlflow: {(run / 'mlruns').resolve().as_uri()}" in res.output
    logged = list((run / "mlruns").glob("*/*/artifacts/report.html"))
    assert len(logged) == 1 and logged[0].read_text() == (run / "report.html").read_text()
    # recomputed from the saved models: the same predictions evaluate.py wrote (prob aside: rounding)
    strip = lambda s: [{k: v for k, v in json.loads(l).items() if k != "student_prob"} for l in s.splitlines()]  # noqa: E731
    assert strip((run / "eval" / "predictions.jsonl").read_text()) == strip(before)

    def boom(*a, **k):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(report_mod, "plots", boom)
    (run / "report.html").unlink()
    assert write_report_safely(run) is None  # logged, not raised
    assert not (run / "report.html").exists() and (run / "report.json").exists()


def test_report_of_an_extract_run_shows_field_scores(tmp_path):
    """An extract run's report.json (field F1, per-field scores) renders: kind-specific headline
    columns, per-field tables, no classifier-only sections pretending to exist."""
    import json as _json

    from potstill.report import write_report

    fields = {"city": {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 2}}
    m = {"field_f1": 0.8123, "field_precision": 0.7, "field_recall": 0.9, "exact_match": 0.5, "json_validity": 1.0, "per_field": fields,
         "latency_ms_p50": 2.0, "latency_ms_p95": 3.0, "throughput_per_s": 100.0, "params": 1000}
    (tmp_path / "report.json").write_text(_json.dumps({
        "task": "x", "kind": "extract", "test_rows": 4, "fields": ["city"],
        "models": {"teacher": m, "student": {**m, "field_f1": 0.7001, "agreement_with_teacher": 0.75}},
        "summary": {}, "data": {"inputs": 8, "labeled": 8, "kept": 7, "dropped": 1}}))
    out = write_report(tmp_path)
    page = out["html"].read_text()
    assert "field F1" in page and "0.7001" in page and "0.8123" in page
    assert "student: per-field precision / recall / F1" in page and "0.667" in page
    assert "reliability diagram is drawn for classify tasks" in page
    md = out["md"].read_text()
    assert "field F1" in md and "0.7001" in md
