"""`json_decoding: schema`: a causal LM's answer is held to one JSON object of the schema's fields
while it is written (students/json_decoding.py)."""

from __future__ import annotations

import json

import pytest
import torch
from causal_fixtures import build_tiny_llama, build_tokenizer, one_torch_thread  # noqa: F401 (autouse)
from conftest import write_jsonl

from potstill.config import SpecError, load_spec
from potstill.students.json_decoding import (
    AFTER,
    COLON,
    DONE,
    KEY,
    VALUE,
    JsonDecoding,
    JsonObjectAutomaton,
    SchemaLogitsProcessor,
    State,
)

KEYS = ["city", "state", "country"]
SCHEMA = {"type": "object", "additionalProperties": False, "properties": {k: {"type": "string"} for k in KEYS}}


def no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"a key repeats: {keys}"
    return dict(pairs)


def test_the_automaton_accepts_objects_of_the_schema_and_nothing_else():
    a = JsonObjectAutomaton(KEYS)
    done = a.run(State(), ' {"city": "New \\"York\\" \\u00e9", "state":"NY"}')
    assert done is not None and done.kind == DONE and done.used == {"city", "state"}
    assert a.run(State(), "{}").kind == DONE
    for broken in ('{"city": "a", "city"',  # a key again
                   '{"town"',  # a key the schema lacks
                   '{"cit"y',  # a key's characters are a key's
                   '{"city": 5',  # values are strings
                   '{"city": "a\nb"',  # a raw control character in a string
                   '{"city": "a"} x',  # nothing after the object
                   '{"city": "\\x"'):  # an escape JSON does not have
        assert a.run(State(), broken) is None, broken
    assert a.run(State(), '{"ci').kind == KEY
    assert a.run(State(), '{"city"').kind == COLON
    assert a.run(State(), '{"city": "Bos').kind == VALUE
    assert a.run(State(), '{"city": "Boston"').kind == AFTER


def test_characters_to_close_from_each_state():
    a = JsonObjectAutomaton(KEYS)
    for text, need, closing in [("", 2, "{}"), ("{", 1, "}"), ('{"', 4 + 5, 'city":""}'),
                                ('{"ci', 2 + 5, 'ty":""}'), ('{"city"', 4, ':""}'), ('{"city": ', 3, '""}'),
                                ('{"city": "B', 2, '"}'), ('{"city": "B"', 1, "}"),
                                ('{"city": "B",', 5 + 6, '"state":""}'), ('{"city": "B"}', 0, "")]:
        s = a.run(State(), text)
        assert a.to_close(s) == need, text
        assert len(closing) == need and a.run(s, closing).kind == DONE  # the count is exact


def test_the_allowed_tokens_are_those_the_automaton_accepts():
    """The token-level masks (indexes by first character, plain tokens looked up as key
    characters) allow exactly the tokens whose every character the automaton accepts, in every
    kind of state, when the budget cuts nothing."""
    tok = build_tokenizer(['{"city": "boston", "state": "ma"}', 'a "quoted" \\ value: {x}, \\u00e9'] * 3, 300)
    d = JsonDecoding(tok, KEYS)
    special = set(tok.all_special_ids)
    for text in ["", " ", "{", '{ "', '{"ci', '{"city"', '{"city":', '{"city": "', '{"city": "bo',
                 '{"city": "b\\', '{"city": "b\\u0', '{"city": "b"', '{"city": "b",', '{"city": "b", "',
                 '{"city": "b", "state": "c", "country": "d"', '{}']:
        s = d.auto.run(State(), text)
        assert s is not None, text
        want = {i for i, t in enumerate(d.texts) if i not in special and t and d.auto.run(s, t) is not None}
        if s.kind == DONE:
            want = {tok.eos_token_id}
        got = set(d.allowed(s, tokens_left=100).nonzero().flatten().tolist())
        assert got == want, (text, sorted(d.texts[i] for i in got ^ want))


def test_a_random_model_writes_only_objects_of_the_schema_within_its_budget(tmp_path):
    """A random-weight model writes byte soup freely; held to the schema, every answer parses, has
    only the schema's keys, none twice, and is closed within max_new_tokens, however short."""
    from potstill.students.causal_lm import generate, load_causal_lm

    corpus = ['{"city": "boston", "state": "ma"}', '{"country": "france"}', "weather in boston"] * 3
    model, tok = load_causal_lm(build_tiny_llama(tmp_path / "lm", tokenizer=build_tokenizer(corpus, 300)))
    prompts = ["weather in boston", "play the cat", "what", "a quick brown fox"]
    free = generate(model, tok, prompts, max_new_tokens=24, batch_size=4)
    bad = 0
    for g in free:
        try:
            bad += not isinstance(json.loads(g.text), dict)
        except json.JSONDecodeError:
            bad += 1
    assert bad == len(prompts)  # the model alone never writes an object
    for budget in (3, 8, 24, 40):
        for g in generate(model, tok, prompts, max_new_tokens=budget, batch_size=4, json_keys=KEYS):
            obj = json.loads(g.text, object_pairs_hook=no_duplicate_keys)
            assert set(obj) <= set(KEYS) and all(isinstance(v, str) for v in obj.values())
            assert len(g.token_logprobs) <= budget and g.token_ids[-1] != tok.eos_token_id


