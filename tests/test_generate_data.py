"""kind generate, the pure parts and the API teacher: replies -> outputs / rationales / token
logprobs, self-consistency votes, the filter's reasons, top-k alignment; OpenAIGenerateTeacher
against the fake endpoint (tests/fake_openai.py) through the cache."""

from __future__ import annotations

import math

import pytest
from fake_openai import FakeOpenAI

from potstill.answers import (
    RATIONALE_INSTRUCTION,
    generate_answer,
    mean_prob,
    parse_rationale_answer,
    read_reply,
    slice_tokens,
)
from potstill.spec import FilterSpec, TaskSpec
from potstill.students.causal_lm import aligned_topk
from potstill.tasks.generate import check_generate_record


def tl(tok: str, p: float, alts=()) -> list:
    return [tok, math.log(p), [[a, math.log(q)] for a, q in alts]]


def test_rationale_parsing_both_layouts():
    assert parse_rationale_answer("Rationale: asks about money.\nAnswer: balance") == ("asks about money.", "balance")
    # one line, as the brief's "Rationale: ... Answer: ..." shows it
    assert parse_rationale_answer("Rationale: asks about money. Answer: balance") == ("asks about money.", "balance")
    assert parse_rationale_answer("balance") is None
    assert parse_rationale_answer("Answer: balance") is None  # nothing to learn as a rationale
    assert parse_rationale_answer("Rationale: hmm. Answer:") is None


def test_slice_tokens_known_answers():
    toks = [tl("play", 0.9), tl(" music", 0.5, [(" songs", 0.3)]), tl(".", 1.0)]
    assert slice_tokens(toks, "play music.", 0, 10) == [toks[0], toks[1]]
    assert slice_tokens(toks, "play music.", 0, 11) == toks
    assert slice_tokens(toks, "play music.", 5, 10) is None  # " music" straddles the start
    assert slice_tokens(toks, "other text", 0, 4) is None  # tokens do not spell the reply
    assert mean_prob(toks[:2]) == pytest.approx(math.sqrt(0.9 * 0.5))
    assert mean_prob(None) is None


def test_read_reply_outputs_and_reasons():
    toks = [tl("play", 0.9), tl(" music", 0.5, [(" songs", 0.3)])]
    r = read_reply("play music", toks, rationale=False)
    assert r["output"] == "play music" and r["token_logprobs"] == toks and r["parse_reason"] is None
    assert r["confidence"] == pytest.approx(math.sqrt(0.45))
    # surrounding whitespace is stripped; tokens that only hold it are cut off
    r = read_reply("play music\n", toks + [tl("\n", 1.0)], rationale=False)
    assert r["output"] == "play music" and r["token_logprobs"] == toks
    assert r["reply_token_logprobs"] == toks + [tl("\n", 1.0)]  # the whole reply stays in the cache
    assert "reply_token_logprobs" not in read_reply("play music", toks, rationale=False)
    assert read_reply("  ", None, False)["parse_reason"] == "empty_output"
    r = read_reply("Rationale: wants songs.\nAnswer: play music", None, rationale=True)
    assert (r["rationale"], r["output"], r["token_logprobs"]) == ("wants songs.", "play music", None)
    bad = read_reply("play music", toks, rationale=True)
    assert bad["output"] is None and bad["parse_reason"] == "unparseable" and "Rationale" in bad["parse_error"]


def test_self_consistency_votes_over_normalised_outputs():
    a = generate_answer(["Stop.", "play music", "Play  Music!", ""], None, rationale=False)
    assert a.label == "play music" and a.votes == {"stop": 1, "play music": 2}
    assert a.raw == "play music" and a.extra["samples_raw"][2] == "Play  Music!"
    tie = generate_answer(["stop", "play"], None, False)
    assert tie.label == "stop"  # ties go to the earliest sample
    none = generate_answer(["", "no answer line"], None, rationale=True)
    assert none.label is None and none.votes == {} and none.extra["parse_reason"] == "unparseable"
    one = generate_answer([""], None, rationale=False)
    assert one.label is None and one.votes is None and one.extra["parse_reason"] == "empty_output"
    # the chosen sample's logprobs go with the answer
    lps = [[tl("stop", 0.2)], [tl("play", 0.8)], [tl("play", 0.6)]]
    v = generate_answer(["stop", "play", "play"], lps, False)
    assert v.extra["token_logprobs"] == lps[1] and v.extra["confidence"] == pytest.approx(0.8)


def test_filter_reasons_for_generate_records():
    f = FilterSpec(min_votes=2, min_confidence=0.5, max_chars=30)
    base = {"text": "play something", "gold": None, "output": "play music", "votes": None,
            "confidence": None, "error": None}
    cases = [
        ({"error": "HTTP 500"}, "teacher_error"),
        ({"output": None, "parse_reason": "empty_output"}, "empty_output"),
        ({"output": None, "parse_reason": "unparseable"}, "unparseable"),
        ({"output": "   "}, "empty_output"),
        ({"text": ""}, "too_short"),
        ({"text": "x" * 31}, "too_long"),
        ({"votes": {"play music": 1, "stop": 1}}, "low_votes"),
        ({"confidence": 0.4}, "low_confidence"),
        ({"gold": "Stop"}, "gold_disagreement"),
    ]
    for change, reason in cases:
        assert check_generate_record({**base, **change}, f, set()) == reason, change
    seen: set[str] = set()
    assert check_generate_record({**base, "gold": "Play music.", "votes": {"play music": 2}}, f, seen) is None
    assert check_generate_record({**base, "text": "Play  something"}, f, seen) == "duplicate"


