"""--mlflow: the flattening of the spec and report into params and metrics (pure), a real log to a
local MLflow folder store read back with MLflow's client, and the clear error without mlflow."""

from __future__ import annotations

import json
import sys

import pytest

from potstill.tracking import EXTRA_HINT, TrackingError, flatten, log_run_dir, report_metrics, require_mlflow

REPORT = {
    "task": "tiny", "test_rows": 60,
    "models": {"teacher": {"identity": "hf:teacher@x", "accuracy": 0.95, "params": 100, "throughput_per_s": None},
               "student": {"accuracy": 0.9, "latency_ms_p50": 1.5, "objective": "distill", "size_mb": 0.4}},
    "summary": {"student_over_teacher_accuracy": 0.947, "latency_speedup": float("inf")},
    "data": {"inputs": 240, "kept": 238, "dropped_by_reason": {"duplicate": 2}, "teacher_spend_usd": 0.0},
}


def test_flatten_known_answer():
    doc = {"name": "tiny", "train": {"epochs": 3, "lr": 0.002}, "student": {"layers": [0, 3], "model": None},
           "serve": {"gate": {"on": True}}}
    assert flatten(doc) == {"name": "tiny", "train.epochs": "3", "train.lr": "0.002", "student.layers": "[0, 3]",
                            "student.model": "null", "serve.gate.on": "True"}
    assert len(flatten({"x": "a" * 10_000})["x"]) == 6000


def test_report_metrics_keeps_finite_numbers_only():
    m = report_metrics(REPORT, {"rows": [{"name": "gold@0.25", "accuracy": 0.8, "objective": "gold"}]})
    assert m == {"teacher.accuracy": 0.95, "teacher.params": 100.0, "student.accuracy": 0.9,
                 "student.latency_ms_p50": 1.5, "student.size_mb": 0.4,
                 "summary.student_over_teacher_accuracy": 0.947, "data.inputs": 240.0, "data.kept": 238.0,
                 "data.teacher_spend_usd": 0.0, "compare.gold@0.25.accuracy": 0.8}


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.resolved.json").write_text(json.dumps({"name": "tiny", "train": {"epochs": 3},
                                                        "student": {"layers": [0, 3]}}))
    (run / "report.json").write_text(json.dumps(REPORT))
    (run / "report.html").write_text("<!DOCTYPE html><html></html>")
    (run / "report.md").write_text("# potstill report: tiny\n")
    return run


def test_log_run_dir_to_a_local_folder_store(tmp_path):
    pytest.importorskip("mlflow", reason=f"the optional extra: {EXTRA_HINT}")
    from mlflow.tracking import MlflowClient

    run = _run_dir(tmp_path)
    where = log_run_dir(run, kind="report")
    assert where.startswith((run / "mlruns").resolve().as_uri())
    run_id = where.rsplit("run ", 1)[1].rstrip(")")
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    r = client.get_run(run_id)
    assert r.data.params == {"name": "tiny", "train.epochs": "3", "student.layers": "[0, 3]"}
    assert r.data.metrics["student.accuracy"] == 0.9 and r.data.metrics["data.kept"] == 238
    assert r.data.tags["potstill.kind"] == "report"
    names = sorted(a.path for a in client.list_artifacts(run_id))
    assert names == ["report.html", "report.json", "report.md", "spec.resolved.json"]
    other = tmp_path / "elsewhere"
    where2 = log_run_dir(run, uri=other.resolve().as_uri(), kind="run")
    assert where2.startswith(other.resolve().as_uri()) and any(other.iterdir())


def test_without_mlflow_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    with pytest.raises(TrackingError, match=r"pip install 'potstill\[mlflow\]'"):
        require_mlflow()
    run = _run_dir(tmp_path)
    from potstill import cli

    monkeypatch.setattr(sys, "argv", ["potstill", "report", str(run), "--mlflow"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--mlflow needs the optional mlflow extra" in err and EXTRA_HINT in err
    assert not (run / "mlruns").exists()
