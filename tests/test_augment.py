import random

from potstill.data.augment import augment, perturb
from potstill.data.inputs import Example


def test_perturb_keeps_words_and_is_seeded():
    text = "please tell me my current account balance now"
    a = perturb(text, random.Random(1))
    assert a != text and set(a.split()) <= set(text.split())
    assert a == perturb(text, random.Random(1))
    assert perturb("two words", random.Random(1)) == "two words"  # too short to change


def test_augment_makes_unlabelled_distinct_copies():
    exs = [Example(str(i), f"what is the weather like in city {i} today", "weather") for i in range(20)]
    out = augment(exs, copies=2, seed=3)
    assert 20 <= len(out) <= 40
    assert all(e.gold is None and "#aug" in e.id for e in out)
    texts = [e.text for e in out]
    assert len(set(texts)) == len(texts) and not set(texts) & {e.text for e in exs}
    assert [e.text for e in augment(exs, 2, 3)] == texts
    assert augment(exs, 0, 3) == []
