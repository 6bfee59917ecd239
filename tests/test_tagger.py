"""The extract tagger's pure parts: aligning values to character spans, BIO tags from offsets and
back, the confidence rule; and one training step through the classifier's loop with the tagger's
hooks (soft tags reach the loss)."""

from __future__ import annotations

import pytest
import torch

from potstill.students.tagger import (
    TagRow,
    build_tagger,
    decode_tags,
    encode_tags,
    predict_tags,
    tag_names,
    tag_rows,
    tagger_loss,
)
from potstill.tasks.align import align_fields, align_value


# -- alignment -------------------------------------------------------------------------------------
def test_repeated_value_takes_the_first_whole_word_occurrence():
    text = "Mylo, play my song and then my other song"
    # "my" occurs inside "Mylo" first; the first WHOLE-WORD occurrence wins
    assert align_value(text, "my") == (11, 13)
    assert align_value("play it in paris, then paris again", "paris") == (11, 16)


def test_inside_a_word_only_when_no_whole_word_occurrence():
    assert align_value("Mylo plays", "my") == (0, 2)


def test_case_and_whitespace_insensitive_and_exact_source_span():
    text = "Book   THE Middle\tEast for noon"
    s, e = align_value(text, "the middle east")
    assert text[s:e] == "THE Middle\tEast"


def test_unicode_case_folding_and_composition():
    text = "Wohnt in der GROSSE Straße 5"
    s, e = align_value(text, "große strasse")  # ß folds to ss both ways
    assert text[s:e] == "GROSSE Straße"
    decomposed = "Cafe\u0301 au lait"  # e + combining acute
    s, e = align_value(decomposed, "Café")  # precomposed é
    assert decomposed[s:e] == "Cafe\u0301"
    # accents still count: a value without them is not the accented word
    assert align_value("Zürich", "Zurich") is None
    # characters before the match that fold to several characters keep later offsets right
    text = "ﬁne Straße, then Köln"
    s, e = align_value(text, "köln")
    assert text[s:e] == "Köln"


def test_a_repeated_value_skips_occurrences_taken_by_earlier_fields():
    text = "Add My Belgian Rose to my evening list"
    spans, drops = align_fields(text, {"entity_name": "My Belgian Rose", "playlist_owner": "my"})
    assert not drops and spans == [("entity_name", 4, 19), ("playlist_owner", 23, 25)]
    spans, _ = align_fields("rate it 5 out of 5", {"rating_value": "5", "best_rating": "5"})
    assert spans == [("rating_value", 8, 9), ("best_rating", 17, 18)]


def test_values_absent_empty_or_overlapping_are_dropped_with_reasons():
    spans, drops = align_fields("table for two in Paris", {
        "city": "paris", "party": "two", "venue": "Berlin", "blank": "  ", "n": 2,
        "size": "for two",  # overlaps "two", aligned before it? no: "party" came first
    })
    assert spans == [("party", 10, 13), ("city", 17, 22)]
    assert sorted(drops) == [("blank", "empty"), ("n", "not_a_string"), ("size", "overlap"),
                             ("venue", "not_in_text")]


# -- BIO -------------------------------------------------------------------------------------------
FIELDS = ["artist", "playlist", "owner"]


def test_tag_names_order():
    assert tag_names(["a", "b"]) == ["O", "B-a", "I-a", "B-b", "I-b"]


def test_encode_tags_from_offsets_known_answer():
    tags = tag_names(FIELDS)
    # "[CLS] add cafe del mar to my [SEP]" with hand-written offsets
    text = "add cafe del mar to my"
    offsets = [(0, 0), (0, 3), (4, 8), (9, 12), (13, 16), (17, 19), (20, 22), (0, 0)]
    spans = [("artist", 4, 16), ("owner", 20, 22)]
    ids = encode_tags(offsets, spans, tags)
    assert [tags[i] if i >= 0 else None for i in ids] == [
        None, "O", "B-artist", "I-artist", "I-artist", "O", "B-owner", None]


def test_adjacent_spans_of_one_field_both_start_with_b():
    tags = tag_names(["x"])
    ids = encode_tags([(0, 1), (2, 3)], [("x", 0, 1), ("x", 2, 3)], tags)
    assert [tags[i] for i in ids] == ["B-x", "B-x"]


