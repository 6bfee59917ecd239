"""`potstill init --data` (scaffold.py), `potstill check` (check.py) and the "what next" block
(verdict.next_steps): the parts that need no trained model."""

from __future__ import annotations

import json

import pytest
from conftest import make_rows, write_jsonl
from fake_openai import FakeOpenAI

from potstill.check import check
from potstill.config import load_spec, run_paths
from potstill.errors import PotstillError
from potstill.scaffold import init_from_data
from potstill.verdict import next_steps, next_steps_lines, verdict

LABELS = ["balance", "transfer", "weather"]


def test_labelled_rows_of_the_data_are_split_and_the_rest_train_the_baseline(tmp_path):
    rows = make_rows(120, 1)
    data = write_jsonl(tmp_path / "mine.jsonl", [{"text": r["text"], "label": r["label"] if i < 80 else None}
                                                 for i, r in enumerate(rows)])
    spec_path = init_from_data(tmp_path / "task", data)
    spec = load_spec(spec_path)
    assert spec.labels == LABELS and spec.teacher.kind == "openai" and spec.teacher.price_in == 0.15
    assert spec.train.baseline is True
    val = (tmp_path / "task/data/validation.jsonl").read_text().splitlines()
    test = (tmp_path / "task/data/test.jsonl").read_text().splitlines()
    assert (len(val), len(test)) == (20, 40)  # a quarter and a half of the 80 labelled rows
    held = {json.loads(x)["text"] for x in val + test}
    inputs = check(spec, run_paths(spec), call=False)
    assert inputs.baseline_off is None
    assert "20 with gold" in inputs.findings[0].text  # 80 - 60 held out: removed from training by the inputs stage
    assert held <= {r["text"] for r in rows[:80]}


def test_no_gold_anywhere_is_an_error_that_says_what_to_do(tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", [{"text": r["text"]} for r in make_rows(60, 1)])
    with pytest.raises(PotstillError, match="0 labelled rows.*--gold FILE"):
        init_from_data(tmp_path / "task", data)


def test_a_gold_label_outside_labels_names_the_row(tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", make_rows(60, 1))
    with pytest.raises(PotstillError, match=r"mine:\d+: label 'weather' is not in --labels"):
        init_from_data(tmp_path / "task", data, labels=["balance", "transfer"])


def test_extract_init_with_a_schema(tmp_path):
    rows = [{"text": f"call {n} now", "label": {"person": n}} for n in ["mom", "dad", "bob", "ann"] * 8]
    data = write_jsonl(tmp_path / "mine.jsonl", rows)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"person": {"type": "string"}}}))
    spec = load_spec(init_from_data(tmp_path / "task", data, schema=schema, model="llama3", price_in=1.0))
    assert spec.kind == "extract" and spec.student.kind == "tagger"
    assert spec.json_schema["properties"] == {"person": {"type": "string"}}
    assert spec.teacher.model == "llama3" and spec.teacher.price_in == 1.0 and spec.teacher.price_out == 0.0
    first = json.loads((tmp_path / "task/data/test.jsonl").read_text().splitlines()[0])
    assert isinstance(first["label"], dict)  # gold objects stay objects


def _task(tmp_path, url, **teacher):
    write_jsonl(tmp_path / "train.jsonl", [{"text": r["text"]} for r in make_rows(90, 1)])
    write_jsonl(tmp_path / "val.jsonl", make_rows(15, 2))
    write_jsonl(tmp_path / "test.jsonl", make_rows(30, 3))
    extra = "".join(f"  {k}: {v}\n" for k, v in teacher.items())
    (tmp_path / "potstill.yaml").write_text(
        f"name: t\nlabels: {LABELS}\ndata: {{train: train.jsonl, validation: val.jsonl, test: test.jsonl}}\n"
        f"teacher:\n  kind: openai\n  model: m\n  base_url: {url}\n  price_in: 1.0\n  price_out: 2.0\n{extra}")
    return load_spec(tmp_path / "potstill.yaml")


