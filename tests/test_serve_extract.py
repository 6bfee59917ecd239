"""A `kind: extract` run behind the server (serve/extract.py): the tagger student answers with
schema-valid JSON as the chat completion's content; low-confidence and schema-invalid outputs go
to the extract teacher (the stand-in OpenAI endpoint answering JSON) and are queued; the
threshold is calibrated on the validation split, saved, and redone when stale. A tiny tagger
trained on gold fields in the test. Offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from conftest import write_jsonl
from fake_openai import FakeOpenAI
from test_extract import SCHEMA, extract_rows
from test_serve_support import live_server, queue_rows

from potstill.answers import canonical_json, validate_fields
from potstill.serve.app import ServeConfig, create_app
from potstill.serve.causal import calibrate_threshold
from potstill.serve.router import StudentOutput
from potstill.serve.tagger import EXTRACT_CALIBRATION, TaggerStudent, extract_threshold


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on shared cores: one torch thread is much faster than two spin-waiting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def extract_run(tiny_bert, tmp_path_factory) -> Path:
    """An extract run whose tagger student is trained on the gold fields; its spec names an
    OpenAI-compatible teacher that tests point at the stand-in endpoint."""
    import torch

    from potstill.config import load_spec, run_paths
    from potstill.stages.prepare import prepare_inputs
    from potstill.stages.train import train_student

    root = tmp_path_factory.mktemp("extract-serve")
    rows = extract_rows(200, 1)
    write_jsonl(root / "data/train.jsonl", rows[:140])
    write_jsonl(root / "data/validation.jsonl", rows[140:170])
    write_jsonl(root / "data/test.jsonl", rows[170:])
    (root / "potstill.yaml").write_text(f"""
name: tinyx
kind: extract
json_schema: {json.dumps(SCHEMA)}
data: {{train: data/train.jsonl, validation: data/validation.jsonl, test: data/test.jsonl, label_field: fields}}
teacher: {{kind: openai, model: fake-teacher, base_url: "http://127.0.0.1:9/v1", max_retries: 0,
           timeout_s: 5}}
student: {{model: {tiny_bert}, layers: [0, 3]}}
train: {{schedule: fixed, objective: gold, epochs: 3, lr: 0.004, batch_size: 8, precision: fp32,
         checkpoint_every: 1000, baseline: false}}
serve: {{batch_window_ms: 5, teacher_timeout_s: 5}}
""")
    spec = load_spec(root / "potstill.yaml")
    run = run_paths(spec)
    prepare_inputs(spec, run)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_student(spec, run, "student")
    finally:
        torch.set_num_threads(before)
    return run.root


def copy_run(run: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run, dest, ignore=shutil.ignore_patterns("potstill.db*",
                                                                          EXTRACT_CALIBRATION)))


def post_chat(base: str, text: str) -> dict:
    r = httpx.post(f"{base}/v1/chat/completions", timeout=60,
                   json={"model": "tinyx", "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r.json()


def probes(run: Path) -> list[str]:
    """The run's test texts (never seen in training or calibration)."""
    from potstill.paths import RunPaths
    from potstill.stages.prepare import load_inputs

    return [ex.text for ex in load_inputs(RunPaths(run)).test]


# -- the threshold rule (pure) -------------------------------------------------------------------
def test_threshold_rule_known_answer():
    outs = [StudentOutput('{"person":"mom"}', 0.9),
            StudentOutput(None, 0.99, error="schema: (object): 'person' is a required property"),
            StudentOutput('{"day":"today"}', 0.3),
            StudentOutput("{}", 0.2),
            StudentOutput('{"account":"savings"}', 0.95)]
    golds = ['{"person":"Mom"}', '{"person":"john"}', '{"day":"tomorrow"}', '{"account":"savings"}',
             '{"account":" savings "}']
    p = extract_threshold(outs, golds, 0.4)
    # budget floor(0.4 x 5) = 2: the invalid row, then the least confident (0.2): rows below 0.3
    assert p["confidence_threshold"] == 0.3
    assert p["teacher_share"] == pytest.approx(0.4) and p["invalid_share"] == pytest.approx(0.2)
    # rows 0 and 4 are right once values are compared as the eval does (case, whitespace)
    assert p["student_accuracy"] == pytest.approx(0.4)
    # + rows 1 and 3 escalated (the teacher assumed right); row 2 stays wrong
    assert p["hybrid_accuracy"] == pytest.approx(0.8) and p["rows"] == 5
    # compared as raw text, "Mom" != "mom" and " savings " != "savings": no row would be right
    assert calibrate_threshold(outs, golds, 0.4, "extract")["student_accuracy"] == 0.0
    # no budget: only the invalid row goes, no confidence gate
    none = extract_threshold(outs, golds, 0.0)
    assert none["confidence_threshold"] is None and none["teacher_share"] == pytest.approx(0.2)


