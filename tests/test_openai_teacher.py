"""OpenAITeacher against the fake OpenAI-compatible endpoint (tests/fake_openai.py): parsing,
logprobs -> probs, retries, timeouts, concurrency, usage, the spending cap, the cache, resume,
and keeping the API key out of everything but the Authorization header. Offline and fast."""

from __future__ import annotations

import gc
import json
import math
import threading
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, Fault

from potstill.spec import TaskSpec
from potstill.store import Store
from potstill.teachers.base import BudgetExceeded, answer_cached, cache_key
from potstill.teachers.openai_compat import OpenAITeacher, label_probs, locate_label

LABELS = ["card_arrival", "card_declined", "balance", "refund"]
KEY_ENV = "POTSTILL_TEST_OPENAI_KEY"


def make_spec(base_url: str, **teacher) -> TaskSpec:
    t = {"kind": "openai", "model": "fake-model", "base_url": base_url, "api_key_env": KEY_ENV,
         "concurrency": 4, "max_retries": 3, "timeout_s": 5.0, "top_logprobs": 5}
    t.update(teacher)
    return TaskSpec(name="t", labels=LABELS, data={"train": "unused.jsonl"}, teacher=t)


def make_teacher(base_url: str, spent_usd: float = 0.0, **teacher) -> OpenAITeacher:
    # tiny backoff so retry tests are fast; Retry-After tests show the header wins over it
    return OpenAITeacher(make_spec(base_url, **teacher), LABELS, spent_usd=spent_usd,
                         backoff_base_s=0.01, backoff_max_s=0.05)


def answers(teacher: OpenAITeacher, texts: list[str]) -> list:
    out = [None] * len(texts)
    for i, a in teacher.answer(texts):
        assert out[i] is None, "an index was yielded twice"
        out[i] = a
    assert all(a is not None for a in out)
    return out


def teacher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "openai-teacher"]


def rule(text: str) -> str:
    """The fake teacher's labelling rule for generated texts."""
    return LABELS[int(text.rsplit(" ", 1)[1]) % len(LABELS)]


def texts_for(n: int, tag: str = "t") -> list[str]:
    return [f"{tag} {i}" for i in range(n)]


# -- parsing ---------------------------------------------------------------------------------------
def test_label_parsing_variants_and_unparseable_answers():
    replies = {
        "plain": "balance",
        "case": "  Card Arrival. ",
        "json": '{"label": "card_declined"}',
        "fenced": 'Here you go:\n```json\n{"label": "refund"}\n```',
        "prefixed": "Label: card_arrival",
        "sentence": "I think this is about a refund.",
        "none": "Sorry, I cannot help with that.",
        "two": "either balance or refund",
    }
    with FakeOpenAI(replies.get, labels=LABELS) as url:
        t = make_teacher(url, logprobs=False)
        got = dict(zip(replies, answers(t, list(replies))))
    expect = {"plain": "balance", "case": "card_arrival", "json": "card_declined",
              "fenced": "refund", "prefixed": "card_arrival", "sentence": "refund"}
    for k, label in expect.items():
        a = got[k]
        assert (a.label, a.error) == (label, None), k
        assert a.raw == replies[k]
        # no logprobs, one sample: one-hot of the parsed label
        assert a.probs == [1.0 if l == label else 0.0 for l in LABELS], k
    for k in ("none", "two"):
        a = got[k]
        assert a.label is None and a.probs is None and a.error is None  # an answer, cacheable
        assert "no known label" in a.extra["parse_error"] and a.raw == replies[k]


# -- logprobs -> distribution ----------------------------------------------------------------------
def lp(p: float) -> float:
    return math.log(p)


def test_probs_single_token_labels_hand_computed():
    tokens = [("balance", lp(0.7), [("balance", lp(0.7)), ("refund", lp(0.2)),
                                     ("hello", lp(0.06)), (" Refund", lp(0.01))])]
    probs = label_probs(tokens, LABELS, "balance")
    # balance 0.7 (exact), refund 0.2 + 0.01 (" Refund" strips to a prefix of it), hello dropped;
    # the 0.03 no listed token carries is split over the two labels nothing named
    raw = [0.015, 0.015, 0.7, 0.21]
    assert probs == pytest.approx([p / sum(raw) for p in raw])


