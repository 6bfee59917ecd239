"""JSON answers of a causal student scored like the extract task; generation timing."""

from __future__ import annotations

import json

import pytest
from causal_fixtures import build_tiny_llama, one_torch_thread  # noqa: F401 (autouse)
from conftest import write_jsonl

from potstill.config import load_spec
from potstill.students.causal_lm import time_generation
from potstill.tasks.generate import json_metrics, json_objects

SCHEMA = {"type": "object", "additionalProperties": False,
          "properties": {"artist": {"type": "string"}, "playlist": {"type": "string"}}}


def test_json_objects_parse_first_object_and_check_the_schema():
    got = json_objects(['{"artist": "Toyan"}', 'Sure: {"playlist": "Jams"} done', "not json",
                        '{"colour": "red"}', None], SCHEMA)
    assert got[0] == {"artist": "Toyan"} and got[1] == {"playlist": "Jams"}
    assert got[2] is None and got[3] is None and got[4] is None  # no object; outside the schema; none


def test_json_metrics_field_f1_validity_and_teacher_agreement():
    gold = [json.dumps({"artist": "Toyan", "playlist": "Epic"}), json.dumps({"playlist": "Jams"})]
    pred = ['{"artist": "toyan", "playlist": "Epic Gaming"}', "oops"]
    teacher = ['{"artist": "Toyan", "playlist": "Epic Gaming"}', '{"playlist": "Jams"}']
    m = json_metrics(gold, pred, SCHEMA, teacher)
    # pairs: gold 3; predicted 2 of which 1 right (artist, case-insensitive) -> P 1/2, R 1/3
    assert m["field_precision"] == 0.5 and m["field_recall"] == round(1 / 3, 4)
    assert m["field_f1"] == 0.4 and m["json_validity"] == 0.5 and m["exact_match"] == 0.0
    assert m["agreement_with_teacher"] == 0.5  # row 0 equals the teacher's object
    assert m["per_field"]["playlist"]["support"] == 2


def test_time_generation_reports_batch_one_latency(tmp_path):
    from potstill.students.causal_lm import load_causal_lm

    model, tok = load_causal_lm(build_tiny_llama(tmp_path / "lm"))
    t = time_generation(model, tok, ["what is my balance", "send money"], max_new_tokens=3, max_length=32, n=2)
    assert 0 < t["latency_ms_p50"] <= t["latency_ms_p95"] and t["gen_tokens_per_s_b1"] > 0