# -- calibration at start ------------------------------------------------------------------------
def test_threshold_calibrated_on_validation_saved_and_redone_when_stale(extract_run, tmp_path):
    from potstill.paths import RunPaths
    from potstill.stages.prepare import load_inputs

    run = copy_run(extract_run, tmp_path / "run")
    app = create_app(ServeConfig(run, db_path=tmp_path / "q.db", teacher=None, teacher_share=0.5))
    path = run / EXTRACT_CALIBRATION
    cal = json.loads(path.read_text())
    point = cal["operating_point"]
    student = app.state.potstill.student
    assert isinstance(student, TaggerStudent) and cal["student_version"] == student.identity
    assert point["rows"] == 30 and point["target_share"] == 0.5 and point["teacher_share"] <= 0.5
    assert point["confidence_threshold"] is not None  # the schema requires nothing: no invalid rows
    assert app.state.potstill.policy.confidence_threshold == point["confidence_threshold"]
    # the same rule on the student's own validation answers gives the same threshold
    val = [ex for ex in load_inputs(RunPaths(run)).validation]
    again = extract_threshold(student.predict([ex.text for ex in val]), [ex.gold for ex in val], 0.5)
    assert again == point
    # what it sends to the teacher: the validation rows below the threshold
    confs = [o.confidence for o in student.predict([ex.text for ex in val])]
    assert sum(c < point["confidence_threshold"] for c in confs) == round(point["teacher_share"] * 30)

    mtime = path.stat().st_mtime_ns
    create_app(ServeConfig(run, db_path=tmp_path / "q.db", teacher=None, teacher_share=0.5))
    assert path.stat().st_mtime_ns == mtime  # up to date: reused, not redone
    with pytest.raises(ValueError, match="no up-to-date calibration.extract.json"):
        create_app(ServeConfig(run, db_path=tmp_path / "q.db", teacher=None, teacher_share=0.2,
                               recalibrate=False))
    create_app(ServeConfig(run, db_path=tmp_path / "q.db", teacher=None, teacher_share=0.2))
    assert json.loads(path.read_text())["operating_point"]["target_share"] == 0.2
    # a hand-set threshold overrides calibration
    app = create_app(ServeConfig(run, ["serve.confidence_threshold=0.42"], db_path=tmp_path / "q.db",
                                 teacher=None))
    assert app.state.potstill.policy.confidence_threshold == 0.42


def test_potstill_calibrate_chooses_the_taggers_threshold_before_serving(extract_run, tmp_path):
    """`potstill calibrate` on an extract run writes the threshold the server then reads without
    calibrating again (before, it loaded the tagger as a classifier and failed)."""
    from typer.testing import CliRunner

    from potstill.cli import app as cli

    run = copy_run(extract_run, tmp_path / "run")
    r = CliRunner().invoke(cli, ["calibrate", str(run), "--teacher-share", "0.3"])
    assert r.exit_code == 0, r.output
    cal = json.loads((run / EXTRACT_CALIBRATION).read_text())
    point = cal["operating_point"]
    assert point["target_share"] == 0.3 and point["rows"] == 30 and point["teacher_share"] <= 0.3
    assert "tagger student, 30 validation rows" in r.output and "calibration.extract.json" in r.output
    app = create_app(ServeConfig(run, db_path=tmp_path / "q.db", teacher=None, teacher_share=0.3,
                                 recalibrate=False))  # refuses to start without an up-to-date doc
    assert app.state.potstill.policy.confidence_threshold == point["confidence_threshold"]
    bad = CliRunner().invoke(cli, ["calibrate", str(run), "--target-accuracy", "0.9"])
    assert bad.exit_code != 0 and "--target-accuracy is for classifier students" in str(bad.exception)


