"""kind generate end to end: `run_all` with an OpenAI-compatible teacher (the fake endpoint,
answering intent names with per-token logprobs in the student's tokenizer) -> labels -> filter
(with reasons) -> a causal student trained with `sequence` and with `logit_kd` against the cached
top-k -> the report; rationale mode; a local causal-LM teacher (`teacher.kind: hf`) labelling."""

from __future__ import annotations

import json
import math

import pytest
from causal_fixtures import build_tiny_llama, one_torch_thread  # noqa: F401 (autouse)
from conftest import make_rows, write_jsonl
from fake_openai import FakeOpenAI

from potstill.config import load_spec
from potstill.data.inputs import read_jsonl

WRONG, EMPTY = 0, 1  # rows of the training data the fake answers wrongly / with nothing


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("lms")
    student = build_tiny_llama(root / "student")
    teacher = build_tiny_llama(root / "teacher", hidden=64, seed=1,
                               tokenizer=AutoTokenizer.from_pretrained(student))
    return student, teacher


def write_task(tmp_path, student, teacher_yaml: str, train_extra: str = "", template=None):
    """A SNIPS-like task made here: text -> intent name, gold on every split."""
    train, val, test = make_rows(30, 1), make_rows(6, 2), make_rows(9, 3)
    write_jsonl(tmp_path / "data/train.jsonl", train)
    write_jsonl(tmp_path / "data/validation.jsonl", val)
    write_jsonl(tmp_path / "data/test.jsonl", test)
    template = template or "Text: {text}\\n\\nName the intent."
    (tmp_path / "potstill.yaml").write_text(f"""
name: tiny-intents
kind: generate
prompt_template: "{template}"
data: {{train: data/train.jsonl, validation: data/validation.jsonl, test: data/test.jsonl}}
teacher: {teacher_yaml}
student: {{kind: causal_lm, model: {student}, lora: {{r: 8, dropout: 0.0}}, max_new_tokens: 4}}
train: {{epochs: 1, lr: 0.02, batch_size: 8, precision: fp32, warmup_ratio: 0.0{train_extra}}}
eval: {{batch_size: 16}}
""")
    return {r["text"]: r["label"] for r in train + val + test}, [r["text"] for r in train]


def token_logprobs_fn(tok):
    """logprobs in the wire format, cut with the student's own tokenizer (the teacher shares it):
    each token p=0.8, the alternative "weather" (or "balance") p=0.15."""
    alt_ids = [tok.convert_tokens_to_ids("weather"), tok.convert_tokens_to_ids("balance")]

    def fn(text, content, top_k):
        out = []
        for i in tok(content, add_special_tokens=False)["input_ids"]:
            t = tok.decode([i])
            alt = tok.decode([alt_ids[0] if alt_ids[0] != i else alt_ids[1]])
            top = [{"token": t, "logprob": math.log(0.8), "bytes": None},
                   {"token": alt, "logprob": math.log(0.15), "bytes": None}]
            out.append({"token": t, "logprob": math.log(0.8), "bytes": None, "top_logprobs": top[:top_k]})
        return out
    return fn


