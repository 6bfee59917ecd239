"""JSON answers of a causal student scored like the extract task; generation timing."""

from __future__ import annotations

import json

from causal_fixtures import build_tiny_llama, one_torch_thread  # noqa: F401 (autouse)

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
    assert spec.student.output_vocab == "answers+input"
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