# -- in a real server ----------------------------------------------------------------------------
def test_confident_input_answered_by_the_student_low_confidence_one_by_the_teacher(extract_run, tmp_path):
    run = copy_run(extract_run, tmp_path / "run")
    teacher_json = '{"person": "John"}'
    fake = FakeOpenAI(lambda t: teacher_json, logprobs=False)
    with fake as url:
        app = create_app(ServeConfig(run, [f"teacher.base_url={url}"], db_path=tmp_path / "q.db",
                                     teacher_share=0.5))
        svc = app.state.potstill
        thr = svc.policy.confidence_threshold
        assert thr == json.loads((run / EXTRACT_CALIBRATION).read_text())["operating_point"][
            "confidence_threshold"]
        texts = probes(run)
        outs = svc.student.predict(texts)
        sure = max((i for i, o in enumerate(outs) if o.error is None and o.label != "{}"),
                   key=lambda i: outs[i].confidence)
        unsure = min(range(len(texts)), key=lambda i: outs[i].confidence)
        assert outs[sure].confidence >= thr > outs[unsure].confidence
        with live_server(app) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            a = client.chat.completions.create(model="tinyx",
                                               messages=[{"role": "user", "content": texts[sure]}])
            b = post_chat(base, texts[unsure])
    # the student: schema-valid JSON, its own answer, nothing asked of the teacher for it
    content = a.choices[0].message.content
    fields = json.loads(content)
    assert content == outs[sure].label and fields and validate_fields(fields, SCHEMA) is None
    assert all(v in texts[sure] for v in fields.values())  # tagger values are pieces of the input
    assert a.model_extra["route"] == "student" and a.model_extra["reasons"] == []
    assert a.model_extra["confidence"] == pytest.approx(outs[sure].confidence, abs=1e-6)
    assert fake.for_text(texts[sure]) == []
    # the teacher: its JSON, canonical, for the low-confidence input
    assert (b["route"], b["reasons"]) == ("teacher", ["low_confidence"])
    assert b["choices"][0]["message"]["content"] == canonical_json({"person": "John"})
    assert b["ood_score"] is None and b["degraded"] is False
    (req,) = fake.for_text(texts[unsure])
    assert req.body["response_format"]["json_schema"]["schema"] == SCHEMA  # the extract teacher
    (row,) = queue_rows(run, tmp_path / "q.db")
    assert (row["kind"], row["reason"], row["route"]) == ("escalation", "low_confidence", "teacher")
    assert row["input"] == texts[unsure] and row["teacher_label"] == '{"person":"John"}'
    assert row["student_label"] == outs[unsure].label and row["student_version"] == svc.student.identity


def test_schema_invalid_output_escalates_as_invalid_output(extract_run, tmp_path):
    run = copy_run(extract_run, tmp_path / "run")
    text = next(t for t in probes(run) if "move cash to" in t)
    fake = FakeOpenAI(lambda t: '{"person": "me", "account": "savings"}', logprobs=False)
    with fake as url:
        # a schema requiring `person`: the tagger finds an account only, which breaks it
        app = create_app(ServeConfig(run, [f"teacher.base_url={url}", "json_schema.required=[person]",
                                           "serve.confidence_threshold=0"], db_path=tmp_path / "q.db"))
        (alone,) = app.state.potstill.student.predict([text])
        assert alone.label is None and "person" in alone.error
        with live_server(app) as base:
            r = post_chat(base, text)
            c = httpx.post(f"{base}/v1/classify", json={"inputs": [text]}, timeout=60).json()
    assert (r["route"], r["reasons"]) == ("teacher", ["invalid_output"])
    assert json.loads(r["choices"][0]["message"]["content"]) == {"person": "me", "account": "savings"}
    assert c["data"][0]["route"] == "teacher" and c["data"][0]["label"] == '{"account":"savings","person":"me"}'
    rows = queue_rows(run, tmp_path / "q.db")
    assert [(q["kind"], q["reason"], q["student_label"]) for q in rows] == [
        ("escalation", "invalid_output", None)] * 2
    assert rows[0]["teacher_label"] == '{"account":"savings","person":"me"}'
    assert len(fake.requests) == 1  # the second escalation came from the teacher-call cache