def test_check_estimates_the_whole_set_from_one_call_and_plans_the_baseline_off(tmp_path):
    fake = FakeOpenAI(label_fn=lambda t: "balance", labels=LABELS, usage=(40, 2))
    with fake as url:
        spec = _task(tmp_path, url, max_spend_usd=0.001)
        rep = check(spec, run_paths(spec))
        assert fake.count == 1
        check(spec, run_paths(spec))  # a second check asks the next uncached input, not the cached one
        assert fake.count == 2 and fake.requests[0].text != fake.requests[1].text
    lines = "\n".join(rep.lines())
    assert not rep.failures, lines
    assert rep.baseline_off and "no gold labels" in rep.baseline_off
    assert "· baseline: off: the training split has no gold labels" in lines
    e = rep.estimate
    assert e["inputs_to_ask"] == 120  # 90 training inputs + 30 test rows, each asked once
    # 40 prompt tokens per call (the texts are of similar length), 2 output tokens each
    assert 120 * 30 < e["est_input_tokens"] < 120 * 55 and e["est_output_tokens"] == 240
    assert e["est_cost_usd"] == pytest.approx((e["est_input_tokens"] * 1.0 + 240 * 2.0) / 1e6, rel=0.02)
    assert "! cost: over teacher.max_spend_usd ($0.00" in lines and "labelling stops at the cap" in lines


def test_check_fails_on_a_reply_that_names_no_label(tmp_path):
    with FakeOpenAI(label_fn=lambda t: None, labels=LABELS) as url:
        spec = _task(tmp_path, url)
        rep = check(spec, run_paths(spec))
    assert [f.topic for f in rep.failures] == ["teacher"]
    assert "the reply is not usable" in rep.failures[0].text and "prompt_template" in rep.failures[0].text


def test_check_fails_when_a_fit_teacher_has_no_gold(tmp_path):
    spec = _task(tmp_path, "http://127.0.0.1:9/v1")
    spec = load_spec(tmp_path / "potstill.yaml", ["teacher.kind=fit"])
    rep = check(spec, run_paths(spec))
    assert any("teacher.kind fit fine-tunes" in f.text for f in rep.failures)


@pytest.mark.parametrize("t,s,b,deploy,cmd", [
    (0.95, 0.94, 0.80, "distill", "potstill serve RUN"),
    (0.95, 0.70, None, "teacher", "potstill calibrate RUN --teacher-share 0.10"),
    (0.80, 0.78, 0.86, "fine-tune", "potstill serve RUN --model baseline"),
])
def test_next_steps_give_the_decision_the_numbers_and_a_runnable_command(t, s, b, deploy, cmd):
    report = {"metric": "accuracy", "verdict": verdict(t, s, b, 1000), "summary": {"latency_speedup": 4.2}}
    if b is None:
        report["baseline_skipped"] = "train.baseline is false"
    nxt = next_steps(report, "RUN", "task/potstill.yaml")
    assert nxt["deploy"] == deploy and cmd in nxt["next"]
    assert f"teacher {t:.2%}" in nxt["because"] and "4.2x faster" in nxt["because"]
    if b is None:
        assert "no baseline: train.baseline is false" in nxt["because"]
    lines = next_steps_lines(nxt)
    assert lines[0].startswith("What next: ") and any(c in line for line in lines for c in [cmd])
    calibrated = next_steps(report, "RUN", calibrated=True)["next"]
    assert not any("potstill calibrate RUN --teacher-share" in c for c in calibrated)


def test_the_baseline_skips_itself_without_training_gold(tmp_path, capsys):
    """`run` (and `train --baseline`) on unlabelled training inputs: the baseline says why it is
    skipped instead of failing after the student trained (it raised "no gold labels" before)."""
    from potstill.stages.train import train_student

    spec = _task(tmp_path, "http://127.0.0.1:9/v1")
    assert spec.train.baseline is True
    out = train_student(spec, run_paths(spec), "baseline")
    assert out["skipped"].startswith("the training split has no gold labels")
    assert not (run_paths(spec).baseline / "config.json").exists()
    assert "baseline: skipped: the training split has no gold labels" in capsys.readouterr().err


def test_label_checks_without_a_test_split_run_does_not(tmp_path):
    """`potstill label` evaluates nothing, so its check lets a spec without a test split pass;
    `run` (and `potstill check`) stop on it."""
    write_jsonl(tmp_path / "train.jsonl", make_rows(60, 1))
    (tmp_path / "potstill.yaml").write_text("name: t\ndata: {train: train.jsonl}\nteacher: {kind: fit}\n")
    spec = load_spec(tmp_path / "potstill.yaml")
    assert [f.text for f in check(spec, run_paths(spec), need_test=True).failures][0].startswith("no test split")
    rep = check(spec, run_paths(spec), need_test=False)
    assert not rep.failures and any(f.level == "note" and "no test split" in f.text for f in rep.findings)
