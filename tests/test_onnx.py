"""The classifier student on ONNX Runtime: export (fp32 and dynamic int8) matches torch, the
server runs it with `serve.runtime: onnx`, and the evaluation reports it beside torch. Tiny BERT
built from a config (tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_serve_support import fresh_run, live_server, tiny_run  # noqa: F401

pytest.importorskip("onnxruntime")

from potstill.onnx_export import FP32, INT8, META, export_onnx, onnx_dir, session  # noqa: E402

TEXTS = ["hi", "what is my balance please now", "send money to mom right now please thanks ok",
         "balance " * 40, "will it rain tomorrow"]


@pytest.fixture(scope="module")
def classifier(tiny_bert, tmp_path_factory) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    d = tmp_path_factory.mktemp("clf")
    labels = ["balance", "transfer", "weather"]
    m = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert, num_labels=3, id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)})
    m.save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(d)
    return d


def torch_logits(model_dir: Path, texts: list[str]) -> np.ndarray:
    import torch

    from potstill.students.classifier import load_classifier

    m, tok = load_classifier(model_dir)
    with torch.inference_mode():
        return m(**tok(texts, padding=True, truncation=True, max_length=64,
                       return_tensors="pt")).logits.numpy()


def test_export_matches_torch_at_any_batch_and_length(classifier, tmp_path):
    meta = export_onnx(classifier, tmp_path / "onnx", int8=True)
    assert meta["int8"] and meta["max_abs_diff_fp32"] < 1e-4
    assert (tmp_path / "onnx" / FP32).exists() and (tmp_path / "onnx" / INT8).exists()
    assert json.loads((tmp_path / "onnx" / META).read_text())["source_version"] == meta["source_version"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "onnx")
    fp32, int8 = session(tmp_path / "onnx" / FP32), session(tmp_path / "onnx" / INT8)
    for texts in ([TEXTS[0]], TEXTS, TEXTS[3:4] * 3):  # other shapes than the export example's
        enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="np")
        feed = {i.name: enc[i.name].astype(np.int64) for i in fp32.get_inputs()}
        ref = torch_logits(classifier, texts)
        got = fp32.run(["logits"], feed)[0]
        np.testing.assert_allclose(got, ref, atol=1e-4)
        got8 = int8.run(["logits"], feed)[0]
        assert got8.shape == ref.shape and np.abs(got8 - ref).max() < 0.05  # quantised, close
    # int8 really is smaller (weights stored as int8)
    assert (tmp_path / "onnx" / INT8).stat().st_size < 0.6 * (tmp_path / "onnx" / FP32).stat().st_size


@pytest.mark.parametrize("embedding", ["cls", "mean"])
def test_onnx_student_gives_the_torch_students_outputs(classifier, tmp_path, embedding):
    from potstill.serve.onnx_runtime import OnnxClassifierStudent
    from potstill.serve.router import ClassifierStudent

    ref = ClassifierStudent(classifier, temperature=1.5, embedding=embedding, device="cpu")
    ort = OnnxClassifierStudent(classifier, onnx_dir=tmp_path / "onnx", temperature=1.5,
                                embedding=embedding)  # exported on the spot
    assert (tmp_path / "onnx" / FP32).exists() and ort.identity == ref.identity
    assert ort.labels == ref.labels
    (l1, e1), (l2, e2) = ref.forward(TEXTS, batch_size=2), ort.forward(TEXTS, batch_size=2)
    np.testing.assert_allclose(l2, l1, atol=1e-4)
    np.testing.assert_allclose(e2, e1, atol=1e-4)
    a, b = ref.predict(TEXTS), ort.predict(TEXTS)
    assert [o.label for o in a] == [o.label for o in b]
    assert np.allclose([o.confidence for o in a], [o.confidence for o in b], atol=1e-5)


def test_a_stale_export_is_redone(classifier, tmp_path):
    import shutil

    from potstill.serve.onnx_runtime import ensure_export

    model = tmp_path / "model"
    shutil.copytree(classifier, model)
    ensure_export(model, tmp_path / "onnx", False, 64)
    first = json.loads((tmp_path / "onnx" / META).read_text())["source_version"]
    # new weights: the export no longer matches and is made again
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(model)
    with __import__("torch").no_grad():
        m.classifier.bias += 1.0
    m.save_pretrained(model)
    ensure_export(model, tmp_path / "onnx", False, 64)
    meta = json.loads((tmp_path / "onnx" / META).read_text())
    assert meta["source_version"] != first
    enc_texts = TEXTS[:2]
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(model)(enc_texts, padding=True, return_tensors="np")
    got = session(tmp_path / "onnx" / FP32).run(["logits"], {n: enc[n].astype(np.int64)
                                                             for n in meta["inputs"]})[0]
    np.testing.assert_allclose(got, torch_logits(model, enc_texts), atol=1e-4)


def test_export_command_and_serving_and_evaluation_on_onnx(tiny_run, tmp_path, monkeypatch):
    import httpx
    import typer
    from typer.testing import CliRunner

    from potstill.export import export_command
    from potstill.onnx_eval import evaluate_onnx, markdown, run_dir_spec
    from potstill.serve.app import ServeConfig, create_app
    from potstill.serve.onnx_runtime import OnnxClassifierStudent

    run = fresh_run(tiny_run, tmp_path / "run")
    cli = typer.Typer()
    cli.command()(export_command)
    cli.command("other")(lambda: None)  # two commands: typer then expects the command name
    res = CliRunner().invoke(cli, ["export-command", str(run), "--format", "onnx", "--int8"])
    assert res.exit_code == 0, res.output
    assert "exported student" in res.output
    assert (onnx_dir(run) / FP32).exists() and (onnx_dir(run) / INT8).exists()
    res = CliRunner().invoke(cli, ["export-command", str(run), "--format", "merged", "--int8"])
    assert res.exit_code != 0

    texts = ["what is my balance", "send money to mom", "will it rain tomorrow"]
    answers = {}
    for rt in ("torch", "onnx", "onnx_int8"):
        app = create_app(ServeConfig(run, overrides=[f"serve.runtime={rt}"], teacher=None,
                                     db_path=tmp_path / f"{rt}.db"))
        svc = app.state.potstill
        assert isinstance(svc.student, OnnxClassifierStudent) == (rt != "torch")
        with live_server(app) as base:
            r = httpx.post(f"{base}/v1/classify", json={"inputs": texts}, timeout=30).json()
        answers[rt] = [d["label"] for d in r["data"]]
    assert answers["onnx"] == answers["torch"] == answers["onnx_int8"]

    spec, rp = run_dir_spec(run)
    spec = spec.model_copy(update={"eval": spec.eval.model_copy(update={"latency_samples": 20})})
    result = evaluate_onnx(spec, rp)
    rows = result["rows"]
    assert set(rows) == {"torch", "onnx", "onnx_int8"}
    assert rows["onnx"]["accuracy"] == rows["torch"]["accuracy"]
    assert rows["onnx"]["agreement_with_torch"] == 1.0
    assert all(r["latency_ms_p50"] > 0 and r["throughput_per_s"] > 0 for r in rows.values())
    assert rows["onnx_int8"]["size_mb"] < rows["onnx"]["size_mb"]
    assert json.loads((run / "onnx_eval.json").read_text())["rows"] == rows
    assert "| onnx_int8 |" in markdown(result)

    # `potstill eval` with eval.runtimes: each runtime is its own row of the report, scored like the rest
    from fake_openai import FakeOpenAI
    from test_serve_support import LABELS

    from potstill.stages import evaluate as stage

    timed = []  # the runtimes are timed in turn with the PyTorch student, in one run
    real = stage.time_interleaved
    monkeypatch.setattr(stage, "time_interleaved", lambda timers, *a, **k: timed.append(sorted(timers))
                        or real(timers, *a, **k))
    with FakeOpenAI(label_fn=lambda t: "balance", labels=LABELS) as url:
        spec = spec.model_copy(update={
            "eval": spec.eval.model_copy(update={"runtimes": ["onnx", "onnx_int8"]}),
            "teacher": spec.teacher.model_copy(update={"base_url": url})})
        report = stage.evaluate(spec, rp)
    assert timed == [["student", "student_onnx", "student_onnx_int8"]]
    m = report["models"]
    assert m["student_onnx"]["accuracy"] == m["student"]["accuracy"]
    assert m["student_onnx"]["agreement_with_student"] == 1.0
    assert m["student_onnx_int8"]["runtime"] == "onnx_int8" and m["student_onnx_int8"]["latency_ms_p50"] > 0
    assert "agreement_with_teacher" in m["student_onnx_int8"]
    assert "| student_onnx_int8 |" in (run / "report.md").read_text()
    from potstill.report import write_report

    html = Path(write_report(run)["html"]).read_text()
    assert "student_onnx_int8" in html  # a headline row of its own


def test_runtime_is_for_classifier_students():
    from potstill.spec import TaskSpec

    with pytest.raises(ValueError, match="serve.runtime 'onnx'"):
        TaskSpec(name="t", kind="extract", json_schema={"type": "object", "properties": {
            "city": {"type": "string"}}}, data={"train": "x.jsonl"},
            student={"kind": "tagger"}, serve={"runtime": "onnx"})