def test_snips_json_example_specs_agree_and_its_data_fits_the_schema():
    from pathlib import Path

    from potstill.config import load_spec

    here = Path(__file__).resolve().parents[1] / "examples" / "snips-json"
    spec, teacher = load_spec(here / "potstill.yaml"), load_spec(here / "teacher.yaml")
    # the teacher answers the prompt it was fine-tuned on
    assert spec.render_prompt("play jazz", []) == teacher.render_prompt("play jazz", [])
    assert spec.student.layers == 12 and spec.student.prune == "greedy" and spec.train.objective == "both"
    assert spec.student.output_vocab == "answers+input" and spec.span_values
    assert teacher.student.layers is None and teacher.student.model == "smollm2-135m-instruct"
    assert Path(spec.teacher.model).resolve() == (here / "runs/snips-json-teacher/baseline").resolve()
    fields = set(spec.json_schema["properties"])
    for split, n in (("train", 400), ("validation", 40), ("test", 100)):
        rows = [json.loads(l) for l in (here / "data" / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == n
        for r in rows:
            obj = json.loads(r["label"])
            assert set(obj) <= fields and all(v in r["text"] for v in obj.values())
    # the logged requests the teacher answers for the student: text only, none of them gold or held out
    assert [Path(p).name for p in spec.data.unlabelled] == ["unlabelled.jsonl"] and not teacher.data.unlabelled
    logs = [json.loads(l) for l in (here / "data/unlabelled.jsonl").read_text().splitlines()]
    known = {json.loads(l)["text"] for split in ("train", "validation", "test")
             for l in (here / "data" / f"{split}.jsonl").read_text().splitlines()}
    assert len(logs) == 799 and all(set(r) == {"text"} and r["text"] not in known for r in logs)
    assert (here / "LICENSE").exists()


def test_snap_value_copies_near_copies_from_the_input_and_drops_the_rest():
    """span_values' rule (tasks/align.py): a value found in the input takes the input's own
    characters; a near-copy takes the most similar word span; a value like nothing in the input
    is dropped; non-strings are left alone."""
    from potstill.tasks.align import snap_fields, snap_value

    text = "Add Toyan to my Epic Gaming playlist, book 1/20/2023 for 5 in MH."
    assert snap_value(text, "epic gaming") == "Epic Gaming"  # found: the input's characters
    assert snap_value(text, "Toyann") == "Toyan"
    assert snap_value(text, "Tonyine") is None  # similarity 0.5: another name, not a near-copy
    assert snap_value(text, "Tonyine", min_similarity=0.5) == "Toyan"
    assert snap_value(text, "1/2/2023") == "1/20/2023"
    assert snap_value(text, "epic Gams") == "Epic Gaming"
    assert snap_value(text, "mh") == "MH"
    assert snap_value(text, "MH,") == "MH"  # not in the text: the span without its edge punctuation
    assert snap_value(text, "cucumber salad") is None
    assert snap_value(text, "cucumber salad", min_similarity=0.0) is not None
    got = snap_fields(text, {"artist": "Toyann", "dish": "cucumber salad", "n": 5, "state": "Mh"})
    assert got == {"artist": "Toyan", "n": 5, "state": "MH"}
    # equally similar spans: the earliest, then the shortest, so the answer never depends on order
    assert snap_value("ab x ab", "abz") == "ab"
    assert snap_value("play ab", "abq") == snap_value("play ab", "abq")


def test_spans_only_rewrites_an_answers_object_and_leaves_the_rest():
    from potstill.tasks.generate import spans_only

    schema = {"type": "object", "additionalProperties": False, "required": ["artist"],
              "properties": {"artist": {"type": "string"}, "playlist": {"type": "string"}}}
    text = "Add Toyan to my Epic Gaming playlist"
    assert spans_only('{"artist": "Toyann", "playlist": "epic Gams"}', text, schema) == \
        '{"artist":"Toyan","playlist":"Epic Gaming"}'
    assert spans_only('{"artist": "Toyan", "playlist": "my favourite songs"}', text, schema) == \
        '{"artist":"Toyan"}'  # nothing like it in the input: dropped
    # no object: the answer as it was; an object whose required value would go: that object
    assert spans_only("Toyan", text, schema) == "Toyan"
    assert spans_only('{"artist": "Beethoven"}', text, schema) == '{"artist":"Beethoven"}'
    assert spans_only(None, text, schema) is None


def test_span_values_needs_a_schema(tmp_path):
    from potstill.config import SpecError

    (tmp_path / "s.yaml").write_text("name: t\nkind: generate\nspan_values: true\ndata: {train: t.jsonl}\n"
                                     "teacher: {kind: openai, model: x}\nstudent: {kind: causal_lm, model: m}\n")
    with pytest.raises(SpecError, match="span_values: true needs a json_schema"):
        load_spec(tmp_path / "s.yaml")


def test_evaluation_scores_every_models_answers_as_spans_of_the_input(tmp_path):
    """With span_values the teacher's near-copies are snapped to the input before scoring (its
    cached answers stay as it wrote them); without it they count as wrong. Before, the option
    did not exist and a misspelt copy was always a wrong value."""
    from fake_openai import FakeOpenAI

    from potstill.config import run_paths
    from potstill.stages.evaluate import evaluate

    student = build_tiny_llama(tmp_path / "lm")
    rows = [{"text": f"add {a} to my {p} playlist", "label": json.dumps({"artist": a, "playlist": p})}
            for a, p in [("Toyan", "Epic Gaming"), ("Mozart", "rainy day"), ("Adele", "road trip"),
                         ("Queen", "workout mix")]]
    for split in ("train", "validation", "test"):
        write_jsonl(tmp_path / f"{split}.jsonl", rows)
    answers = {  # the teacher misspells one value per row and adds one that is in no request
        rows[0]["text"]: '{"artist": "Toyann", "playlist": "Epic Gaming"}',
        rows[1]["text"]: '{"artist": "Mozart", "playlist": "rainy dya"}',
        rows[2]["text"]: '{"artist": "Adel", "playlist": "road trip", "genre": "pop"}',
        rows[3]["text"]: '{"artist": "queen", "playlist": "workout mix"}',
    }
    schema = {"type": "object", "additionalProperties": False,
              "properties": {k: {"type": "string"} for k in ("artist", "playlist", "genre")}}
    (tmp_path / "potstill.yaml").write_text(
        "name: sv\nkind: generate\nprompt_template: 'Text: {text}'\n"
        f"json_schema: {json.dumps(schema)}\n"
        "data: {train: train.jsonl, validation: validation.jsonl, test: test.jsonl}\n"
        "teacher: {kind: openai, model: fake, base_url: URL, logprobs: false}\n"
        f"student: {{kind: causal_lm, model: {student}}}\n")
    fake = FakeOpenAI(lambda t: answers[t], logprobs=False)
    got = {}
    with fake as url:
        for on in (False, True):
            spec = load_spec(tmp_path / "potstill.yaml", overrides=[f"teacher.base_url={url}",
                                                                    f"span_values={str(on).lower()}"])
            run = run_paths(spec, tmp_path / "run")
            report = evaluate(spec, run)
            got[on] = report["models"]["teacher"]
            assert report.get("span_values", False) is on
            assert ("made spans of its input" in run.report_md.read_text()) is on
    assert fake.count == 4  # the second evaluation read the teacher's answers from the cache
    assert got[False]["field_f1"] == pytest.approx(2 * 5 / (2 * 5 + 4 + 3), abs=1e-4)  # 5 right, 4 wrong, 3 missed
    assert got[True]["field_f1"] == 1.0