def test_probs_multi_token_label_hand_computed():
    # "card_arrival" is generated as card | _ | arr | ival
    tokens = [
        ("card", lp(0.8), [("card", lp(0.8)), ("bal", lp(0.12)), ("Card", lp(0.04)), ("x", lp(0.01))]),
        ("_", lp(0.99), [("_", lp(0.99))]),
        ("arr", lp(0.9), [("arr", lp(0.9)), ("dec", lp(0.1))]),
        ("ival", lp(1.0), [("ival", lp(1.0))]),
    ]
    probs = label_probs(tokens, LABELS, "card_arrival")
    chosen = 0.8 * 0.99 * 0.9 * 1.0  # its own tokens along the path
    # "bal" -> balance; "Card" is a prefix of both card labels, the chosen one is excluded so
    # card_declined gets all of it; "x" names no label. Later-position alternatives ("dec")
    # are not used. The unlisted 0.03 at the first position goes to refund, which nothing named.
    raw = [chosen, 0.04, 0.12, 0.03]
    assert probs == pytest.approx([p / sum(raw) for p in raw])


def test_probs_json_answer_with_label_starting_inside_a_token():
    tokens = [
        ('{"', 0.0, []), ("label", 0.0, []), ('":', 0.0, []),
        (' "card', lp(0.6), [(' "card', lp(0.6)), (' "bal', lp(0.3)), (' "ref', lp(0.05)),
                             (' "', lp(0.03)), ("{", lp(0.02))]),
        ("_", lp(0.5), []), ("declined", lp(0.9), []), ('"}', 0.0, []),
    ]
    assert locate_label("".join(t for t, _, _ in tokens), "card_declined") == (11, 24)
    probs = label_probs(tokens, LABELS, "card_declined")
    # the lead ' "' is removed from alternatives before matching; ' "' alone names nothing
    chosen = 0.6 * 0.5 * 0.9
    raw = [0.0, chosen, 0.3, 0.05]
    assert probs == pytest.approx([p / sum(raw) for p in raw])
    # an alternative sharing the chosen label's first token splits evenly over the others
    tokens[3] = (' "card', lp(0.6), [(' "card', lp(0.6)), (' "Card', lp(0.2))])
    probs = label_probs(tokens, ["card_arrival", "card_declined", "card_lost"], "card_declined")
    assert probs == pytest.approx([p / 0.47 for p in (0.1, 0.27, 0.1)])


def test_probs_from_the_endpoint_json_answers():
    # the fake gives the first label token p=0.8 and spreads 0.2 over the other labels' first
    # tokens: "card" (card_declined) is the generated token itself, so only balance and
    # refund get 0.1 each; later label tokens have p=0.9 each (card | _ | arrival)
    with FakeOpenAI(lambda t: "card_arrival", labels=LABELS, json_answers=True,
                    confidence=0.8, tail_confidence=0.9) as url:
        (a,) = answers(make_teacher(url), ["x"])
    chosen = 0.8 * 0.9 * 0.9
    raw = [chosen, 0.0, 0.1, 0.1]
    assert a.label == "card_arrival" and a.raw == '{"label": "card_arrival"}'
    assert a.probs == pytest.approx([p / sum(raw) for p in raw])


def test_request_parameters_on_the_wire():
    fake = FakeOpenAI(lambda t: "balance", labels=LABELS)
    with fake as url:
        t = make_teacher(url, top_logprobs=7, temperature=0.3, max_tokens=12)
        answers(t, ["x"])
        answers(make_teacher(url, logprobs=False), ["y"])
    with_lp, without = fake.requests[0].body, fake.requests[1].body
    assert with_lp["logprobs"] is True and with_lp["top_logprobs"] == 7
    assert with_lp["model"] == "fake-model" and with_lp["temperature"] == 0.3
    assert with_lp["max_tokens"] == 12 and "n" not in with_lp
    assert with_lp["messages"] == t.request("x")["messages"]
    assert "Text: x" in with_lp["messages"][-1]["content"]
    assert "logprobs" not in without and "top_logprobs" not in without


def test_no_logprobs_from_endpoint_single_sample_is_one_hot():
    with FakeOpenAI(lambda t: "refund", labels=LABELS, logprobs=False) as url:
        (a,) = answers(make_teacher(url), ["x"])
    assert a.label == "refund" and a.probs == [0, 0, 0, 1.0] and a.votes is None


def test_broken_logprobs_block_falls_back_to_one_hot():
    def garbage(text, content, top_k):
        return [{"token": None, "logprob": "not a number"}]

    with FakeOpenAI(lambda t: "refund", labels=LABELS, logprobs_fn=garbage) as url:
        (a,) = answers(make_teacher(url), ["x"])
    assert a.error is None and a.label == "refund" and a.probs == [0, 0, 0, 1.0]


