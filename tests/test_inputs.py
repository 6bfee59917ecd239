import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from potstill.data.inputs import Example, InputError, dedup, load_examples, load_splits, normalise
from potstill.spec import DataSpec


def test_jsonl_csv_parquet_with_field_mapping(tmp_path):
    rows = [{"utterance": "hi there", "intent": "greet"}, {"utterance": "bye", "intent": None}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.csv").write_text('utterance,intent\nhi there,greet\n"bye",\n')
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    d = DataSpec(train=tmp_path / "a.jsonl", text_field="utterance", label_field="intent")
    for name in ("a.jsonl", "a.csv", "a.parquet"):
        exs = load_examples(tmp_path / name, d)
        assert [(e.text, e.gold) for e in exs] == [("hi there", "greet"), ("bye", None)], name


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n\n{"text": "broken"\n')
    with pytest.raises(InputError, match=r"bad.jsonl:3: not valid JSON"):
        load_examples(p, DataSpec(train=p))


def test_missing_text_field_names_line_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n{"txt": "oops"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: field 'text' must be a string, it is missing"):
        load_examples(p, DataSpec(train=p))


def test_csv_with_extra_fields_names_the_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("text,label\na,b\nc,d,e\n")
    with pytest.raises(InputError, match=r"bad.csv:3: more fields"):
        load_examples(p, DataSpec(train=p))


def test_labels_required_in_held_out_splits(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(InputError, match=r"t.jsonl:2: field 'label' is required"):
        load_examples(p, DataSpec(train=p), require_label=True)


def test_dedup_exact_and_normalise():
    exs = [Example("1", "Hi there"), Example("2", "Hi there "), Example("3", "hi there!")]
    kept, removed = dedup(exs)
    assert [e.id for e in kept] == ["1", "3"] and [e.id for e in removed] == ["2"]
    assert normalise("Hi,  THERE!") == normalise("hi there")


def test_splits_hold_out_validation_and_remove_leakage(tmp_path):
    train = [{"text": f"t{i}", "label": "a" if i % 2 else "b"} for i in range(100)]
    train.append({"text": "T5!", "label": "b"})  # normalises like test row "t5"... no: "t5"
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "t7", "label": "a"}) + "\n")
    s = load_splits(DataSpec(train=tmp_path / "train.jsonl", test=tmp_path / "test.jsonl",
                             validation_share=0.2), seed=1)
    texts = {e.text for e in s.train}
    assert len(s.validation) == 20 and not texts & {e.text for e in s.validation}
    assert "t7" not in texts and s.leaked_removed >= 1
    again = load_splits(DataSpec(train=tmp_path / "train.jsonl", test=tmp_path / "test.jsonl",
                                 validation_share=0.2), seed=1)
    assert [e.id for e in again.validation] == [e.id for e in s.validation]  # fixed by the seed
