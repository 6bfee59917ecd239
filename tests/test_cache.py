import sqlite3

import pytest

from potstill.store import Store
from potstill.teachers.base import Answer, answer_cached, cache_key


class CountingTeacher:
    """A teacher in pure Python: label = first word; can crash after `crash_after` answers."""

    labels = ["a", "b"]

    def __init__(self, model="m1", crash_after=None, fail=()):
        self.identity = f"fake:{model}"
        self.model = model
        self.asked: list[str] = []
        self.crash_after = crash_after
        self.fail = set(fail)

    def request(self, text):
        return {"model": self.model, "prompt": f"classify: {text}"}

    def answer(self, texts):
        for i, t in enumerate(texts):
            if self.crash_after is not None and len(self.asked) >= self.crash_after:
                raise KeyboardInterrupt("simulated crash")
            self.asked.append(t)
            if t in self.fail:
                yield i, Answer(label=None, error="HTTP 500")
            else:
                lab = t.split()[0]
                yield i, Answer(label=lab, probs=[0.9, 0.1] if lab == "a" else [0.1, 0.9],
                                input_tokens=3, output_tokens=1, cost_usd=0.001)


def texts(n):
    return [f"{'a' if i % 2 else 'b'} text {i}" for i in range(n)]


def test_second_run_is_served_from_cache(tmp_path):
    with Store(tmp_path / "p.db") as store:
        t = CountingTeacher()
        first = answer_cached(t, texts(20), store, "spec1")
        assert len(t.asked) == 20
        t2 = CountingTeacher()
        second = answer_cached(t2, texts(20), store, "spec1")
        assert t2.asked == []
        assert [a.label for a in second] == [a.label for a in first]
        assert second[3].probs == [0.9, 0.1]
        assert store.spend()["calls"] == 20
        assert abs(store.spend()["cost_usd"] - 0.02) < 1e-9


def test_key_depends_on_teacher_model_and_spec():
    t1, t2 = CountingTeacher("m1"), CountingTeacher("m2")
    assert cache_key(t1, "x", "s") != cache_key(t2, "x", "s")
    assert cache_key(t1, "x", "s") != cache_key(t1, "x", "s2")
    assert cache_key(t1, "x", "s") == cache_key(CountingTeacher("m1"), "x", "s")


def test_resume_after_crash_asks_only_for_the_rest(tmp_path):
    db = tmp_path / "p.db"
    with Store(db) as store:
        with pytest.raises(KeyboardInterrupt):
            answer_cached(CountingTeacher(crash_after=7), texts(20), store, "s")
    # a new process: the 7 finished answers survived in the file
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 7
    with Store(db) as store:
        t = CountingTeacher()
        out = answer_cached(t, texts(20), store, "s")
        assert t.asked == texts(20)[7:]
        assert all(a.label for a in out)


def test_errors_are_not_cached_and_duplicates_asked_once(tmp_path):
    with Store(tmp_path / "p.db") as store:
        t = CountingTeacher(fail={"b text 0"})
        out = answer_cached(t, ["b text 0", "a x", "a x"], store, "s")
        assert out[0].error == "HTTP 500" and out[1].label == out[2].label == "a"
        assert t.asked == ["b text 0", "a x"]
        t2 = CountingTeacher()
        answer_cached(t2, ["b text 0", "a x"], store, "s")
        assert t2.asked == ["b text 0"]  # the failed one is retried, the good one is cached


def test_store_is_wal_and_migrations_are_idempotent(tmp_path):
    Store(tmp_path / "p.db").close()
    with Store(tmp_path / "p.db") as s:
        mode = s._db.execute("PRAGMA journal_mode").fetchone()[0]
        version = s._db.execute("PRAGMA user_version").fetchone()[0]
    assert mode == "wal" and version >= 1
