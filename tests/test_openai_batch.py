"""Batch labelling (`teacher.batch: true`) against the stand-in's files and batches endpoints
(tests/fake_openai.py): labels come back through the cache, a labeller killed with SIGKILL while
its batch runs is resumed by polling the saved batch, and no call is paid twice (the stand-in's
log of executed requests), at the batch price."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from fake_openai import FakeOpenAI

from potstill.cost import BATCH_DISCOUNT, batch_price, labelling_cost
from potstill.paths import RunPaths
from potstill.spec import TaskSpec
from potstill.store import Store
from potstill.teachers import answer_cached, make_teacher
from potstill.teachers.openai_batch import OpenAIBatchTeacher
from potstill.teachers.openai_compat import OpenAITeacher

LABELS = ["balance", "transfer", "weather"]


def rule(text: str) -> str:
    return LABELS[sum(map(ord, text)) % 3]


def spec_dict(url: str, **teacher) -> dict:
    t = {"kind": "openai", "model": "fake-teacher", "base_url": url, "batch": True,
         "batch_poll_s": 0.02, "batch_poll_max_s": 0.1, "max_retries": 1, "price_in": 2.0,
         "price_out": 8.0, **teacher}
    return {"name": "t", "labels": LABELS, "data": {"train": "unused.jsonl"}, "teacher": t}


def texts_for(n: int) -> list[str]:
    return [f"input number {i} about money" for i in range(n)]


LABELLER = """
import json, sys
from pathlib import Path
from potstill.paths import RunPaths
from potstill.spec import TaskSpec
from potstill.store import Store
from potstill.teachers import answer_cached, make_teacher
spec = TaskSpec(**json.loads(sys.argv[1]))
run = RunPaths(Path(sys.argv[2]))
texts = json.loads(sys.argv[3])
with Store(run.db, url="") as store:
    answer_cached(make_teacher(spec, run, spec.labels), texts, store, spec.spec_hash())