def test_the_logprobs_are_the_models_own_not_the_constraints(tmp_path):
    """With 3 tokens the only answer is "{}" and the end: the constraint gives each token
    probability 1, but the random model's own probability of them is small, and that is what
    the router must see (an answer the schema forced is not a sure one)."""
    from potstill.students.causal_lm import generate, load_causal_lm

    model, tok = load_causal_lm(build_tiny_llama(tmp_path / "lm"))
    g = generate(model, tok, ["weather in boston"], max_new_tokens=3, batch_size=1, json_keys=KEYS)[0]
    assert g.text == "{}"
    assert max(g.token_logprobs) < -1.0


def test_a_row_with_no_allowed_token_ends_there():
    """When the scores allow none of the tokens the schema allows (an output vocabulary without
    them), the row gets the end-of-sequence token instead of an arbitrary one."""
    tok = build_tokenizer()
    d = JsonDecoding(tok, KEYS)
    proc = SchemaLogitsProcessor(d, prompt_len=2, max_new_tokens=10)
    scores = torch.full((2, len(tok)), float("-inf"))
    brace = tok.convert_tokens_to_ids("{")
    scores[0, brace] = 1.0  # row 0 may write "{", the first character of every answer
    scores[1, tok.convert_tokens_to_ids("a")] = 1.0  # row 1 only a letter, which no answer starts with
    out = proc(torch.zeros((2, 2), dtype=torch.long), scores)
    assert out[0].argmax() == brace and out[0, brace] == 1.0
    assert out[1].argmax() == tok.eos_token_id


def test_json_decoding_needs_a_schema_and_a_causal_lm(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "{}"}\n')
    base = ("name: t\nkind: generate\ndata: {train: t.jsonl}\nstudent: {kind: causal_lm, model: x}\n"
            "teacher: {kind: openai, model: m}\n")
    (tmp_path / "a.yaml").write_text(base + "json_decoding: schema\n")
    with pytest.raises(SpecError, match="json_decoding: schema needs a json_schema"):
        load_spec(tmp_path / "a.yaml")
    schema = "json_schema: {type: object, properties: {city: {type: string}}}\n"
    (tmp_path / "b.yaml").write_text("name: t\nkind: extract\ndata: {train: t.jsonl}\njson_decoding: schema\n" + schema)
    with pytest.raises(SpecError, match="a local causal LM"):
        load_spec(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text(base + schema + "json_decoding: schema\n")
    assert load_spec(tmp_path / "c.yaml").json_keys() == ["city"]
    assert load_spec(tmp_path / "c.yaml", ["json_decoding=free"]).json_keys() is None
    with pytest.raises(SpecError, match="no room for a rationale"):
        load_spec(tmp_path / "c.yaml", ["train.objective=rationale"])


def test_json_decoding_refuses_a_schema_it_cannot_hold(tmp_path):
    """The automaton writes string values only: a generate schema with a number field (or with no
    properties) would get answers the parser then refuses, every one; the spec says so instead."""
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "{}"}\n')
    base = ("name: t\nkind: generate\ndata: {train: t.jsonl}\nstudent: {kind: causal_lm, model: x}\n"
            "teacher: {kind: openai, model: m}\njson_decoding: schema\n")
    (tmp_path / "n.yaml").write_text(base + "json_schema: {type: object, properties: "
                                     "{city: {type: string}, nights: {type: integer}}}\n")
    with pytest.raises(SpecError, match=r"json_schema.properties.nights: .*json_decoding: schema"):
        load_spec(tmp_path / "n.yaml")
    (tmp_path / "e.yaml").write_text(base + "json_schema: {type: array}\n")
    with pytest.raises(SpecError, match=r"json_schema.type.*json_decoding: schema"):
        load_spec(tmp_path / "e.yaml")
    # without the constraint such a schema stays a generate task's business
    assert load_spec(tmp_path / "n.yaml", ["json_decoding=free"]).json_keys() is None


