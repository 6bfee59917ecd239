"""`kind: extract` end to end, offline: schema checks, the JSON teachers (structured output, the
fallback with retries, self-consistency) against the fake endpoint, the filter's reasons,
field-level metrics on a hand-computed case, the router backend, and a tiny `run`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import FILLERS, write_jsonl
from fake_openai import FakeOpenAI

from potstill.answers import canonical_json, parse_answer
from potstill.config import SpecError, load_spec
from potstill.data.inputs import InputError
from potstill.serve.router import Policy, decide
from potstill.serve.tagger import extract_confidence, output_from
from potstill.spec import FilterSpec, TaskSpec
from potstill.students.tagger import Prediction
from potstill.tasks.extract import (
    check_extract_record,
    exact_match,
    field_scores,
    json_validity,
    model_metrics,
    prepare_record,
)
from potstill.teachers.openai_extract import OpenAIExtractTeacher

SCHEMA = {"type": "object", "additionalProperties": False,
          "properties": {"person": {"type": "string"}, "account": {"type": "string"},
                         "day": {"type": "string"}}}


# -- the spec ----------------------------------------------------------------------------------------
def _spec_file(tmp_path: Path, schema_yaml: str, extra: str = "") -> Path:
    p = tmp_path / "potstill.yaml"
    p.write_text(f"name: x\nkind: extract\ndata: {{train: t.jsonl}}\n{schema_yaml}{extra}")
    return p


def test_extract_spec_defaults_to_a_tagger_and_a_schema_prompt(tmp_path):
    spec = load_spec(_spec_file(tmp_path, f"json_schema: {json.dumps(SCHEMA)}\n"))
    assert spec.student.kind == "tagger"
    prompt = spec.render_prompt("send money to mom", ["person"])
    assert '"person": {"type": "string"}' in prompt and "Text: send money to mom" in prompt


@pytest.mark.parametrize("schema, message", [
    ('json_schema:\n  type: object\n  properties:\n    n: {type: integer}\n',
     "json_schema.properties.n: extract fields must be string-valued"),
    ('json_schema:\n  type: array\n', "json_schema.type: an extract schema must be 'object'"),
    ('json_schema:\n  type: object\n  properties: {}\n', "needs at least one field"),
    ('json_schema:\n  type: object\n  properties: {a: {type: string}}\n  required: [b]\n',
     "json_schema.required: ['b'] are not properties"),
    ('json_schema:\n  type: objekt\n', "not a valid JSON Schema"),
])
def test_bad_schema_is_a_clear_error_with_file_and_line(tmp_path, schema, message):
    with pytest.raises(SpecError) as e:
        load_spec(_spec_file(tmp_path, schema))
    assert "potstill.yaml:4: json_schema" in str(e.value)
    assert message in str(e.value)


def test_extract_needs_a_schema_and_a_tagger(tmp_path):
    with pytest.raises(SpecError, match="kind 'extract' needs json_schema"):
        load_spec(_spec_file(tmp_path, ""))
    with pytest.raises(SpecError, match="needs student.kind 'tagger'"):
        load_spec(_spec_file(tmp_path, f"json_schema: {json.dumps(SCHEMA)}\n", "student: {kind: classifier}\n"))
    with pytest.raises(ValueError, match="'tagger' is for kind 'extract'"):
        TaskSpec(name="x", data={"train": "t.jsonl"}, student={"kind": "tagger"})


def test_gold_that_breaks_the_schema_names_the_row(tmp_path):
    from potstill.paths import RunPaths
    from potstill.stages.prepare import prepare_inputs

    write_jsonl(tmp_path / "t.jsonl", [{"text": "send money to mom", "fields": {"person": "mom"}},
                                       {"text": "hi", "fields": {"persn": "x"}}])
    spec = load_spec(_spec_file(tmp_path, f"json_schema: {json.dumps(SCHEMA)}\n"),
                     ["data.label_field=fields", "data.validation_share=0.5"])
    with pytest.raises(InputError, match=r"t:2: gold fields \(\w+ split\) break json_schema"):
        prepare_inputs(spec, RunPaths(tmp_path / "run"))


# -- answers and filters (pure) ----------------------------------------------------------------------
def test_parse_answer_reasons():
    assert parse_answer('```json\n{"person": "Mom", "day": null}\n```', SCHEMA) == ({"person": "Mom"}, None, None)
    assert parse_answer("I think it is mom", SCHEMA)[1] == "invalid_json"
    obj, reason, detail = parse_answer('{"persn": "mom"}', SCHEMA)
    assert obj is None and reason == "schema_invalid" and "persn" in detail
    assert parse_answer('{"person": 3}', SCHEMA)[1] == "schema_invalid"


def _rec(text, answer, **kw):
    obj, _, _ = parse_answer(answer, SCHEMA)
    rec = {"text": text, "gold": None, "label": canonical_json(obj) if obj is not None else None,
           "raw": answer, "error": None, "votes": None, **kw}
    return prepare_record(rec, SCHEMA)


def test_extract_filter_reasons():
    f = FilterSpec(min_votes=2, drop_gold_disagreement=True)
    seen: set[str] = set()
    cases = [
        (_rec("send money to mom", '{"person": "mom"}'), None),
        (_rec("Send money to mom!", '{"person": "mom"}'), "duplicate"),
        (_rec("x", "nope", error="HTTP 500"), "teacher_error"),
        (_rec("wire money to john", "no idea"), "invalid_json"),
        (_rec("wire money to bob", '{"who": "bob"}'), "schema_invalid"),
        (_rec("wire cash to dad", '{"person": "mom"}'), "no_value_in_text"),
        (_rec("pay mom", '{"person": "mom"}', votes={canonical_json({"person": "mom"}): 1}), "low_votes"),
        (_rec("pay the landlord", '{"person": "landlord"}', gold='{"person":"the landlord"}'),
         "gold_disagreement"),
        # one value aligns, one does not: kept, with the stray value dropped and counted
        (_rec("move cash to savings", '{"account": "savings", "day": "friday"}'), None),
    ]
    got = [check_extract_record(r, f, seen) for r, _ in cases]
    assert got == [want for _, want in cases]
    last = cases[-1][0]
    assert last["fields"] == {"account": "savings"} and last["value_drops"] == [["day", "not_in_text"]]
    assert last["spans"] == [["account", 13, 20]]


# -- the OpenAI-compatible teacher in JSON mode ------------------------------------------------------
def _teacher(base_url: str, **teacher) -> OpenAIExtractTeacher:
    t = {"kind": "openai", "model": "fake", "base_url": base_url, "concurrency": 2, "max_retries": 1,
         "timeout_s": 5.0}
    t.update(teacher)
    spec = TaskSpec(name="t", kind="extract", json_schema=SCHEMA, data={"train": "unused.jsonl"}, teacher=t)
    return OpenAIExtractTeacher(spec, list(SCHEMA["properties"]), backoff_base_s=0.01, backoff_max_s=0.02)


def _answers(teacher, texts):
    out = [None] * len(texts)
    for i, a in teacher.answer(texts):
        out[i] = a
    return out


def test_structured_output_request_and_answers():
    answers = {"send money to mom": '{"person": "mom"}', "hello": "not json at all"}
    fake = FakeOpenAI(answers.get, logprobs=False)
    with fake as url:
        a, b = _answers(_teacher(url), list(answers))
    body = fake.for_text("send money to mom")[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert "logprobs" not in body and body["max_tokens"] == 256
    assert a.label == canonical_json({"person": "mom"}) and a.extra["structured"] is True
    # invalid JSON: asked again, at most json_retries (2) more times, then an unparseable answer
    assert len(fake.for_text("hello")) == 3
    assert b.label is None and b.error is None and b.extra["parse_error"].startswith("invalid_json")


def test_fallback_when_the_endpoint_rejects_structured_output_then_retries_invalid_json():
    # "two" answers garbage first, then schema-invalid JSON, then a valid object
    scripted = {"send money to john": ['{"person": "john"}'],
                "move cash to savings": ["sure!", '{"acct": "savings"}', '{"account": "savings"}'],
                "hi": ["no", "no", "no", "no"]}
    fake = FakeOpenAI(scripted.get, logprobs=False, reject_response_format=True)
    with fake as url:
        teacher = _teacher(url, concurrency=1)
        a, b, c = _answers(teacher, list(scripted))
    assert teacher.structured is False and "HTTP 400" in teacher.fallback_error
    first = fake.requests[0]
    assert first.status == 400 and "response_format" in first.body
    assert all("response_format" not in r.body for r in fake.requests[1:])
    assert a.label == '{"person":"john"}' and a.extra["structured"] is False
    assert b.label == '{"account":"savings"}'
    # bounded: the rejected call + 1 + 2 retries for "hi", never more
    assert len(fake.for_text("hi")) == 3 and c.label is None
    assert c.extra["parse_error"].startswith("invalid_json")


def test_samples_vote_over_canonical_json(tmp_path):
    # 3 samples per text: two agree (in different key order / whitespace), one differs
    votes = {"send money to mom today": ['{"person": "mom", "day": "today"}',
                                         '{"day":"today","person":"mom"}', '{"person": "mom"}']}
    fake = FakeOpenAI(votes.get, logprobs=False)
    with fake as url:
        (a,) = _answers(_teacher(url, samples=3, temperature=0.7), list(votes))
    key = canonical_json({"day": "today", "person": "mom"})
    assert a.label == key and a.votes == {key: 2, canonical_json({"person": "mom"}): 1}
    rec = prepare_record({"text": "send money to mom today", "label": a.label, "votes": a.votes,
                          "raw": a.raw, "error": None, "gold": None}, SCHEMA)
    assert check_extract_record(rec, FilterSpec(min_votes=2), set()) is None
    assert check_extract_record(rec, FilterSpec(min_votes=3), set()) == "low_votes"


def test_label_and_filter_stages_with_an_openai_teacher(tmp_path):
    from potstill.config import run_paths
    from potstill.stages.filter import filter_stage
    from potstill.stages.label import label

    rows = [{"text": "send money to mom"}, {"text": "move cash to savings"}, {"text": "hey there"},
            {"text": "wire cash to dad"}, {"text": "will it rain today"}, {"text": "pay the landlord"}]
    answers = {"send money to mom": '{"person": "Mom"}',
               "move cash to savings": '{"account": "savings", "day": "friday"}',
               "hey there": "hello!", "wire cash to dad": '{"person": "mom"}',
               "will it rain today": '{"when": "today"}', "pay the landlord": '{"person": "the landlord"}'}
    write_jsonl(tmp_path / "t.jsonl", rows)
    write_jsonl(tmp_path / "v.jsonl", [{"text": "send cash to john", "fields": {"person": "john"}}])
    fake = FakeOpenAI(answers.get, logprobs=False)
    with fake as url:
        spec = load_spec(_spec_file(tmp_path, f"json_schema: {json.dumps(SCHEMA)}\n"), [
            f"data.validation={tmp_path / 'v.jsonl'}", "data.label_field=fields", "teacher.kind=openai", "teacher.model=fake",
            f"teacher.base_url={url}", "teacher.max_retries=0"])
        run = run_paths(spec, tmp_path / "run")
        summary = label(spec, run)
        calls = fake.count
        label(spec, run)  # a rerun answers from the cache, unparseable answers included
        assert fake.count == calls
    assert summary["labelled"] == 4  # schema-valid answers, "dad" one included
    report = filter_stage(spec, run)
    assert report["kept"] == 3
    assert {k: v for k, v in report["dropped_by_reason"].items() if v} == {
        "invalid_json": 1, "schema_invalid": 1, "no_value_in_text": 1}
    assert report["values_dropped_by_reason"]["not_in_text"] == 1  # "friday"
    assert report["kept_per_field"] == {"person": 2, "account": 1}
    dropped = [json.loads(x) for x in (run.filtered / "dropped.jsonl").read_text().splitlines()]
    assert {d["text"]: d["reason"] for d in dropped} == {
        "hey there": "invalid_json", "will it rain today": "schema_invalid", "wire cash to dad": "no_value_in_text"}
    kept = {k["text"]: k for k in map(json.loads, (run.filtered / "kept.jsonl").read_text().splitlines())}
    assert kept["send money to mom"]["fields"] == {"person": "mom"}  # as written in the text


# -- metrics (hand-computed) -------------------------------------------------------------------------
def test_field_metrics_known_answer():
    gold = [{"person": "Mom", "day": "today"}, {"account": "savings"}, {"person": "john"}, {}]
    pred = [{"person": "mom ", "day": "tomorrow"},  # person right (normalised), day wrong
            {"account": "savings", "day": "now"},  # account right, day spurious
            None,                                   # invalid: john missed
            {}]                                     # right: nothing there
    s = field_scores(gold, pred, ["person", "account", "day"])
    # tp = 2 (person, account); fp = 2 (day tomorrow, day now); fn = 2 (day today, person john)
    assert (s["precision"], s["recall"], s["f1"]) == (0.5, 0.5, 0.5)
    assert s["per_field"]["person"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert s["per_field"]["day"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert s["per_field"]["account"]["f1"] == 1.0
    assert exact_match(gold, pred) == 0.25  # only the empty row
    assert json_validity(pred) == 0.75
    m = model_metrics(gold, pred, ["person", "account", "day"], teacher=[gold[0], None, {"person": "john"}, {}])
    # against the teacher: rows 0 (differs), 2 (student invalid), 3 (equal) -> 1/4 exact
    assert m["agreement_with_teacher"] == 0.25


# -- the router backend ------------------------------------------------------------------------------
def test_tagger_backend_escalates_when_a_required_field_is_missing(tiny_bert, tmp_path):
    import torch

    from potstill.serve.tagger import TaggerStudent
    from potstill.students.tagger import build_tagger

    model, tok = build_tagger(str(tiny_bert), list(SCHEMA["properties"]), layers=[0, 1])
    with torch.no_grad():
        model.classifier.bias[0] = 50.0  # every token O: the tagger finds nothing
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    outs = TaggerStudent(tmp_path / "m", {**SCHEMA, "required": ["person"]}).predict(
        ["send money to mom", "hey"])
    for out in outs:
        assert out.label is None and "person" in out.error
        assert out.confidence > 0.99  # sure there is nothing: still invalid, so it escalates
        assert decide(out, Policy(confidence_threshold=0.5)) == ["invalid_output"]
    ok = TaggerStudent(tmp_path / "m", SCHEMA).predict(["send money to mom"])[0]
    assert ok.label == "{}" and ok.error is None and decide(ok, Policy()) == []


def test_router_escalates_schema_invalid_output():
    schema = {**SCHEMA, "required": ["person"]}
    ok = output_from(Prediction({"person": "mom", "day": "today"}, {"person": 0.9, "day": 0.6}, 0.95), schema)
    assert ok.error is None and ok.label == canonical_json({"day": "today", "person": "mom"})
    assert ok.confidence == pytest.approx(0.6)  # the least sure span
    assert decide(ok, Policy(confidence_threshold=0.5)) == []
    assert decide(ok, Policy(confidence_threshold=0.7)) == ["low_confidence"]
    missing = output_from(Prediction({"day": "today"}, {"day": 0.99}, 0.99), schema)
    assert missing.label is None and "person" in missing.error
    assert decide(missing, Policy()) == ["invalid_output"]
    assert extract_confidence({}, 0.97) == 0.97  # no span: the all-token confidence


# -- a tiny end-to-end run ---------------------------------------------------------------------------
TEMPLATES = [
    ("send money to {person}", "person", ["mom", "john", "my landlord"]),
    ("move cash to {account}", "account", ["savings", "checking"]),
    ("will it rain {day}", "day", ["today", "tomorrow", "for the weekend"]),
]


def extract_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        tpl, field, values = TEMPLATES[len(rows) % len(TEMPLATES)]
        v = rng.choice(values)
        text = " ".join(f"{rng.choice(FILLERS)} {tpl.format(**{field: v})} {rng.choice(FILLERS)}".split())
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "fields": {field: v}})
    return rows


@pytest.fixture()
def extract_task(tmp_path, tiny_bert) -> Path:
    rows = extract_rows(200, 1)
    write_jsonl(tmp_path / "data/train.jsonl", rows[:140])
    write_jsonl(tmp_path / "data/validation.jsonl", rows[140:170])
    write_jsonl(tmp_path / "data/test.jsonl", rows[170:])
    (tmp_path / "potstill.yaml").write_text(f"""