def test_invalid_output_without_a_teacher_is_degraded_and_queued(extract_run, tmp_path):
    run = copy_run(extract_run, tmp_path / "run")
    text = next(t for t in probes(run) if "move cash to" in t)
    app = create_app(ServeConfig(run, ["json_schema.required=[person]", "serve.confidence_threshold=0"],
                                 db_path=tmp_path / "q.db", teacher=None))
    with live_server(app) as base:
        r = post_chat(base, text)
    assert (r["route"], r["reasons"], r["degraded"]) == ("degraded", ["invalid_output"], True)
    assert r["choices"][0]["message"]["content"] is None
    (row,) = queue_rows(run, tmp_path / "q.db")
    assert (row["kind"], row["reason"]) == ("degraded", "no_teacher")


def test_feedback_takes_a_schema_valid_object(extract_run, tmp_path):
    run = copy_run(extract_run, tmp_path / "run")
    text = next(t for t in probes(run) if "send money to" in t)
    app = create_app(ServeConfig(run, ["serve.confidence_threshold=0"], db_path=tmp_path / "q.db",
                                 teacher=None, allow_local_admin=True))
    with live_server(app) as base:
        r = post_chat(base, text)
        fb = lambda answer: httpx.post(f"{base}/v1/feedback", timeout=30,  # noqa: E731
                                       json={"request_id": r["id"], "answer": answer})
        field_name = fb("person")  # a field's name is not an answer
        bad = fb('{"persn": "x"}')
        ok = fb('{ "person": " Aunt May " , "day": null}')
        same = fb(r["choices"][0]["message"]["content"])
    assert r["route"] == "student"
    assert field_name.status_code == 400 and "invalid_json" in field_name.json()["error"]["message"]
    assert bad.status_code == 400 and "schema_invalid" in bad.json()["error"]["message"]
    assert ok.status_code == 200 and ok.json()["reason"] == "corrected"
    assert same.status_code == 200 and same.json()["reason"] == "confirmed"
    rows = [q for q in queue_rows(run, tmp_path / "q.db") if q["kind"] == "feedback"]
    assert [q["feedback"] for q in rows] == ['{"person":"Aunt May"}', r["choices"][0]["message"]["content"]]


def test_potstill_serve_command_serves_an_extract_run(extract_run, tmp_path):
    """`serve_command` (what `potstill serve RUN_DIR` runs) in a child process, calibrating at
    start: the tagger answers with JSON."""
    from test_serve_support import free_port, start_server_process

    run = copy_run(extract_run, tmp_path / "run")
    text = next(t for t in probes(run) if "send money to" in t)
    port = free_port()
    p = start_server_process(run, port, ["serve.teacher_share=0"], log_path=tmp_path / "server.log",
                             env={"OMP_NUM_THREADS": "1", "POTSTILL_API_KEYS": ""})
    try:
        r = post_chat(f"http://127.0.0.1:{port}", text)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
    finally:
        p.terminate()
        p.wait(30)
    cal = json.loads((run / EXTRACT_CALIBRATION).read_text())
    assert cal["settings"]["teacher_share"] == 0 and cal["operating_point"]["rows"] == 30
    assert health["routing"]["confidence_threshold"] == cal["operating_point"]["confidence_threshold"]
    assert health["teacher"].startswith("openai")  # the extract teacher was built
    assert r["route"] == "student" and r["model"] == "tinyx"
    fields = json.loads(r["choices"][0]["message"]["content"])
    assert "person" in fields and fields["person"] in text and validate_fields(fields, SCHEMA) is None
