from potstill.spec import FilterSpec
from potstill.stages.filter import apply_filters
from potstill.tasks.classify import check_record


def rec(text="book a table", label="book", gold=None, conf=0.9, votes=None, error=None):
    return {"text": text, "label": label, "gold": gold, "confidence": conf, "votes": votes, "error": error}


def reason(r, **policy):
    return check_record(r, FilterSpec(**policy), set())


def test_each_filter_names_its_reason():
    assert reason(rec(error="HTTP 500")) == "teacher_error"
    assert reason(rec(label=None)) == "no_label"
    assert reason(rec(text="  a "), min_chars=3) == "too_short"
    assert reason(rec(text="x" * 50), max_chars=10) == "too_long"
    assert reason(rec(votes={"book": 2, "cancel": 3}), min_votes=3) == "low_votes"
    assert reason(rec(conf=0.4), min_confidence=0.5) == "low_confidence"
    assert reason(rec(gold="cancel")) == "gold_disagreement"


def test_keeps_what_passes_and_respects_switches():
    assert reason(rec()) is None
    assert reason(rec(conf=0.5), min_confidence=0.5) is None
    assert reason(rec(gold="cancel"), drop_gold_disagreement=False) is None
    assert reason(rec(gold="book")) is None
    assert reason(rec(votes={"book": 3}), min_votes=3) is None
    assert reason(rec(conf=None), min_confidence=0.9) is None  # no distribution: nothing to judge


def test_duplicates_are_dropped_after_the_first_kept_copy():
    records = [rec("Book a table!"), rec("book a   table"), rec("other"), rec("BOOK A TABLE", label=None)]
    kept, dropped = apply_filters(records, FilterSpec(), check_record)
    assert kept == [0, 2]
    assert dropped == [(1, "duplicate"), (3, "no_label")]
    kept, _ = apply_filters(records, FilterSpec(dedup=False), check_record)
    assert kept == [0, 1, 2]


def test_a_dropped_record_does_not_block_a_later_copy():
    records = [rec("same", conf=0.1), rec("same", conf=0.9)]
    kept, dropped = apply_filters(records, FilterSpec(min_confidence=0.5), check_record)
    assert kept == [1] and dropped == [(0, "low_confidence")]