name: tiny-extract
kind: extract
json_schema: {json.dumps(SCHEMA)}
data: {{train: data/train.jsonl, validation: data/validation.jsonl, test: data/test.jsonl, label_field: fields}}
teacher:
  kind: fit
  fit: {{model: {tiny_bert}, schedule: fixed, epochs: 4, lr: 0.004, batch_size: 8}}
filters: {{drop_gold_disagreement: false}}
student: {{model: {tiny_bert}, layers: [0, 3]}}
train: {{schedule: fixed, epochs: 3, lr: 0.004, batch_size: 8, precision: fp32, checkpoint_every: 100}}
eval: {{latency_samples: 5}}
""")
    return tmp_path


def test_tiny_extract_run_end_to_end(extract_task):
    from typer.testing import CliRunner

    from potstill.cli import app

    res = CliRunner().invoke(app, ["run", str(extract_task / "potstill.yaml")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    run = extract_task / "runs" / "tiny-extract"
    report = json.loads((run / "report.json").read_text())
    assert report["kind"] == "extract" and report["test_rows"] == 30
    t, s, b = (report["models"][k] for k in ("teacher", "student", "baseline"))
    assert t["field_f1"] > 0.9, t  # a simple task: the fitted tagger gets it
    assert s["field_f1"] > 0.8 and s["json_validity"] == 1.0
    assert s["signal"].startswith("teacher tag distribution")  # KD from the local tagger
    assert b["signal"] == "hard tags" and b["objective"] == "gold"
    assert s["layers"] == 2 and set(s["per_field"]) == {"person", "account", "day"}
    assert 0 <= s["agreement_with_teacher"] <= 1 and s["latency_ms_p50"] > 0
    assert "student_over_teacher_field_f1" in report["summary"]
    kept = [json.loads(x) for x in (run / "filtered/kept.jsonl").read_text().splitlines()]
    # the filter's rule: a record whose teacher gave values keeps only if one aligned; a record
    # the teacher answered {} is kept as "nothing to extract" (the tiny tagger does that now and then)
    assert kept and all(k["spans"] or not k["teacher_fields"] for k in kept)
    assert sum(bool(k["spans"]) for k in kept) >= 0.8 * len(kept)
    md = (run / "report.md").read_text()
    assert "field F1" in md and "| person |" in md
    assert "field F1" in res.output

    # the fitted tagger also works as an `hf` teacher (a local token-classification model)
    from potstill.paths import RunPaths
    from potstill.teachers import make_teacher
    from potstill.teachers.hf_tagger import TaggerTeacher

    spec = load_spec(extract_task / "potstill.yaml", ["teacher.kind=hf", f"teacher.model={run / 'teacher'}"])
    teacher = make_teacher(spec, RunPaths(run), list(SCHEMA["properties"]))
    assert isinstance(teacher, TaggerTeacher) and teacher.identity.startswith("tagger:teacher@")
    (i, ans), = list(teacher.answer(["send money to john please"]))
    assert ans.label == canonical_json({"person": "john"})


def test_bundled_example_inits_and_its_data_fits_its_schema(tmp_path):
    from typer.testing import CliRunner

    from potstill.cli import app
    from potstill.paths import RunPaths
    from potstill.stages.prepare import prepare_inputs

    res = CliRunner().invoke(app, ["init", str(tmp_path / "invoices"), "--example", "snips-extract"])
    assert res.exit_code == 0, res.output
    for f in ("LICENSE", "PROVENANCE.md", "data/train.jsonl", "data/unlabelled.jsonl", "data/validation.jsonl",
              "data/test.jsonl"):
        assert (tmp_path / "invoices" / f).exists(), f
    spec = load_spec(tmp_path / "invoices/potstill.yaml")
    assert spec.kind == "extract" and spec.student.kind == "tagger" and spec.teacher.kind == "fit"
    inputs = prepare_inputs(spec, RunPaths(tmp_path / "run"))  # every gold object fits the schema
    assert len(inputs.labels) == 39 and len(inputs.test) == 700
    # 4,000 labelled requests for the teacher; the logged ones, without gold, only for it to label
    gold = [ex for ex in inputs.train if ex.gold is not None]
    assert len(gold) == 4000 and len(inputs.train) - len(gold) == 8829  # after duplicates and test overlaps go