@pytest.mark.parametrize("honour_n", [True, False])
def test_samples_without_logprobs_vote(honour_n):
    fake = FakeOpenAI(lambda t: ["balance", "refund", "balance"], labels=LABELS,
                      logprobs=False, honour_n=honour_n, usage=(10, 2))
    with fake as url:
        (a,) = answers(make_teacher(url, samples=3, temperature=0.7), ["x"])
    assert a.label == "balance" and a.votes == {"balance": 2, "refund": 1}
    assert a.probs == pytest.approx([0, 0, 2 / 3, 1 / 3])
    # n is asked for; an endpoint ignoring it gets one call per missing sample
    assert fake.count == (1 if honour_n else 3)
    assert fake.requests[0].body["n"] == 3
    assert a.input_tokens == 10 * fake.count


def test_samples_with_logprobs_average_the_distributions():
    with FakeOpenAI(lambda t: ["balance", "refund"], labels=LABELS, confidence=0.6) as url:
        (a,) = answers(make_teacher(url, samples=2, temperature=0.7), ["x"])
    # per sample the fake gives its label 0.6 and splits 0.4 over the other labels' distinct
    # first tokens: "card" (shared by both card labels, so 0.1 each) and the other one (0.2)
    bal = [0.1, 0.1, 0.6, 0.2]
    ref = [0.1, 0.1, 0.2, 0.6]
    assert a.votes == {"balance": 1, "refund": 1}
    assert a.probs == pytest.approx([(x + y) / 2 for x, y in zip(bal, ref)])
    assert a.label == "balance"  # a tie in votes and probs goes to label order


# -- retries and failures --------------------------------------------------------------------------
def test_429_retry_after_is_honoured():
    fake = FakeOpenAI(rule, labels=LABELS, faults_by_text={"t 2": [Fault("429", retry_after=0.6)]})
    with fake as url:
        got = answers(make_teacher(url), texts_for(3))
    assert got[2].label == rule("t 2") and got[2].error is None
    assert got[2].extra["attempts"] == 2
    first, second = fake.for_text("t 2")
    assert first.status == 429 and second.status == 200
    gap = second.t_arrival - first.t_done
    # backoff alone would be <= 0.05 s here; the wait is the server's (plus <= 10% jitter)
    assert 0.6 <= gap < 0.6 * 1.1 + 0.5


def test_500_is_retried_then_succeeds():
    fake = FakeOpenAI(rule, labels=LABELS, faults_by_text={"t 1": ["500", "500"]})
    with fake as url:
        got = answers(make_teacher(url), texts_for(2))
    assert [r.status for r in fake.for_text("t 1")] == [500, 500, 200]
    assert got[1].label == rule("t 1") and got[1].extra["attempts"] == 3


def test_timeout_is_retried():
    fake = FakeOpenAI(rule, labels=LABELS, faults_by_text={"t 0": ["hang"]}, hang_s=20)
    with fake as url:
        t0 = time.monotonic()
        got = answers(make_teacher(url, timeout_s=0.4), texts_for(2))
        elapsed = time.monotonic() - t0
    assert got[0].label == rule("t 0") and got[0].extra["attempts"] == 2
    assert [r.fault for r in fake.for_text("t 0")] == ["hang", None]
    assert 0.4 <= elapsed < 3  # waited for the timeout, not for the hang


def test_dropped_connection_is_retried():
    fake = FakeOpenAI(rule, labels=LABELS, faults_by_text={"t 0": ["drop"]})
    with fake as url:
        (a,) = answers(make_teacher(url), ["t 0"])
    assert a.label == rule("t 0") and len(fake.for_text("t 0")) == 2


@pytest.mark.parametrize("kind", ["malformed", "no_choices"])
def test_malformed_body_gives_an_error_answer_without_stopping_the_batch(kind):
    fake = FakeOpenAI(rule, labels=LABELS, faults_by_text={"t 3": [kind] * 10})
    with fake as url:
        got = answers(make_teacher(url, max_retries=2), texts_for(6))
    bad = got[3]
    assert bad.label is None and bad.probs is None
    assert "malformed response" in bad.error and "gave up after 3 attempts" in bad.error
    assert len(fake.for_text("t 3")) == 3
    assert all(a.label == rule(f"t {i}") for i, a in enumerate(got) if i != 3)


def test_exhausted_429_and_unretryable_400_are_error_answers():
    fake = FakeOpenAI(rule, labels=LABELS, faults_by_text={
        "t 0": [Fault("429", retry_after=None)] * 5, "t 1": ["400"] * 5})
    with fake as url:
        got = answers(make_teacher(url, max_retries=2), texts_for(3))
    assert got[0].error.startswith("HTTP 429") and len(fake.for_text("t 0")) == 3
    assert got[1].error.startswith("HTTP 400") and len(fake.for_text("t 1")) == 1  # not retried
    assert got[2].label == rule("t 2")