"""


def test_labels_come_back_at_the_batch_price_and_share_the_cache(tmp_path):
    fake = FakeOpenAI(rule, labels=LABELS, usage=(100, 4))
    texts = texts_for(12) + ["input number 0 about money"]  # a duplicate is asked once
    with fake as url:
        spec = TaskSpec(**spec_dict(url))
        run = RunPaths(tmp_path)
        teacher = make_teacher(spec, run, LABELS)
        assert isinstance(teacher, OpenAIBatchTeacher)
        with Store(run.db, url="") as store:
            got = answer_cached(teacher, texts, store, spec.spec_hash())
            assert [a.label for a in got] == [rule(t) for t in texts]
            assert all(a.probs is not None and abs(sum(a.probs) - 1) < 1e-6 for a in got)
            # one upload, one batch, polled, two downloads at most; every line paid once
            methods = Counter(m + " " + p.split("/")[2] for m, p in fake.api_log)
            assert methods["POST files"] == 1 and methods["POST batches"] == 1
            assert len(fake.requests) == 12 and all(r.path.startswith("/v1/batches/")
                                                    for r in fake.requests)
            per_call = (100 * batch_price(2.0) + 4 * batch_price(8.0)) / 1e6
            assert got[0].cost_usd == pytest.approx(per_call)
            assert store.spend()["cost_usd"] == pytest.approx(12 * per_call)
            assert store.spend()["cost_usd"] == pytest.approx(
                labelling_cost(12, 100, 4, 2.0, 8.0, batch=True))
            # same identity and request as the real-time teacher: its cache answers, no call
            realtime = OpenAITeacher(spec, LABELS)
            assert realtime.identity == teacher.identity
            before = len(fake.requests)
            again = answer_cached(realtime, texts, store, spec.spec_hash())
            assert [a.label for a in again] == [a.label for a in got] and len(fake.requests) == before
        # serving never waits for a batch
        assert type(make_teacher(spec, run, LABELS, realtime=True)) is OpenAITeacher


def test_batch_discount_is_a_parameter():
    assert BATCH_DISCOUNT == 0.5
    assert batch_price(10.0) == 5.0 and batch_price(10.0, 0.25) == 7.5
    assert labelling_cost(1000, 500, 10, 2.5, 10.0) == pytest.approx(1.35)
    assert labelling_cost(1000, 500, 10, 2.5, 10.0, batch=True) == pytest.approx(0.675)
    with pytest.raises(ValueError):
        batch_price(1.0, 1.0)
    with pytest.raises(ValueError, match="teacher.kind 'openai'"):
        TaskSpec(name="t", labels=LABELS, data={"train": "x.jsonl"},
                 teacher={"kind": "fit", "batch": True})


def test_kill_while_the_batch_runs_then_resume_pays_nothing_twice(tmp_path):
    fake = FakeOpenAI(rule, labels=LABELS, usage=(50, 2))
    texts = texts_for(40)
    fake.batch_hold = True  # the batch stays in progress until released
    with fake as url:
        sd = spec_dict(url)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        p = subprocess.Popen([sys.executable, "-c", LABELLER, json.dumps(sd), str(tmp_path),
                              json.dumps(texts)], env=env, stderr=subprocess.PIPE)
        try:
            t0 = time.monotonic()
            while not any(b["_polls"] >= 2 for b in fake.batches.values()):
                assert p.poll() is None, p.stderr.read().decode()[-2000:]
                assert time.monotonic() - t0 < 60, "the labeller never polled its batch"
                time.sleep(0.05)
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        finally:
            if p.poll() is None:
                p.kill()
        assert len(fake.batches) == 1 and len(fake.requests) == 0  # created, nothing run yet
        (state_file,) = (tmp_path / "teacher_batches").glob("*.json")
        state = json.loads(state_file.read_text())
        (batch_id,) = fake.batches
        assert state["batch_id"] == batch_id and len(state["custom_ids"]) == 40

        fake.batch_hold = False
        spec = TaskSpec(**sd)
        run = RunPaths(tmp_path)
        with Store(run.db, url="") as store:
            got = answer_cached(make_teacher(spec, run, LABELS), texts, store, spec.spec_hash())
            assert [a.label for a in got] == [rule(t) for t in texts]
            assert {a.extra["batch_id"] for a in got} == {batch_id}
            assert store.spend()["calls"] == 40
            # a third run: everything cached, not even a poll
            n_api = len(fake.api_log)
            answer_cached(make_teacher(spec, run, LABELS), texts, store, spec.spec_hash())
            assert len(fake.api_log) == n_api
    posts = [p for m, p in fake.api_log if m == "POST"]
    assert posts.count("/v1/batches") == 1 and posts.count("/v1/files") == 1
    paid = Counter(r.text for r in fake.requests)
    assert sorted(paid) == sorted(texts) and max(paid.values()) == 1  # 0 calls paid twice


def test_kill_between_upload_and_saving_the_batch_id_finds_the_batch(tmp_path):
    """The state file is written before the create; a run killed before it saved the batch id
    looks the batch up by its input file instead of creating (and paying for) another."""
    fake = FakeOpenAI(rule, labels=LABELS)
    texts = texts_for(5)
    with fake as url:
        spec = TaskSpec(**spec_dict(url))
        run = RunPaths(tmp_path)
        teacher = make_teacher(spec, run, LABELS)
        client = teacher._sync_client()
        state = teacher._submit(client, [(teacher.custom_id(t), t) for t in texts])
        client.close()
        state["batch_id"], state["status"] = None, "uploaded"  # as if killed right after create
        teacher._save(state)
        with Store(run.db, url="") as store:
            got = answer_cached(make_teacher(spec, run, LABELS), texts, store, spec.spec_hash())
        assert [a.label for a in got] == [rule(t) for t in texts]
        assert [p for m, p in fake.api_log if m == "POST"].count("/v1/batches") == 1
        assert len(fake.requests) == 5


def test_failed_lines_are_not_cached_and_are_asked_again(tmp_path):
    bad = "input number 3 about money"
    fake = FakeOpenAI(rule, labels=LABELS, faults_by_text={bad: ["500"]})
    texts = texts_for(6)
    with fake as url:
        spec = TaskSpec(**spec_dict(url))
        run = RunPaths(tmp_path)
        with Store(run.db, url="") as store:
            got = answer_cached(make_teacher(spec, run, LABELS), texts, store, spec.spec_hash())
            assert got[3].error and "HTTP 500" in got[3].error and got[3].label is None
            assert all(a.error is None for i, a in enumerate(got) if i != 3)
            assert store.spend()["calls"] == 5
            got = answer_cached(make_teacher(spec, run, LABELS), texts, store, spec.spec_hash())
            assert got[3].label == rule(bad) and store.spend()["calls"] == 6
    assert [p for m, p in fake.api_log if m == "POST"].count("/v1/batches") == 2
    paid = Counter(r.text for r in fake.requests)
    assert paid[bad] == 2 and all(v == 1 for t, v in paid.items() if t != bad)