def test_bio_round_trip_through_a_fast_tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    tags = tag_names(FIELDS)
    cases = [
        ("send money to mom right now", {"owner": "mom", "artist": "money"}),
        ("Transfer   fifty dollars to SAVINGS", {"artist": "fifty dollars", "playlist": "savings"}),
        ("what is the weather like", {}),
        ("wire money to my landlord asap", {"playlist": "my landlord"}),
    ]
    for text, fields in cases:
        spans, drops = align_fields(text, fields)
        assert not drops
        enc = tok(text, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        ids = encode_tags(offsets, spans, tags)
        values, conf = decode_tags(text, offsets, [max(i, 0) for i in ids], tags)
        # values come back as they are written in the text
        assert values == {f: text[s:e] for f, s, e in spans}
        assert set(conf) == set(values)


def test_decode_stray_i_opens_a_span_and_best_span_wins():
    tags = tag_names(["x", "y"])
    t = {n: i for i, n in enumerate(tags)}
    text = "aa bb cc dd"
    offsets = [(0, 0), (0, 2), (3, 5), (6, 8), (9, 11), (0, 0)]
    ids = [0, t["I-x"], t["I-x"], t["O"], t["B-x"], 0]
    probs = [1.0, 0.6, 0.6, 0.9, 0.95, 1.0]
    values, conf = decode_tags(text, offsets, ids, tags, probs)
    # "aa bb" (stray I- opens, I- continues) has mean 0.6; "dd" has 0.95: the surer span wins
    assert values == {"x": "dd"} and conf == {"x": pytest.approx(0.95)}
    values, _ = decode_tags(text, offsets, ids, tags)  # without probs: the first span
    assert values == {"x": "aa bb"}
    # B-y after I-x closes x
    values, _ = decode_tags(text, offsets, [0, t["B-x"], t["B-y"], t["I-y"], 0, 0], tags)
    assert values == {"x": "aa", "y": "bb cc"}


# -- model + loss hooks ----------------------------------------------------------------------------
def test_tagger_loss_uses_soft_tags_and_ignores_special_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, requires_grad=True)
    hard = torch.tensor([[-100, 1, 0, -100], [-100, 2, -100, -100]])
    soft = torch.log_softmax(torch.randn(2, 4, 3), -1)
    mask = torch.tensor([True, False])
    hard_only = tagger_loss(2.0, 0.0, 1.0)(logits, hard, None, None)
    expected = torch.nn.functional.cross_entropy(logits[hard != -100], hard[hard != -100])
    assert hard_only.item() == pytest.approx(expected.item(), rel=1e-5)
    with_kd = tagger_loss(2.0, 1.0, 1.0)(logits, hard, soft, mask)
    assert with_kd.item() > hard_only.item()  # the KL term is there (and positive)
    # changing the teacher on a special token, or on the row without soft tags, changes nothing
    soft2 = soft.clone()
    soft2[0, 0] = torch.log_softmax(torch.randn(3), -1)
    soft2[1, 1] = torch.log_softmax(torch.randn(3), -1)
    assert tagger_loss(2.0, 1.0, 1.0)(logits, hard, soft2, mask).item() == pytest.approx(with_kd.item())


def test_build_cut_predict_and_rows(tiny_bert):
    model, tok = build_tagger(str(tiny_bert), FIELDS, layers=[0, 3])
    assert model.config.num_hidden_layers == 2
    assert model.config.num_labels == len(tag_names(FIELDS))
    rows = tag_rows(tok, ["send money to mom"], [[("owner", 14, 17)]], tag_names(FIELDS), 32)
    assert isinstance(rows[0], TagRow) and rows[0].hard[0] == -100 and rows[0].hard[-1] == -100
    assert tag_names(FIELDS)[rows[0].hard[-2]] == "B-owner"
    preds = predict_tags(model, tok, ["send money to mom", "hey"], 2, 32)
    assert len(preds) == 2 and all(0 < p.token_confidence <= 1 for p in preds)
    for p in preds:  # whatever an untrained model tags, values are pieces of the text
        assert all(v in ("send money to mom", "hey")[preds.index(p)] for v in p.fields.values())


def test_prediction_turns_eval_mode_on_once_not_on_every_call(tiny_bert, monkeypatch):
    """model.eval() walks every module (most of a millisecond on a 2-layer tagger): a model in
    training mode is switched once, one already in eval mode (as loaded, as served) is left alone."""
    from potstill.students.classifier import build_classifier, predict_logits

    tagger, tok = build_tagger(str(tiny_bert), FIELDS, layers=[0, 3])
    classifier, ctok = build_classifier(str(tiny_bert), ["a", "b"], layers=[0, 3])
    for model in (tagger, classifier):
        model.train()
    predict_tags(tagger, tok, ["send money to mom"], 1, 32)
    predict_logits(classifier, ctok, ["send money to mom"], 1, 32)
    for model in (tagger, classifier):  # dropout off
        assert not model.training and not any(m.training for m in model.modules())
    calls = []
    monkeypatch.setattr(torch.nn.Module, "train", lambda self, mode=True: calls.append(mode) or self)
    predict_tags(tagger, tok, ["send money to mom"], 1, 32)
    predict_logits(classifier, ctok, ["send money to mom"], 1, 32)
    assert calls == []