# -- concurrency, usage, cost ----------------------------------------------------------------------
def test_concurrency_is_bounded_and_reached():
    fake = FakeOpenAI(rule, labels=LABELS, delay_ms=40)
    with fake as url:
        t0 = time.monotonic()
        got = answers(make_teacher(url, concurrency=5), texts_for(40))
        elapsed = time.monotonic() - t0
    assert [a.label for a in got] == [rule(f"t {i}") for i in range(40)]
    assert fake.max_in_flight == 5
    assert elapsed < 40 * 0.04 * 0.75  # really concurrent: one at a time takes >= 1.6 s


def test_usage_cost_and_latency_are_recorded(tmp_path: Path):
    fake = FakeOpenAI(rule, labels=LABELS, delay_ms=20, usage=(1000, 20))
    with fake as url, Store(tmp_path / "s.sqlite") as store:
        t = make_teacher(url, price_in=2.0, price_out=8.0)
        got = answer_cached(t, texts_for(5), store, "h")
        spend = store.spend(t.identity)
    per_call = 1000 * 2.0 / 1e6 + 20 * 8.0 / 1e6
    for a in got:
        assert (a.input_tokens, a.output_tokens) == (1000, 20)
        assert a.cost_usd == pytest.approx(per_call)
        assert a.latency_ms >= 20
    assert spend["calls"] == 5 and spend["input_tokens"] == 5000 and spend["output_tokens"] == 100
    assert spend["cost_usd"] == pytest.approx(5 * per_call)
    assert t.spent_usd == pytest.approx(5 * per_call)


# -- spending cap ----------------------------------------------------------------------------------
def test_spending_cap_stops_and_keeps_finished_answers(tmp_path: Path):
    fake = FakeOpenAI(rule, labels=LABELS, usage=(1000, 0))  # each call costs $0.001
    texts = texts_for(20)
    with fake as url, Store(tmp_path / "s.sqlite") as store:
        t = make_teacher(url, price_in=1.0, max_spend_usd=0.0045, concurrency=1)
        with pytest.raises(BudgetExceeded) as e:
            answer_cached(t, texts, store, "h")
        msg = str(e.value)
        assert "0.0050" in msg and "0.0045" in msg and "15 of 20" in msg
        # calls 1..5 were made (the 5th crossed the cap), all of them kept
        assert fake.count == 5
        assert store.spend()["calls"] == 5
        assert len(store.get_calls(cache_key(t, x, "h") for x in texts)) == 5

        # a new run that starts at the recorded spend makes no call at all
        again = make_teacher(url, spent_usd=store.spend()["cost_usd"], price_in=1.0,
                             max_spend_usd=0.0045, concurrency=1)
        with pytest.raises(BudgetExceeded):
            answer_cached(again, texts, store, "h")
        assert fake.count == 5


def test_spending_cap_lets_calls_in_flight_finish(tmp_path: Path):
    fake = FakeOpenAI(rule, labels=LABELS, usage=(1000, 0), delay_ms=30)
    texts = texts_for(40)
    with fake as url, Store(tmp_path / "s.sqlite") as store:
        t = make_teacher(url, price_in=1.0, max_spend_usd=0.01, concurrency=4)
        with pytest.raises(BudgetExceeded):
            answer_cached(t, texts, store, "h")
        made = fake.count
        # 10 calls reach the cap; at most 3 more were already in flight, and all are kept
        assert 10 <= made <= 13
        assert store.spend()["calls"] == made
        assert t.spent_usd == pytest.approx(made * 0.001)


# -- cache and resume ------------------------------------------------------------------------------
def test_rerun_is_served_from_cache(tmp_path: Path):
    fake = FakeOpenAI(rule, labels=LABELS)
    texts = texts_for(12) + ["t 3"]  # a duplicate is asked once
    with fake as url, Store(tmp_path / "s.sqlite") as store:
        first = answer_cached(make_teacher(url), texts, store, "h")
        assert fake.count == 12
        second = answer_cached(make_teacher(url), texts, store, "h")
        assert fake.count == 12  # zero new requests
    assert [a.to_json() for a in second] == [a.to_json() for a in first]
    assert first[-1].label == first[3].label == rule("t 3")


class Crash(Exception):
    pass


