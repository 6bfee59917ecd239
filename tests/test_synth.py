"""`potstill synth`: the teacher writes new inputs from seeds; near-duplicates are dropped."""

from __future__ import annotations

import itertools
import json

import numpy as np
from conftest import make_rows, write_jsonl
from fake_openai import FakeOpenAI

from potstill.synth import STYLES, near_duplicates, parse_inputs, plan_asks, synth


def test_plan_asks_takes_labels_in_turn_deterministically():
    seeds = [(f"a{i}", "a") for i in range(10)] + [(f"b{i}", "b") for i in range(10)] + [("u", None)]
    asks = plan_asks(seeds, 6, 3, seed=7)
    assert [a.label for a in asks] == ["a", "b", "a", "b", "a", "b"]
    assert all(len(a.seeds) == 3 and all(s.startswith(a.label) for s in a.seeds) for a in asks)
    assert [a.style for a in asks[::2]] == list(STYLES[:3])
    assert plan_asks(seeds, 6, 3, seed=7) == asks                  # a rerun asks the same
    assert plan_asks(seeds, 2, 3, seed=7, start=4) == asks[4:]     # and later waves continue
    unlabelled = plan_asks([("x", None), ("y", None)], 2, 5, seed=1)
    assert [a.label for a in unlabelled] == [None, None] and len(unlabelled[0].seeds) == 2
    assert 'labelled' not in unlabelled[0].prompt("Do it.", 4)
    assert 'labelled "a"' in asks[0].prompt("Do it.", 4) and "4 new inputs" in asks[0].prompt("Do it.", 4)


def test_parse_inputs():
    assert parse_inputs('["one  two", "three", " "]') == ["one two", "three"]
    assert parse_inputs('Sure!\n```json\n["x", "y"]\n```') == ["x", "y"]
    assert parse_inputs('1. first one\n2) "second"\n- third\n\n') == ["first one", "second", "third"]


def test_near_duplicates_known_answer():
    old = np.array([[1.0, 0.0], [0.0, 1.0]])
    s = np.sqrt(0.5)
    new = np.array([[0.99, np.sqrt(1 - 0.99**2)],  # ~ old[0]
                    [s, s],                          # between both: kept
                    [0.72, 0.69],                    # ~ the kept new one above
                    [-1.0, 0.0]])                    # new
    new = new / np.linalg.norm(new, axis=1, keepdims=True)
    assert near_duplicates(["p", "q", "r", "s"], new, old, 0.95) == [0, None, 2 + 1, None]


def test_synth_end_to_end_drops_duplicates_and_resumes_from_cache(tmp_path):
    from potstill.config import load_spec, run_paths

    write_jsonl(tmp_path / "data/train.jsonl", make_rows(30, 1))
    write_jsonl(tmp_path / "data/validation.jsonl", make_rows(9, 2))
    (tmp_path / "potstill.yaml").write_text(
        "name: s\ninstruction: Classify banking and weather requests.\n"
        "data: {train: data/train.jsonl, validation: data/validation.jsonl}\n"
        "teacher: {kind: openai, model: writer, base_url: 'http://127.0.0.1:9/v1', concurrency: 4,"
        " max_retries: 0, price_in: 1.0, price_out: 2.0}\n")
    seed_text = make_rows(30, 1)[0]["text"]
    fresh = (f"novel request number {i} about {w}" for i, w in
             zip(itertools.count(), itertools.cycle(["pizza", "trains", "taxes", "music", "gardens"])))

    def write(prompt: str) -> str:
        # per call: a seed copied, a seed in other case, a repeat within the answer, 3 new ones
        new = [next(fresh) for _ in range(3)]
        return json.dumps([seed_text, seed_text.upper() + "!", new[0], *new])

    fake = FakeOpenAI(write, text_fn=lambda p: p, logprobs=False, usage=(100, 50))
    with fake as url:
        spec = load_spec(tmp_path / "potstill.yaml", [f"teacher.base_url={url}"])
        run = run_paths(spec)
        out = tmp_path / "synth.jsonl"
        summary = synth(spec, run, 12, out, per_call=6, max_similarity=0.999)
        calls = fake.count
        rows = [json.loads(l) for l in out.read_text().splitlines()]
        assert len(rows) == 12 and summary["written"] == 12
        assert len({r["text"] for r in rows}) == 12 and all(r["label"] is None for r in rows)
        assert all(r["text"].startswith("novel request") for r in rows)
        assert {r["prompt_label"] for r in rows} <= {"balance", "transfer", "weather"}
        assert summary["dropped"]["same_normalised_text"] >= 3 * calls  # seed, SEED!, repeat
        assert summary["spend_usd"] == round(calls * (100 * 1.0 + 50 * 2.0) / 1e6, 6)
        body = fake.requests[0].body
        assert body["model"] == "writer" and "Examples of inputs" in body["messages"][0]["content"]
        again = synth(spec, run, 12, out, per_call=6, max_similarity=0.999)
        assert fake.count == calls  # every answer came from the cache
        assert again["written"] == 12 and again["spend_usd"] == 0


def test_unlabelled_inputs_join_training_without_gold(tmp_path):
    from potstill.config import load_spec, run_paths
    from potstill.stages.prepare import prepare_inputs

    val = make_rows(9, 2)
    write_jsonl(tmp_path / "data/train.jsonl", make_rows(30, 1))
    write_jsonl(tmp_path / "data/validation.jsonl", val)
    write_jsonl(tmp_path / "data/synth.jsonl", [
        {"text": "order pizza for tonight", "label": None},
        {"text": "what about the stock market", "label": "balance"},  # not gold: dropped to None
        {"text": val[0]["text"]}])                                    # a held-out input: removed
    (tmp_path / "potstill.yaml").write_text(
        "name: u\ndata: {train: data/train.jsonl, validation: data/validation.jsonl,"
        " unlabelled: [data/synth.jsonl]}\n")
    spec = load_spec(tmp_path / "potstill.yaml")
    assert spec.data.unlabelled == [tmp_path / "data/synth.jsonl"]  # relative to the spec
    inputs = prepare_inputs(spec, run_paths(spec))
    extra = [ex for ex in inputs.train if ex.gold is None]
    assert [ex.text for ex in extra] == ["order pizza for tonight", "what about the stock market"]
    assert len(inputs.train) == 32