def test_generate_run_with_an_api_teacher_sequence_then_logit_kd(tmp_path, lms):
    from transformers import AutoTokenizer

    from potstill.pipeline import run_all
    from potstill.students.causal_lm import aligned_topk

    student, _ = lms
    tok = AutoTokenizer.from_pretrained(student)
    gold, train_texts = write_task(tmp_path, student, "{kind: openai, model: fake, base_url: URL, top_logprobs: 2}")
    answers = dict(gold)
    answers[train_texts[WRONG]] = "weather" if gold[train_texts[WRONG]] != "weather" else "balance"
    answers[train_texts[EMPTY]] = ""
    fake = FakeOpenAI(answers.get, logprobs_fn=token_logprobs_fn(tok))
    with fake as url:
        spec_file = tmp_path / "potstill.yaml"
        spec_file.write_text(spec_file.read_text().replace("URL", url))
        report = run_all(load_spec(spec_file, ["train.objective=sequence"]), tmp_path / "run")
        run = tmp_path / "run"
        records = read_jsonl(run / "labels/records.jsonl")
        assert len(records) == 30
        by_text = {r["text"]: r for r in records}
        ok = by_text[train_texts[2]]
        assert ok["output"] == ok["label"] == ok["raw"] == gold[train_texts[2]]
        tl = ok["token_logprobs"]  # [token, logprob, [[alt, logprob], ...]] per output token
        assert len(tl) == 1 and tl[0][1] == pytest.approx(math.log(0.8)) and len(tl[0][2]) == 2
        assert ok["confidence"] == pytest.approx(0.8)
        assert by_text[train_texts[EMPTY]]["output"] is None
        assert by_text[train_texts[EMPTY]]["parse_reason"] == "empty_output"

        f = json.loads((run / "filtered/filter_report.json").read_text())
        assert f["kept"] == 28 and f["dropped_by_reason"]["empty_output"] == 1
        assert f["dropped_by_reason"]["gold_disagreement"] == 1 and f["kept_with_token_logprobs"] == 28
        dropped = {r["text"]: r["reason"] for r in read_jsonl(run / "filtered/dropped.jsonl")}
        assert dropped == {train_texts[WRONG]: "gold_disagreement", train_texts[EMPTY]: "empty_output"}

        assert set(report["models"]) == {"teacher", "student", "baseline"}
        assert report["models"]["teacher"]["exact_match"] == 1.0  # the fake answers the test rows right
        for name in ("student", "baseline"):
            m = report["models"][name]
            assert 0 <= m["exact_match"] <= m["token_f1"] <= 1 and "agreement_with_teacher" in m
        s = json.loads((run / "student/manifest.json").read_text())
        assert s["objective"] == "sequence" and s["metrics"]["rows"] == 28
        assert not (run / "student/checkpoints").exists()  # removed once the student is saved
        calls = fake.count

        # logit_kd against the cached top-k: no new teacher calls, the KD term is live
        kept = read_jsonl(run / "filtered/kept.jsonl")
        assert all(aligned_topk(tok, r["output"], r["token_logprobs"]) is not None for r in kept)
        report = run_all(load_spec(spec_file, ["train.objective=logit_kd", "train.baseline=false"]), run)
        assert fake.count == calls
    s = json.loads((run / "student/manifest.json").read_text())
    assert s["objective"] == "logit_kd"
    assert all(x["kd"] > 0 for x in s["metrics"]["losses"])
    assert "exact_match" in report["models"]["student"]


def test_logit_kd_with_api_records_whose_tokens_do_not_match_is_an_error(tmp_path, lms):
    """Tokens the student does not cut the same way give no top-k: all missing is a clear error."""
    from potstill.pipeline import run_all

    student, _ = lms
    gold, _ = write_task(tmp_path, student, "{kind: openai, model: fake, base_url: URL}", ", objective: logit_kd")
    # the fake's own tokenizer (words) keeps "BALANCE" whole; the student's BPE cuts it in pieces
    fake = FakeOpenAI(lambda t: gold[t].upper() + " intent")
    with fake as url:
        spec_file = tmp_path / "potstill.yaml"
        spec_file.write_text(spec_file.read_text().replace("URL", url))
        with pytest.raises(ValueError, match="top-k logprobs"):
            run_all(load_spec(spec_file, ["filters.drop_gold_disagreement=false"]), tmp_path / "run")