def test_resume_after_a_crash_asks_only_for_the_missing(tmp_path: Path):
    fake = FakeOpenAI(rule, labels=LABELS, delay_ms=5)
    texts = texts_for(30)
    seen = []

    def crash_after_7(n: int) -> None:
        seen.append(n)
        if len(seen) == 7:
            raise Crash

    with fake as url, Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(Crash):
            answer_cached(make_teacher(url, concurrency=3), texts, store, "h",
                          on_progress=crash_after_7)
        gc.collect()  # drop the traceback's frames; the teacher's generator then closes
        assert teacher_threads() == []
        time.sleep(0.1)
        crashed_calls = fake.count
        assert crashed_calls <= 7 + 2 * 3 + 3  # the loop runs a bounded window ahead
        t = make_teacher(url, concurrency=3)
        keys = {x: cache_key(t, x, "h") for x in texts}
        hits = store.get_calls(keys.values())
        stored = {x for x, k in keys.items() if k in hits}
        assert len(stored) == 7
        fake.reset()
        got = answer_cached(t, texts, store, "h")
    asked = {r.text for r in fake.requests}
    assert asked == set(texts) - stored and fake.count == 23
    assert [a.label for a in got] == [rule(x) for x in texts]


def test_closing_the_generator_early_stops_calls_and_thread():
    fake = FakeOpenAI(rule, labels=LABELS, delay_ms=30)
    with fake as url:
        gen = make_teacher(url, concurrency=2).answer(texts_for(50))
        got = [next(gen) for _ in range(3)]
        assert len(teacher_threads()) == 1
        gen.close()
        assert teacher_threads() == []
        time.sleep(0.1)  # a request already on the wire when the generator closed may still land
        made = fake.count
        time.sleep(0.2)
        assert fake.count == made <= 3 + 2 * 2 + 2
    assert len(got) == 3


def test_a_consumer_that_stops_reading_stops_the_spending():
    fake = FakeOpenAI(rule, labels=LABELS, delay_ms=5)
    with fake as url:
        gen = make_teacher(url, concurrency=2).answer(texts_for(200))
        next(gen)
        time.sleep(0.4)  # time for ~150 calls if nothing held the loop back
        assert fake.count <= 1 + 2 * 2 + 2
        gen.close()
        assert teacher_threads() == []


# -- identity, request, key ------------------------------------------------------------------------
def test_identity_and_request():
    t = OpenAITeacher(make_spec("http://127.0.0.1:9/v1/"), LABELS)
    assert t.identity == "openai:fake-model@http://127.0.0.1:9/v1"
    r = t.request("hello")
    assert r == t.request("hello") and r != t.request("bye")
    assert r["model"] == "fake-model" and r["logprobs"] is True and r["top_logprobs"] == 5
    assert r["n"] == 1 and r["max_tokens"] == 32 and r["temperature"] == 0.0
    assert r["messages"] == [{"role": "user",
                              "content": t.spec.render_prompt("hello", LABELS)}]
    json.dumps(r)  # JSON-able: it is part of the cache key


def test_api_key_goes_only_to_the_authorization_header(tmp_path: Path, monkeypatch):
    secret = "sk-test-SECRET-4242"
    monkeypatch.setenv(KEY_ENV, secret)
    fake = FakeOpenAI(rule, labels=LABELS)
    with fake as url, Store(tmp_path / "s.sqlite") as store:
        t = make_teacher(url)
        got = answer_cached(t, texts_for(3), store, "h")
    assert {r.authorization for r in fake.requests} == {f"Bearer {secret}"}
    assert secret not in t.identity and secret not in json.dumps(t.request("t 0"))
    assert secret not in repr(t) and secret not in json.dumps(vars(t), default=str)
    assert all(secret not in json.dumps(a.to_json()) for a in got)
    for f in tmp_path.iterdir():  # the SQLite file and its WAL
        assert secret.encode() not in f.read_bytes()


def test_missing_key_uses_a_placeholder(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    fake = FakeOpenAI(rule, labels=LABELS)
    with fake as url:
        (a,) = answers(make_teacher(url), ["t 1"])
    assert a.label == rule("t 1")
    assert fake.requests[0].authorization == "Bearer not-needed"


def test_calls_share_one_client_and_its_connections_until_closed():
    """One input at a time (a server's escalations): every call reuses the teacher's pooled
    client, so the endpoint sees one connection, not one per call; close() ends the thread."""
    fake = FakeOpenAI(rule, labels=LABELS)
    with fake as url:
        t = make_teacher(url, concurrency=1)
        for x in texts_for(5):
            assert answers(t, [x])[0].label == rule(x)
        assert len(teacher_threads()) == 1
        assert {r.conn for r in fake.requests} == {fake.requests[0].conn} and fake.count == 5
        t.close()
        assert teacher_threads() == []