def test_evaluation_scores_the_answers_written_under_the_schema(tmp_path):
    """`potstill eval` of a causal student with json_decoding: schema: every answer is a valid
    object (the random student writes none freely), and the report says how it decoded."""
    from fake_openai import FakeOpenAI

    from potstill.config import run_paths
    from potstill.manifest import write_manifest
    from potstill.stages.evaluate import evaluate
    from potstill.students.causal_lm import STUDENT_META

    rows = [{"text": f"weather in {c}", "label": json.dumps({"city": c})} for c in ("boston", "paris", "rome")]
    for split in ("train", "validation", "test"):
        write_jsonl(tmp_path / f"{split}.jsonl", rows)
    (tmp_path / "potstill.yaml").write_text(
        "name: jd\nkind: generate\nprompt_template: 'Text: {text}'\n"
        f"json_schema: {json.dumps(SCHEMA)}\n"
        "data: {train: train.jsonl, validation: validation.jsonl, test: test.jsonl}\n"
        "teacher: {kind: openai, model: fake, base_url: URL, logprobs: false}\n"
        "student: {kind: causal_lm, model: x, max_new_tokens: 16}\n"
        "eval: {latency_samples_generate: 2}\n")
    got = {}
    with FakeOpenAI(lambda t: json.dumps({"city": t.split()[-1]}), logprobs=False) as url:
        for mode in ("free", "schema"):
            spec = load_spec(tmp_path / "potstill.yaml", [f"teacher.base_url={url}", f"json_decoding={mode}"])
            run = run_paths(spec, tmp_path / "run")
            if mode == "free":
                build_tiny_llama(run.student)
                (run.student / STUDENT_META).write_text(json.dumps({"objective": "sequence"}))
                write_manifest(run.student, "student", spec)
            report = evaluate(spec, run)
            got[mode] = report["models"]["student"]
            assert ("held to the schema" in run.report_md.read_text()) is (mode == "schema")
    assert got["free"]["json_validity"] == 0.0
    assert got["schema"]["json_validity"] == 1.0


def test_the_served_student_writes_objects_of_the_schema(tmp_path):
    """serve/causal.py's backend decodes as evaluation does: with json_keys every answer of the
    random student is an object the router can use (no invalid_output to escalate); without, none."""
    from potstill.serve.causal import CausalLMStudent

    path = build_tiny_llama(tmp_path / "lm")
    texts = ["weather in boston", "what is my balance"]
    for keys in (None, KEYS):
        host = CausalLMStudent(path, name="s", kind="generate", schema=SCHEMA, max_new_tokens=16,
                               max_length=64, json_keys=keys)
        outs = host.view("s").predict(texts)
        if keys is None:
            assert all(o.error is not None for o in outs)
        else:
            assert [o.error for o in outs] == [None, None]
            assert all(set(json.loads(o.label)) <= set(KEYS) for o in outs)


def test_an_hf_teachers_cache_key_names_json_decoding_only_when_on(tmp_path):
    """The hf causal teacher answers under the schema when asked, and says so in the request its
    cache is keyed on; answers cached before the option existed (free) keep their key."""
    from potstill.teachers.hf_causal import HFCausalTeacher

    teacher = build_tiny_llama(tmp_path / "teacher")
    (tmp_path / "t.jsonl").write_text('{"text": "weather in boston", "label": "{}"}\n')
    (tmp_path / "s.yaml").write_text(
        "name: t\nkind: generate\ndata: {train: t.jsonl}\n"
        "json_schema: {type: object, properties: {city: {type: string}}}\n"
        f"teacher: {{kind: hf, model: {teacher}}}\nstudent: {{kind: causal_lm, model: {teacher}, max_new_tokens: 12}}\n")
    free = HFCausalTeacher(load_spec(tmp_path / "s.yaml"), [])
    held = HFCausalTeacher(load_spec(tmp_path / "s.yaml", ["json_decoding=schema"]), [])
    assert "json_decoding" not in free.request("x")
    assert held.request("x")["json_decoding"] == "schema"
    (_, a), = held.answer(["weather in boston"])
    assert set(json.loads(a.label)) <= {"city"}


def test_scores_wider_than_the_tokenizer():
    """Many models pad their output layer beyond the tokenizer (Qwen2.5: 151,936 rows for 151,665
    tokens): the padding rows are never allowed, and the rest is masked as usual."""
    tok = build_tokenizer()
    proc = SchemaLogitsProcessor(JsonDecoding(tok, KEYS), prompt_len=2, max_new_tokens=10)
    scores = torch.zeros((1, len(tok) + 7))
    scores[0, -1] = 5.0  # a padding row the random model likes best
    scores[0, tok.convert_tokens_to_ids("{")] = 1.0
    out = proc(torch.zeros((1, 2), dtype=torch.long), scores)
    assert out.shape == scores.shape
    assert torch.isinf(out[0, len(tok):]).all()
    assert out[0].argmax() == tok.convert_tokens_to_ids("{")


def test_a_sentencepiece_tokens_leading_space_is_not_lost():
    """Decoded alone, SentencePiece's "▁city" reads "city" (Llama 2, Mistral, Gemma, TinyLlama):
    allowed after `{"` it would write the key " city", which the schema does not have."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sp = Tokenizer(models.BPE())
    sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    sp.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    sp.train_from_iterator(['{"city": "boston", "state": "ma"} weather in the city of boston'] * 20,
                           trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "<s>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=sp, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    vocab = tok.get_vocab()
    d = JsonDecoding(tok, KEYS)
    assert d.texts[vocab["▁city"]] == " city" and d.texts[vocab["city"]] == "city"
    in_key = d.allowed(d.auto.run(State(), '{"'), 40)
    assert in_key[vocab["city"]] and not in_key[vocab["▁city"]]
    assert d.allowed(d.auto.run(State(), '{"city": "'), 40)[vocab["▁city"]]  # a value may hold it