def test_rationale_mode_parses_and_drops_unparseable(tmp_path, lms):
    from potstill.pipeline import run_all

    student, _ = lms
    gold, train_texts = write_task(tmp_path, student, "{kind: openai, model: fake, base_url: URL}",
                                   ", objective: rationale")
    why = {"balance": "it asks about money held", "transfer": "it asks to move money",
           "weather": "it asks about the sky"}
    replies = {t: f"Rationale: {why[g]}.\nAnswer: {g}" for t, g in gold.items()}
    replies[train_texts[3]] = gold[train_texts[3]]  # no rationale: unparseable
    replies[train_texts[4]] = f"Rationale: {why[gold[train_texts[4]]]}. Answer: {gold[train_texts[4]]}"  # one line
    fake = FakeOpenAI(replies.get)
    with fake as url:
        spec_file = tmp_path / "potstill.yaml"
        spec_file.write_text(spec_file.read_text().replace("URL", url))
        report = run_all(load_spec(spec_file, ["train.baseline=false"]), tmp_path / "run")
    run = tmp_path / "run"
    assert "Rationale:" in fake.requests[0].body["messages"][0]["content"]
    by_text = {r["text"]: r for r in read_jsonl(run / "labels/records.jsonl")}
    r = by_text[train_texts[4]]
    assert (r["rationale"], r["output"]) == (f"{why[gold[train_texts[4]]]}.", gold[train_texts[4]])
    bad = by_text[train_texts[3]]
    assert bad["output"] is None and bad["parse_reason"] == "unparseable" and bad["raw"] == gold[train_texts[3]]
    f = json.loads((run / "filtered/filter_report.json").read_text())
    assert f["dropped_by_reason"]["unparseable"] == 1 and f["kept"] == 29 and f["kept_with_rationale"] == 29
    h = json.loads((run / "student/history.json").read_text())
    assert h["rows"] == 2 * 29  # the [label] and [rationale] task per kept record
    # the teacher's test answers are the parsed answers, not the raw rationale replies
    assert report["models"]["teacher"]["exact_match"] == 1.0


def test_local_causal_teacher_labels_and_teaches_logit_kd(tmp_path, lms):
    from potstill.config import run_paths
    from potstill.stages.filter import filter_stage
    from potstill.stages.label import label
    from potstill.stages.train import train_student
    from potstill.students.causal_lm import (
        LMRow,
        LMTrainConfig,
        build_causal_lm,
        generate,
        load_causal_lm,
        train_causal_lm,
    )

    student, teacher = lms
    gold, train_texts = write_task(tmp_path, student, f"{{kind: hf, model: {tmp_path / 'teacher'}}}",
                                   ", objective: logit_kd", template="{text}")
    # a teacher that answers: the tiny Llama fine-tuned on the task's own prompts
    model, tok = build_causal_lm(str(teacher), "full")
    train_causal_lm(model, tok, [LMRow(t, g) for t, g in gold.items()],
                    LMTrainConfig(max_steps=40, batch_size=8, lr=1e-2, warmup_ratio=0))
    model.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")

    spec = load_spec(tmp_path / "potstill.yaml", ["filters.drop_gold_disagreement=false"])
    run = run_paths(spec, tmp_path / "run")
    summary = label(spec, run)
    records = read_jsonl(run.labels / "records.jsonl")
    m, t = load_causal_lm(tmp_path / "teacher")
    direct = [g.text for g in generate(m, t, train_texts, max_new_tokens=4)]
    assert [r["output"] or "" for r in records] == direct  # the records are the teacher's greedy answers
    assert summary["labelled"] == sum(bool(d) for d in direct) > 0
    assert all(0 < r["confidence"] <= 1 for r in records if r["output"])
    assert sum(r["output"] == r["gold"] for r in records) >= 15  # it learned most of them
    assert json.loads((run.labels / "manifest.json").read_text())["teacher"].startswith("hf-causal:")
    assert label(spec, run)["new_calls"] == 0  # cached
    filter_stage(spec, run)
    mf = train_student(spec, run)
    assert mf["objective"] == "logit_kd" and all(x["kd"] > 0 for x in mf["metrics"]["losses"])


def test_generate_prompts_never_list_gold_answers(tmp_path, lms):
    """Free text has no label set: with {labels} in the template, the gold answers (test ones
    included) must not reach the teacher's or the student's prompt."""
    from potstill.config import load_spec, run_paths
    from potstill.stages.prepare import prepare_inputs

    student, _ = lms
    write_task(tmp_path, student, "{kind: openai, model: fake, base_url: 'http://127.0.0.1:9/v1'}",
               template="Labels: {labels}\\nText: {text}")
    spec = load_spec(tmp_path / "potstill.yaml")
    inputs = prepare_inputs(spec, run_paths(spec))
    assert inputs.labels == []
    assert spec.render_prompt("hi", inputs.labels) == "Labels: \nText: hi"