def test_aligned_topk_only_when_the_tokens_are_the_students():
    from causal_fixtures import build_tokenizer

    tok = build_tokenizer()
    good = [tl("balance", 0.8, [("balance", 0.8), ("weather", 0.15)])]
    ids, lps = aligned_topk(tok, "balance", good)
    assert ids == [[tok.convert_tokens_to_ids("balance"), tok.convert_tokens_to_ids("weather")]]
    assert lps[0] == pytest.approx([math.log(0.8), math.log(0.15)])
    assert aligned_topk(tok, "weather", good) is None  # the tokens spell another completion
    assert aligned_topk(tok, "balance", None) is None


# -- the API teacher -------------------------------------------------------------------------------
def gen_spec(url: str, **extra) -> TaskSpec:
    spec = {"name": "g", "kind": "generate", "prompt_template": "Text: {text}\n\nAnswer briefly.",
            "data": {"train": "unused.jsonl"}, "student": {"kind": "causal_lm"},
            "teacher": {"kind": "openai", "model": "fake", "base_url": url, "top_logprobs": 3,
                        "max_retries": 0}}
    for k, v in extra.items():
        spec.setdefault(k, {}).update(v) if isinstance(v, dict) else spec.__setitem__(k, v)
    return TaskSpec(**spec)


def test_openai_generate_teacher_keeps_text_and_logprobs_and_caches(tmp_path):
    from potstill.store import Store
    from potstill.teachers.base import answer_cached
    from potstill.teachers.openai_generate import OpenAIGenerateTeacher

    fake = FakeOpenAI({"song please": "play music", "halt": "stop", "mute": ""}.get, labels=["stop"])
    with fake as url:
        spec = gen_spec(url)
        t = OpenAIGenerateTeacher(spec, ["x", "y"])
        with Store(tmp_path / "db") as store:
            got = answer_cached(t, ["song please", "halt", "mute"], store, spec.spec_hash())
            again = answer_cached(t, ["song please", "halt", "mute"], store, spec.spec_hash())
    body = fake.for_text("song please")[0].body
    assert body["max_tokens"] == 256 and body["logprobs"] is True and body["top_logprobs"] == 3
    assert body["messages"][0]["content"] == "Text: song please\n\nAnswer briefly."
    play = got[0]
    assert play.label == "play music" and play.raw == "play music" and play.probs is None
    # the fake gives the answer's first token p=0.9 with the other labels' first tokens as alternatives
    toks = play.extra["token_logprobs"]
    assert [t[0] for t in toks] == ["play", " music"] and toks[0][1] == pytest.approx(math.log(0.9))
    assert [a[0] for a in toks[0][2]] == ["play", "stop"]
    assert got[2].label is None and got[2].extra["parse_reason"] == "empty_output"
    assert fake.count == 3 and [a.label for a in again] == [a.label for a in got]  # from the cache
    assert again[0].extra["token_logprobs"] == toks  # logprobs survive the cache (JSON)


def test_openai_generate_teacher_rationale_prompt_and_samples():
    from potstill.teachers.openai_generate import OpenAIGenerateTeacher

    replies = {"t1": ["Rationale: wants songs.\nAnswer: play music", "Rationale: r.\nAnswer: Play music!",
                      "Rationale: r.\nAnswer: stop"],
               "t2": ["play music"] * 3}
    fake = FakeOpenAI(replies.get)
    with fake as url:
        spec = gen_spec(url, train={"objective": "rationale"}, filters={"min_votes": 2},
                        teacher={"samples": 3, "temperature": 0.7, "max_tokens": 64})
        t = OpenAIGenerateTeacher(spec, ["x", "y"])
        got = dict(t.answer(["t1", "t2"]))
    body = fake.for_text("t1")[0].body
    assert body["messages"][0]["content"].endswith(RATIONALE_INSTRUCTION) and body["n"] == 3
    assert body["max_tokens"] == 64
    assert got[0].label == "play music" and got[0].votes == {"play music": 2, "stop": 1}
    assert got[0].extra["rationale"] == "wants songs."
    assert got[1].label is None and got[1].extra["parse_reason"] == "unparseable"


def test_generate_needs_a_teacher_that_writes_text(tmp_path):
    from potstill.config import SpecError, load_spec
    from potstill.teachers.hf_causal import HFCausalTeacher

    p = tmp_path / "potstill.yaml"
    p.write_text("name: g\nkind: generate\ndata: {train: t.jsonl}\nstudent: {kind: causal_lm}\n")
    with pytest.raises(SpecError, match="teacher that writes text"):
        load_spec(p)  # the default teacher.kind, fit, is a classifier
    spec = load_spec(p, ["teacher.kind=hf", "teacher.model=some-lm", "teacher.samples=3",
                         "teacher.temperature=0.5"])
    with pytest.raises(ValueError, match="generates greedily"):
        HFCausalTeacher(spec, ["a", "b"])
